package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/nodestatus"
	"github.com/edgesync/edgesync/controllers/router"
	"github.com/edgesync/edgesync/internal/kubemetrics"
	"github.com/edgesync/edgesync/internal/version"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/revocation"
)

// subcommands are added to the root command besides serve. Other files
// register theirs from init, for example certs.go:
//
//	func init() { subcommands = append(subcommands, newCertsCommand) }
var subcommands []func() *cobra.Command

// newRootCommand builds the command tree: the root runs the server, like
// `serve`.
func newRootCommand() *cobra.Command {
	var opts serveFlags
	root := &cobra.Command{
		Use:           "edgesync-server",
		Short:         "Sync Kubernetes objects to edge nodes over one mTLS gRPC stream per node",
		Args:          cobra.NoArgs,
		Version:       version.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE:          func(cmd *cobra.Command, _ []string) error { return runServe(cmd, &opts) },
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Run the server (the default)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runServe(cmd, &opts) },
	}
	// The root and serve take the same flags; other subcommands do not
	// inherit them.
	opts.register(root.Flags())
	opts.register(serve.Flags())
	root.AddCommand(serve)
	for _, sub := range subcommands {
		root.AddCommand(sub())
	}
	return root
}

// serveFlags are the command-line flags; set ones override the file.
type serveFlags struct {
	configFile         string
	printDefaultConfig bool
	override           Config
}

func (f *serveFlags) register(fs *pflag.FlagSet) {
	d := defaultConfig()
	o := &f.override
	fs.StringVar(&f.configFile, "config", "", "YAML configuration file (fields it omits take their defaults)")
	fs.BoolVar(&f.printDefaultConfig, "print-default-config", false, "print the default configuration as YAML and exit")
	fs.StringVar(&o.ServerID, "server-id", d.ServerID, "name of this replica (serverID; default: host name)")
	fs.StringVar(&o.ListenAddress, "listen", d.ListenAddress, "gRPC address for edges and admins (listenAddress)")
	fs.StringVar(&o.HTTPAddress, "http-listen", d.HTTPAddress, "address for /metrics, /healthz, /readyz; empty disables (httpAddress)")
	fs.BoolVar(&o.EnablePprof, "enable-pprof", d.EnablePprof, "serve /debug/pprof/ on the HTTP address (enablePprof)")
	fs.StringVar(&o.TLS.CAFile, "tls-ca", d.TLS.CAFile, "CA certificate that client certificates must chain to (tls.caFile)")
	fs.StringVar(&o.TLS.CertFile, "tls-cert", d.TLS.CertFile, "server certificate (tls.certFile)")
	fs.StringVar(&o.TLS.KeyFile, "tls-key", d.TLS.KeyFile, "server private key (tls.keyFile)")
	fs.IntVar(&o.NodeLimit, "node-limit", d.NodeLimit, "most edge sessions this replica holds (nodeLimit)")
	fs.IntVar(&o.AckWindow, "ack-window", d.AckWindow, "most unacknowledged object events per session (ackWindow)")
	fs.StringVar(&o.Kubernetes.Kubeconfig, "kubeconfig", d.Kubernetes.Kubeconfig, "kubeconfig file; empty for in-cluster config (kubernetes.kubeconfig)")
	fs.StringVar(&o.Bootstrap.CAKeyFile, "bootstrap-ca-key", d.Bootstrap.CAKeyFile, "key of the CA that signs node certificates for joining nodes; enables token join (bootstrap.caKeyFile)")
	fs.DurationVar(&o.Bootstrap.NodeCertificateLifetime.Duration, "node-cert-lifetime", d.Bootstrap.NodeCertificateLifetime.Duration, "lifetime of node certificates issued at join and renewal (bootstrap.nodeCertificateLifetime)")
	fs.StringVar(&o.Kubelet.ListenAddress, "kubelet-listen", d.Kubelet.ListenAddress, "address of the kubelet API of edge nodes (kubectl logs/exec/attach/port-forward through tunnels); empty disables (kubelet.listenAddress)")
	fs.StringVar(&o.Kubelet.AdvertiseAddress, "kubelet-advertise-address", d.Kubelet.AdvertiseAddress, "IP the kube-apiserver dials for the kubelet API, written into edge Nodes' status; default the --kubelet-listen IP, or $POD_IP when it listens on every address (kubelet.advertiseAddress)")
	fs.StringVar(&o.Kubelet.ClientCAFile, "kubelet-client-ca", d.Kubelet.ClientCAFile, "CA of the kube-apiserver's kubelet client certificate (kubelet.clientCAFile)")
	fs.StringVar(&o.Router.ListenAddress, "router-listen", d.Router.ListenAddress, "address of the router's REST port (KubeEdge Rules: messages to and from edge applications; KubeEdge uses :9443); empty disables (router.listenAddress)")
	fs.StringVar(&o.Ownership.Namespace, "ownership-namespace", d.Ownership.Namespace, "namespace of the Leases that make one replica own each node; required with several replicas (ownership.namespace)")
	fs.StringVar(&o.Ownership.Address, "ownership-address", d.Ownership.Address, "address other replicas and operators reach this replica at (ownership.address)")
	fs.StringVar(&o.Log.Level, "log-level", d.Log.Level, "debug, info, warn or error (log.level)")
	fs.StringVar(&o.Log.Format, "log-format", d.Log.Format, "json or console (log.format)")
}

