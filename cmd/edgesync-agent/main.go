// Command edgesync-agent is the reference edge agent (package
// edgeclient/agent) built on edgeclient. It registers its node, keeps it
// heartbeating, prints every change to what the node holds as one line, and
// runs pods with a simulated runtime: each pod it receives is reported
// Running and Ready (and terminated once the cloud deletes it). With
// --runtime kubelet the node's stock kubelet runs them instead, against the
// agent's local Kubernetes API (--local-api-address, kubeconfig written to
// --kubelet-dir), and kubectl reaches the kubelet (--kubelet-url). With
// --dns-address and --proxy-cidr it answers DNS for the Services the node
// holds and proxies TCP to their endpoints. With --devices dmi, KubeEdge
// mappers drive the node's devices over DMI on --dmi-socket.
// `edgesync-agent list --store DIR` prints what the local store holds.
//
// A node joins the cluster with a bootstrap token and then runs with the
// certificate it got, which it renews by itself:
//
//	edgesync-agent join --server HOST:PORT --token T --ca-cert-hash sha256:H --node NAME --dir DIR
//	edgesync-agent run --server HOST:PORT --node NAME --dir DIR --store STORE
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/edgesync/edgesync/edgeclient/agent"
	"github.com/edgesync/edgesync/edgeclient/dmi"
	"github.com/edgesync/edgesync/edgeclient/kubeletproxy"
	"github.com/edgesync/edgesync/edgeclient/servicedns"
	"github.com/edgesync/edgesync/edgeclient/store"
	"github.com/edgesync/edgesync/internal/version"
)

func main() {
	ctx, cancel := signalContext()
	defer cancel()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		os.Exit(1)
	}
}

// signalContext ends at the first SIGINT or SIGTERM; a second one exits at
// once.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ch
		cancel()
		<-ch
		os.Exit(1)
	}()
	return ctx, cancel
}

