package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/edgesync/edgesync/controllers/nodestatus"
	"github.com/edgesync/edgesync/server/certreload"
	"github.com/edgesync/edgesync/server/kubeletapi"
	"github.com/edgesync/edgesync/server/tunnel"
)

// KubeletConfig configures the kubelet endpoint of edge nodes (kubectl
// logs, exec, attach, port-forward through tunnels to the edges).
type KubeletConfig struct {
	// ListenAddress serves the kubelet API over TLS; empty disables it.
	ListenAddress string `json:"listenAddress"`
	// AdvertiseAddress is the IP the kube-apiserver dials: it is written as
	// the only InternalIP of every edge node this replica holds, with the
	// listen port as the kubelet port. Default: the listen address's IP,
	// or, when it listens on every address, the environment variable
	// POD_IP (set it from the downward API's status.podIP).
	AdvertiseAddress string `json:"advertiseAddress"`
	// ClientCAFile is the CA of the kube-apiserver's kubelet client
	// certificate (--kubelet-client-certificate); required.
	ClientCAFile string `json:"clientCAFile"`
	// MaxTunnelsPerNode and MaxTunnels bound the tunnels open at once.
	MaxTunnelsPerNode int `json:"maxTunnelsPerNode"`
	MaxTunnels        int `json:"maxTunnels"`
	// IdleTimeout ends tunnels idle for that long (the kubelet's
	// streaming-connection-idle-timeout).
	IdleTimeout metav1.Duration `json:"idleTimeout"`
}

// kubeletEndpoint is the running kubelet endpoint.
type kubeletEndpoint struct {
	lis      net.Listener
	broker   *tunnel.Broker
	endpoint nodestatus.KubeletEndpoint
	tlsCfg   *tls.Config
	log      *zap.Logger
}

// newKubeletEndpoint listens and builds the tunnel broker; nil when the
// kubelet endpoint is disabled. open is the server's OpenTunnel, bound
// later.
func newKubeletEndpoint(cfg Config, reg prometheus.Registerer, log *zap.Logger, open func(node, id string) error) (*kubeletEndpoint, error) {
	kc := cfg.Kubelet
	if kc.ListenAddress == "" {
		return nil, nil
	}
	// The serving certificate and the apiserver's client CA are re-read
	// when their files change (a rotated certificate is picked up without
	// a restart, as on the gRPC port).
	reloader, err := certreload.New(certreload.Files{CAFile: kc.ClientCAFile, CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile},
		// A caller without a certificate gets a 401 saying why.
		&tls.Config{MinVersion: tls.VersionTLS12, ClientAuth: tls.VerifyClientCertIfGiven}, log.Named("kubelet-tls"))
	if err != nil {
		return nil, fmt.Errorf("kubelet endpoint TLS (kubelet.clientCAFile, tls.certFile, tls.keyFile): %w", err)
	}
	broker, err := tunnel.New(tunnel.Options{
		Open: open, IdleTimeout: kc.IdleTimeout.Duration,
		MaxPerNode: kc.MaxTunnelsPerNode, MaxTotal: kc.MaxTunnels,
		Logger: log.Named("tunnel"), Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", kc.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("kubelet.listenAddress: %w", err)
	}
	host := kc.advertise()
	_, portStr, _ := net.SplitHostPort(lis.Addr().String())
	port, _ := strconv.Atoi(portStr)
	return &kubeletEndpoint{
		lis:      lis,
		broker:   broker,
		endpoint: nodestatus.KubeletEndpoint{Address: host, Port: int32(port)},
		tlsCfg:   reloader.Config(),
		log:      log,
	}, nil
}

// run serves the kubelet API until ctx ends.
func (k *kubeletEndpoint) run(ctx context.Context, kube *rest.Config, serverID string) error {
	client, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return err
	}
	if serverID == "" {
		serverID, _ = os.Hostname()
	}
	h, err := kubeletapi.New(kubeletapi.Options{Client: client, Dialer: k.broker, ServerID: serverID, Logger: k.log.Named("kubeletapi")})
	if err != nil {
		return err
	}
	k.log.Info("serving the kubelet API of edge nodes", zap.Stringer("address", k.lis.Addr()),
		zap.String("advertised", net.JoinHostPort(k.endpoint.Address, strconv.Itoa(int(k.endpoint.Port)))))
	return serveHTTPS(ctx, "kubelet API", k.lis, h, k.tlsCfg, k.log)
}

// advertise is the IP written into edge Nodes: AdvertiseAddress, else the
// listen IP, else (listening on every address) $POD_IP.
func (kc KubeletConfig) advertise() string {
	if kc.AdvertiseAddress != "" {
		return kc.AdvertiseAddress
	}
	host, _, _ := net.SplitHostPort(kc.ListenAddress)
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return host
	}
	return os.Getenv("POD_IP")
}

// validateKubelet checks the kubelet section.
func (c *Config) validateKubelet(bad func(field, format string, args ...any)) {
	kc := c.Kubelet
	if kc.ListenAddress == "" {
		return
	}
	if _, _, err := net.SplitHostPort(kc.ListenAddress); err != nil {
		bad("kubelet.listenAddress", "want host:port, got %q", kc.ListenAddress)
	}
	if adv := kc.advertise(); net.ParseIP(adv) == nil || net.ParseIP(adv).IsUnspecified() {
		bad("kubelet.advertiseAddress", "must be the IP the kube-apiserver dials to reach this replica (in a cluster the pod IP: set POD_IP from the downward API, or this field); got %q", adv)
	}
	if kc.ClientCAFile == "" {
		bad("kubelet.clientCAFile", "required with kubelet.listenAddress: the CA of the kube-apiserver's kubelet client certificate")
	}
	if kc.IdleTimeout.Duration < 0 || kc.MaxTunnels < 0 || kc.MaxTunnelsPerNode < 0 {
		bad("kubelet", "idleTimeout, maxTunnels and maxTunnelsPerNode must not be negative")
	}
}