// apply copies the flags the user set onto cfg.
func (f *serveFlags) apply(fs *pflag.FlagSet, cfg *Config) {
	o := &f.override
	set := map[string]func(){
		"server-id":      func() { cfg.ServerID = o.ServerID },
		"listen":         func() { cfg.ListenAddress = o.ListenAddress },
		"http-listen":    func() { cfg.HTTPAddress = o.HTTPAddress },
		"enable-pprof":   func() { cfg.EnablePprof = o.EnablePprof },
		"tls-ca":         func() { cfg.TLS.CAFile = o.TLS.CAFile },
		"tls-cert":       func() { cfg.TLS.CertFile = o.TLS.CertFile },
		"tls-key":        func() { cfg.TLS.KeyFile = o.TLS.KeyFile },
		"node-limit":     func() { cfg.NodeLimit = o.NodeLimit },
		"ack-window":     func() { cfg.AckWindow = o.AckWindow },
		"kubeconfig":     func() { cfg.Kubernetes.Kubeconfig = o.Kubernetes.Kubeconfig },
		"log-level":      func() { cfg.Log.Level = o.Log.Level },
		"kubelet-listen": func() { cfg.Kubelet.ListenAddress = o.Kubelet.ListenAddress },
		"kubelet-advertise-address": func() {
			cfg.Kubelet.AdvertiseAddress = o.Kubelet.AdvertiseAddress
		},
		"kubelet-client-ca": func() { cfg.Kubelet.ClientCAFile = o.Kubelet.ClientCAFile },
		"bootstrap-ca-key":  func() { cfg.Bootstrap.CAKeyFile = o.Bootstrap.CAKeyFile },
		"node-cert-lifetime": func() {
			cfg.Bootstrap.NodeCertificateLifetime = o.Bootstrap.NodeCertificateLifetime
		},
		"log-format":          func() { cfg.Log.Format = o.Log.Format },
		"ownership-namespace": func() { cfg.Ownership.Namespace = o.Ownership.Namespace },
		"ownership-address":   func() { cfg.Ownership.Address = o.Ownership.Address },
		"router-listen":       func() { cfg.Router.ListenAddress = o.Router.ListenAddress },
	}
	for name, fn := range set {
		if fs.Changed(name) {
			fn()
		}
	}
}

// resolveConfig loads the file, applies flags and validates.
func (f *serveFlags) resolveConfig(fs *pflag.FlagSet) (Config, error) {
	cfg, err := loadConfig(f.configFile)
	if err != nil {
		return cfg, err
	}
	f.apply(fs, &cfg)
	return cfg, cfg.validate()
}