func newRootCommand() *cobra.Command {
	var (
		build    = version.Get()
		cfg      = agent.Config{Version: build.Version}
		c        = &cfg.Client
		logLevel string
		// forwardHost adds the host's name servers to the DNS upstreams.
		forwardHost bool
	)
	root := &cobra.Command{
		Use:           "edgesync-agent",
		Short:         "Reference edgesync edge agent: a simulated container runtime, or the node's kubelet (--runtime kubelet)",
		Version:       build.String(),
		SilenceUsage:  true,
		SilenceErrors: false,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // nothing to do about it at exit
			if forwardHost {
				dns := &cfg.Services.DNS
				if dns.Forward, err = hostResolvers("/etc/resolv.conf", dns.Addr, dns.Forward); err != nil {
					return err
				}
			}
			c.Logger, cfg.Out = log, cmd.OutOrStdout()
			if cfg.Runtime == agent.RuntimeKubelet && cfg.Kubelet.Dir == "" {
				cfg.Kubelet.Dir = filepath.Join(c.StoreDir, "kubelet")
			}
			return agent.Run(cmd.Context(), cfg)
		},
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	f := root.Flags()
	f.StringSliceVar(&c.Servers, "server", nil, "edgesync server address, host:port (required); repeat it or separate with commas for replicas of one deployment: the agent picks one at random and another after a failed attempt (a name resolving to several addresses counts as several)")
	f.StringVar(&c.CAFile, "ca", "", "PEM file of the CA that signed the server certificate (required)")
	f.StringVar(&c.CertFile, "cert", "", "PEM file of the node's client certificate, CN system:node:NAME (required; re-read when it changes)")
	f.StringVar(&c.KeyFile, "key", "", "PEM file of the node's private key (required)")
	f.StringVar(&c.NodeName, "node", "", "node name, as in the certificate (required)")
	f.StringVar(&c.StoreDir, "store", "", "directory of the local object store (required)")
	f.StringToStringVar(&cfg.Labels, "labels", nil, "labels of the Node when it is registered, k=v,...")
	f.DurationVar(&c.Backoff.Initial, "backoff-initial", 0, "cap of the first reconnect delay (default 500ms)")
	f.DurationVar(&c.Backoff.Max, "backoff-max", 0, "cap of every reconnect delay (default 30s)")
	f.DurationVar(&cfg.StatusInterval, "node-status-interval", agent.DefaultStatusInterval, "how often the node status is checked; it is sent only when it changed")
	f.BoolVar(&cfg.AllowExec, "allow-exec", false, "let kubectl exec run commands on this edge host, with the pod's environment and volume files (off by default: exec is refused); kubectl logs and port-forward (to the host's loopback) work without it")
	f.StringVar(&cfg.Services.DNS.Addr, "dns-address", "", "serve DNS for the Services the node holds on this host:port, UDP and TCP (for example 127.0.0.1:53; off when empty)")
	f.StringVar(&cfg.Services.DNS.Domain, "cluster-domain", servicedns.DefaultDomain, "cluster domain of the Service names the DNS server answers")
	f.StringSliceVar(&cfg.Services.DNS.Forward, "dns-forward", nil, "upstream DNS servers (host:port,...) for names outside the cluster domain; none: such queries are refused")
	f.BoolVar(&forwardHost, "dns-forward-host", false, "also forward names outside the cluster domain to the host's name servers (/etc/resolv.conf), after --dns-forward's")
	f.StringVar(&cfg.Services.ProxyCIDR, "proxy-cidr", "", "proxy the Services the node holds, each on its own local IP from this range and on its own ports (for example 127.100.0.0/16); DNS then answers with those IPs; off when empty")
	f.StringVar(&cfg.Devices.Mode, "devices", agent.DevicesSimulated, "what drives the devices the node holds: simulated (each takes its desired values at once) or dmi (KubeEdge mappers, which register on --dmi-socket)")
	f.StringVar(&cfg.Devices.DMI.SocketPath, "dmi-socket", dmi.DefaultSocketPath, "with --devices dmi: the UNIX socket KubeEdge's DMI (DeviceManagerService) is served on, where mappers register")
	f.DurationVar(&cfg.Devices.DMI.NoMapperGrace, "dmi-no-mapper-grace", dmi.DefaultNoMapperGrace, "with --devices dmi: how long after start a device waits for a mapper of its protocol before its status says there is none")
	f.StringVar(&cfg.Runtime, "runtime", agent.RuntimeSimulated, "what runs the node's pods: simulated (each pod is reported Running, nothing runs; for benchmarks and machines without containerd) or kubelet (the node's stock kubelet, which talks to the agent's local API; see README, A real edge node)")
	f.StringVar(&cfg.Kubelet.Dir, "kubelet-dir", "", "with --runtime kubelet: where the agent writes the kubelet's kubeconfig (DIR/kubeconfig) and the certificates the kubelet's configuration names (DIR/pki, DIR/localapi); default STORE/kubelet")
	f.StringVar(&cfg.Kubelet.LocalAPIAddress, "local-api-address", agent.DefaultLocalAPIAddress, "with --runtime kubelet: host:port of the local Kubernetes API the kubelet talks to (loopback reaches the kubelet and host-network pods; pods told by the Service default/kubernetes: see README, Applications at the edge)")
	f.StringVar(&cfg.Kubelet.URL, "kubelet-url", kubeletproxy.DefaultURL, "with --runtime kubelet: the kubelet's server (its address and port), which kubectl logs, exec, attach and port-forward reach through the agent")
	f.StringVar(&cfg.MQTTBroker, "mqtt-broker", "", "route KubeEdge Rules' messages through this MQTT broker, e.g. tcp://127.0.0.1:1883 (publish what the cloud sends, send up what edge applications publish on the Rules' topics; HTTP requests go to local applications); off when empty")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	for _, name := range []string{"server", "ca", "cert", "key", "node", "store"} {
		_ = root.MarkFlagRequired(name)
	}
	root.AddCommand(newListCommand(), newJoinCommand(), newRunCommand(root, c))
	return root
}

func newListCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "list --store DIR",
		Short: "Print what the local store holds, like kubectl get",
		Long: "Print every object the local store holds. The store is opened read-only; " +
			"a running agent holds it exclusively, so stop the agent first.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := store.Open(dir, store.Options{ReadOnly: true})
			if err != nil {
				return err
			}
			defer s.Close()
			return agent.List(cmd.OutOrStdout(), s, time.Now())
		},
	}
	cmd.Flags().StringVar(&dir, "store", "", "directory of the local object store (required)")
	_ = cmd.MarkFlagRequired("store")
	return cmd
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build()
}
