package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/kubeletproxy"
	"github.com/edgesync/edgesync/edgeclient/localapi"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Runtimes: what runs the node's pods.
const (
	// RuntimeSimulated reports every pod Running and runs nothing
	// (benchmarks, machines without containerd).
	RuntimeSimulated = "simulated"
	// RuntimeKubelet leaves pods to the node's stock kubelet, which talks
	// to the agent's local API (package localapi) and is reached by
	// kubectl logs/exec/attach/port-forward through the agent (package
	// kubeletproxy).
	RuntimeKubelet = "kubelet"
)

// DefaultLocalAPIAddress is where the local API listens by default.
const DefaultLocalAPIAddress = "127.0.0.1:10550"

// KubeletConfig configures RuntimeKubelet.
type KubeletConfig struct {
	// Dir is where the agent writes what the kubelet is configured with:
	// Dir/kubeconfig (the local API, by file paths), Dir/localapi (the
	// local API's CA, serving and kubelet client certificates) and
	// Dir/pki (the CA the kubelet trusts as its only client, the
	// kubelet's serving certificate, the agent's client certificate).
	// Required.
	Dir string
	// LocalAPIAddress is the local API's host:port; default
	// DefaultLocalAPIAddress. It also serves the node's pods' own
	// programs (client-go with rest.InClusterConfig, package localapi's
	// Applications): pods are told this address through the Service
	// default/kubernetes the kubelet reads. On loopback only host-network
	// pods reach it; to serve other pods, give an address of the node on
	// the pods' network (the CNI bridge's gateway, the node's IP).
	LocalAPIAddress string
	// URL is the kubelet's server; default kubeletproxy.DefaultURL.
	URL string
}

// KubeconfigPath is the kubeconfig the agent writes for the kubelet.
func (k KubeletConfig) KubeconfigPath() string { return filepath.Join(k.Dir, "kubeconfig") }

// PKIDir holds the kubelet server's credentials (kubeletproxy).
func (k KubeletConfig) PKIDir() string { return filepath.Join(k.Dir, "pki") }

// kubeletRuntime is the agent's part of a real node: the local API the
// kubelet reads and writes through, and the proxy to the kubelet's
// server.
type kubeletRuntime struct {
	cfg   KubeletConfig
	creds *localapi.Credentials
	proxy *kubeletproxy.Proxy
	lis   net.Listener
	api   *localapi.Server // set once the client exists
}

// newKubeletRuntime prepares the credentials, the kubeconfig and the
// local API's listener; the server starts with start.
func newKubeletRuntime(cfg KubeletConfig, node string, log *zap.Logger) (*kubeletRuntime, error) {
	if cfg.Dir == "" {
		return nil, errors.New("the kubelet runtime needs a directory for the kubelet's kubeconfig and certificates")
	}
	if cfg.LocalAPIAddress == "" {
		cfg.LocalAPIAddress = DefaultLocalAPIAddress
	}
	pki, err := kubeletproxy.EnsureCredentials(cfg.PKIDir())
	if err != nil {
		return nil, err
	}
	proxy, err := kubeletproxy.New(kubeletproxy.Config{URL: cfg.URL, Credentials: pki, Logger: log.Named("kubeletproxy")})
	if err != nil {
		return nil, err
	}
	hosts := []string{"127.0.0.1", "::1", "localhost"}
	if host, _, err := net.SplitHostPort(cfg.LocalAPIAddress); err == nil && host != "" && !slices.Contains(hosts, host) {
		hosts = append(hosts, host) // the serving certificate names where pods reach it
	}
	creds, err := localapi.EnsureCredentials(filepath.Join(cfg.Dir, "localapi"), node, hosts...)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.LocalAPIAddress)
	if err != nil {
		return nil, fmt.Errorf("local API: %w", err)
	}
	if err := creds.WriteKubeconfig(cfg.KubeconfigPath(), "https://"+lis.Addr().String()); err != nil {
		lis.Close()
		return nil, err
	}
	return &kubeletRuntime{cfg: cfg, creds: creds, proxy: proxy, lis: lis}, nil
}

// handler is the tunnel's handler: the kubelet's server.
func (k *kubeletRuntime) handler() http.Handler { return k.proxy }

// attach builds the local API on the client; call before the client runs.
func (k *kubeletRuntime) attach(c *edgeclient.Client, log *zap.Logger) error {
	opts := localapi.Options{Credentials: k.creds, Logger: log.Named("localapi"), Applications: true}
	if addr, ok := k.lis.Addr().(*net.TCPAddr); ok && !addr.IP.IsUnspecified() {
		opts.ApplicationsAddress = addr.String()
	} else {
		log.Warn("the local API listens on every address: pods are not told where it is (rest.InClusterConfig); give --local-api-address a single IP",
			zap.Stringer("address", k.lis.Addr()))
	}
	api, err := localapi.New(c, opts)
	if err != nil {
		return err
	}
	k.api = api
	return nil
}

// kubeletAlive says whether the kubelet renewed its Lease through the
// local API recently enough (localapi.Server.KubeletAlive).
func (k *kubeletRuntime) kubeletAlive() bool { return k.api != nil && k.api.KubeletAlive() }

// onEvent keeps the local API current.
func (k *kubeletRuntime) onEvent(ev edgeclient.Event) {
	if k.api != nil {
		k.api.OnEvent(ev)
	}
}

// start serves the local API in g until ctx ends.
func (k *kubeletRuntime) start(ctx context.Context, g *errgroup.Group, log *zap.Logger) {
	log.Info("serving the local API for the kubelet", zap.Stringer("address", k.lis.Addr()),
		zap.String("kubeconfig", k.cfg.KubeconfigPath()), zap.String("kubelet", k.proxy.Target()))
	g.Go(func() error { return k.api.Serve(ctx, k.lis) })
}

// close releases what start did not take over.
func (k *kubeletRuntime) close() {
	k.proxy.Close()
	if k.api == nil {
		k.lis.Close()
	}
}

// runWithKubelet runs the client, the local API and the Services until ctx
// ends. The kubelet registers the node and reports its status, its pods'
// and its events through the local API; the agent adds only its own start.
func (a *agent) runWithKubelet(ctx context.Context, cfg Config, c *edgeclient.Client) error {
	a.reportEvent(edgeclient.EventReport{Regarding: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: a.node},
		Reason: "Starting", Note: "Starting edgesync-agent " + a.version + " (runtime: kubelet)"})
	a.log.Info("agent started", zap.String("node", a.node), zap.String("runtime", RuntimeKubelet),
		zap.String("server", cfg.Client.Server), zap.Strings("servers", cfg.Client.Servers))
	g, ctx := errgroup.WithContext(ctx)
	if err := a.startServices(ctx, g, cfg.Services, c); err != nil {
		return err
	}
	a.kubelet.start(ctx, g, a.log)
	g.Go(func() error { return c.Run(ctx) })
	if a.routes != nil {
		g.Go(func() error { return a.routes.Run(ctx, c) })
	}
	if a.dmi != nil {
		g.Go(func() error { return a.dmi.Run(ctx) })
	}
	return g.Wait()
}