func runServe(cmd *cobra.Command, f *serveFlags) error {
	if f.printDefaultConfig {
		out, err := yaml.Marshal(defaultConfig())
		if err != nil {
			return err
		}
		_, err = cmd.OutOrStdout().Write(out)
		return err
	}
	cfg, err := f.resolveConfig(cmd.Flags())
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	lis, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("listenAddress: %w", err)
	}
	var httpLis net.Listener
	if cfg.HTTPAddress != "" {
		if httpLis, err = net.Listen("tcp", cfg.HTTPAddress); err != nil {
			lis.Close()
			return fmt.Errorf("httpAddress: %w", err)
		}
	}
	return serve(cmd.Context(), cfg, log, lis, httpLis)
}

func newLogger(c LogConfig) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
	}
	zc.Level = zap.NewAtomicLevelAt(level)
	return zc.Build()
}

func restConfig(c KubernetesConfig) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if c.Kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("kubernetes.kubeconfig is empty and in-cluster config is unavailable: %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return nil, fmt.Errorf("kubernetes.kubeconfig %s: %w", c.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = c.QPS, c.Burst
	cfg.UserAgent = "edgesync-server"
	return cfg, nil
}

// serve runs the controllers and the server on lis (and httpLis, if not
// nil) until ctx ends. It closes both listeners.
func serve(ctx context.Context, cfg Config, log *zap.Logger, lis, httpLis net.Listener) error {
	defer lis.Close()
	if httpLis != nil {
		defer httpLis.Close()
	}
	kube, err := restConfig(cfg.Kubernetes)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := kubemetrics.Register(reg); err != nil {
		return err
	}
	opts := server.Options{
		Registerer:        reg,
		Gatherer:          reg,
		ServerID:          cfg.ServerID,
		TLS:               server.TLSFiles{CAFile: cfg.TLS.CAFile, CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile},
		HeartbeatInterval: cfg.HeartbeatInterval.Duration,
		HeartbeatTimeout:  cfg.HeartbeatTimeout.Duration,
		AckWindow:         cfg.AckWindow,
		MaxMessageBytes:   cfg.MaxMessageBytes,
		ReportsPerSecond:  cfg.ReportsPerSecond,
		ReportBurst:       cfg.ReportBurst,
		NodeLimit:         cfg.NodeLimit,
		HelloTimeout:      cfg.HelloTimeout.Duration,
		DrainTimeout:      cfg.DrainTimeout.Duration,
		Keepalive: server.Keepalive{
			Time: cfg.Keepalive.Time.Duration, Timeout: cfg.Keepalive.Timeout.Duration, MinTime: cfg.Keepalive.MinTime.Duration,
		},
		Logger:       log.Named("server"),
		HTTPListener: httpLis,
		EnablePprof:  cfg.EnablePprof,
	}
	// Revoked nodes: every call with a revoked certificate is refused, and
	// a node revoked on any replica loses its session here (EndSession).
	revokeClient, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return fmt.Errorf("revocation: clientset: %w", err)
	}
	revoked := revocation.New(revokeClient, cfg.Bootstrap.Namespace, log.Named("revocation"))
	opts.Revocations = revoked
	var boot *bootstrap.Service
	if cfg.Bootstrap.enabled() {
		if boot, err = newBootstrap(cfg, kube, revoked, reg, log.Named("bootstrap")); err != nil {
			return err
		}
		opts.Bootstrap = boot
	}
	var synced <-chan struct{} // set below, before Serve
	opts.Ready = func() error {
		select {
		case <-synced:
			return nil
		default:
			return errors.New("informer caches have not synced yet")
		}
	}
	var srv *server.Server // set below, before anything serves
	kubelet, err := newKubeletEndpoint(cfg, reg, log, func(node, id string) error { return srv.OpenTunnel(node, id) })
	if err != nil {
		return err
	}
	var endpoint nodestatus.KubeletEndpoint
	if kubelet != nil {
		defer kubelet.lis.Close()
		opts.Tunnel, endpoint = kubelet.broker, kubelet.endpoint
	}
	if srv, err = server.New(opts); err != nil {
		return err
	}
	var (
		routerLis                 net.Listener
		routerServing, routerPeer *tls.Config
		routerAddress             string
	)
	if cfg.Router.ListenAddress != "" {
		if routerServing, routerPeer, err = routerTLS(cfg); err != nil {
			return err
		}
		if routerLis, err = net.Listen("tcp", cfg.Router.ListenAddress); err != nil {
			return fmt.Errorf("router.listenAddress: %w", err)
		}
		defer routerLis.Close()
		routerAddress = cfg.Router.advertise(routerLis)
	}

	// --- Controllers: the feed.Controllers the server serves. ---
	ctrls, err := controllers.New(controllers.Config{
		RESTConfig:         kube,
		LeaseQPS:           cfg.Kubernetes.LeaseQPS,
		LeaseBurst:         cfg.Kubernetes.LeaseBurst,
		TokenQPS:           cfg.Kubernetes.TokenQPS,
		TokenBurst:         cfg.Kubernetes.TokenBurst,
		EventQPS:           cfg.Kubernetes.EventQPS,
		EventBurst:         cfg.Kubernetes.EventBurst,
		NodeEventRate:      cfg.Controllers.NodeEventRate,
		NodeEventBurst:     cfg.Controllers.NodeEventBurst,
		EdgeLabel:          cfg.Controllers.EdgeLabel,
		LeaseDuration:      cfg.Controllers.LeaseDuration.Duration,
		LeaseRenewInterval: cfg.Controllers.LeaseRenewInterval.Duration,
		Workers:            cfg.Controllers.Workers,
		ResyncPeriod:       cfg.Controllers.ResyncPeriod.Duration,
		DisableDevices:     cfg.Controllers.DisableDevices,
		KubeletEndpoint:    endpoint,
		Router:             routerOptions(cfg, routerPeer),
		Registerer:         reg,
		Logger:             log.Named("controllers"),
		Ownership: controllers.OwnershipConfig{
			Namespace: cfg.Ownership.Namespace, Replica: srv.ID(), Address: cfg.Ownership.Address, RouterAddress: routerAddress,
			LeaseDuration: cfg.Ownership.LeaseDuration.Duration, QPS: cfg.Ownership.QPS, Burst: cfg.Ownership.Burst,
		},
	})
	if err != nil {
		return fmt.Errorf("controllers: %w", err)
	}
	synced = ctrls.Synced()
	// --- end of controllers ---

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := ctrls.Run(gctx, srv); err != nil && ctx.Err() == nil {
			return fmt.Errorf("controllers: %w", err)
		}
		return nil
	})
	g.Go(func() error { return srv.Serve(gctx, lis, ctrls) })
	g.Go(func() error {
		if err := revoked.Run(gctx, srv.EndSession); err != nil && ctx.Err() == nil {
			return err
		}
		return nil
	})
	if boot != nil {
		g.Go(func() error {
			if err := boot.Run(gctx); err != nil && ctx.Err() == nil {
				return err
			}
			return nil
		})
	}
	if kubelet != nil {
		g.Go(func() error { return kubelet.run(gctx, kube, cfg.ServerID) })
	}
	if routerLis != nil {
		g.Go(func() error {
			log.Info("serving the router's REST port", zap.Stringer("address", routerLis.Addr()))
			return serveHTTPS(gctx, "router REST port", routerLis, ctrls.Router().Handler(), routerServing, log.Named("router"))
		})
	}
	start := time.Now()
	build := version.Get()
	log.Info("serving", zap.String("version", build.Version), zap.String("commit", build.Commit), zap.String("serverID", cfg.ServerID))
	err = g.Wait()
	log.Info("exiting", zap.Duration("uptime", time.Since(start)), zap.Error(err))
	return err
}

// routerOptions turns the router on when it has a REST port.
func routerOptions(cfg Config, peers *tls.Config) *router.Options {
	if cfg.Router.ListenAddress == "" {
		return nil
	}
	o := cfg.Router.options()
	o.PeerTLS = peers
	return o
}
