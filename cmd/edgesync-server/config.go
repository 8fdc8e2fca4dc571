package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/server"
)

// Config is the YAML configuration file of edgesync-server. Every field has
// a default (see defaultConfig and --print-default-config).
type Config struct {
	// ServerID names this replica; the host name when empty.
	ServerID string `json:"serverID"`
	// ListenAddress is where edges and admins connect (gRPC, mTLS).
	ListenAddress string `json:"listenAddress"`
	// HTTPAddress serves /metrics, /healthz, /readyz (and pprof); empty
	// disables it.
	HTTPAddress string `json:"httpAddress"`
	EnablePprof bool   `json:"enablePprof"`

	TLS TLSConfig `json:"tls"`

	HeartbeatInterval metav1.Duration `json:"heartbeatInterval"`
	// HeartbeatTimeout ends sessions silent for that long; 0 means three
	// heartbeat intervals.
	HeartbeatTimeout metav1.Duration `json:"heartbeatTimeout"`
	AckWindow        int             `json:"ackWindow"`
	MaxMessageBytes  int             `json:"maxMessageBytes"`
	ReportsPerSecond int             `json:"reportsPerSecond"`
	ReportBurst      int             `json:"reportBurst"`
	NodeLimit        int             `json:"nodeLimit"`
	HelloTimeout     metav1.Duration `json:"helloTimeout"`
	DrainTimeout     metav1.Duration `json:"drainTimeout"`
	Keepalive        KeepaliveConfig `json:"keepalive"`

	Kubernetes  KubernetesConfig  `json:"kubernetes"`
	Controllers ControllersConfig `json:"controllers"`
	Ownership   OwnershipConfig   `json:"ownership"`
	Bootstrap   BootstrapConfig   `json:"bootstrap"`
	Kubelet     KubeletConfig     `json:"kubelet"`
	Router      RouterConfig      `json:"router"`
	Log         LogConfig         `json:"log"`
}

// BootstrapConfig configures joining with bootstrap tokens
// (edgesync.v1.BootstrapService). It is served when a signing CA is given:
// caKeyFile (with caCertFile, default tls.caFile), or caSecret.
type BootstrapConfig struct {
	// CACertFile and CAKeyFile are the CA that signs node certificates;
	// CACertFile defaults to tls.caFile.
	CACertFile string `json:"caCertFile"`
	CAKeyFile  string `json:"caKeyFile"`
	// CASecret names a kubernetes.io/tls Secret (tls.crt, tls.key) in
	// Namespace holding the signing CA, as `certs init --kube` creates it.
	CASecret string `json:"caSecret"`
	// Namespace is the server's own namespace: besides the CA Secret it
	// holds the records of consumed single-use tokens and of revoked nodes
	// (`edgesync-server node revoke`), which every replica watches.
	Namespace string `json:"namespace"`
	// NodeCertificateLifetime is how long node certificates last; edges
	// renew them between 70 % and 90 % of it over their live connection.
	// 30 days: a stolen certificate of a node nobody revokes works at most
	// that long, and an edge offline longer joins again with a token.
	NodeCertificateLifetime metav1.Duration `json:"nodeCertificateLifetime"`
	// AttemptsPerSecond and AttemptBurst limit calls per peer address.
	AttemptsPerSecond float64 `json:"attemptsPerSecond"`
	AttemptBurst      int     `json:"attemptBurst"`
	// GlobalAttemptsPerSecond and GlobalAttemptBurst limit the calls of
	// all addresses together (callers rotating addresses).
	GlobalAttemptsPerSecond float64 `json:"globalAttemptsPerSecond"`
	GlobalAttemptBurst      int     `json:"globalAttemptBurst"`
}

// enabled reports whether a signing CA is configured.
func (b BootstrapConfig) enabled() bool { return b.CAKeyFile != "" || b.CASecret != "" }

// TLSConfig names the server's certificate, key and the CA of clients.
type TLSConfig struct {
	CAFile   string `json:"caFile"`
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// KeepaliveConfig configures HTTP/2 pings.
type KeepaliveConfig struct {
	Time    metav1.Duration `json:"time"`
	Timeout metav1.Duration `json:"timeout"`
	MinTime metav1.Duration `json:"minTime"`
}

// KubernetesConfig says how to reach the API server.
type KubernetesConfig struct {
	// Kubeconfig is a kubeconfig file; empty means in-cluster config.
	Kubeconfig string `json:"kubeconfig"`
	// QPS and Burst bound every request but node Lease renewals.
	QPS   float32 `json:"qps"`
	Burst int     `json:"burst"`
	// LeaseQPS and LeaseBurst bound node Lease renewals, which have a
	// client of their own: a Lease is renewed on a heartbeat at most once
	// per controllers.leaseRenewInterval, so nodes / the longer of the two
	// intervals (10,000 / 15 s = 667 at the defaults) must stay below
	// LeaseQPS.
	LeaseQPS   float32 `json:"leaseQPS"`
	LeaseBurst int     `json:"leaseBurst"`
	// TokenQPS and TokenBurst bound TokenRequests for the ServiceAccount
	// tokens of pods on edge nodes; EventQPS and EventBurst the writes of
	// the events edges report. Each has a client of its own, so neither
	// can delay status writes.
	TokenQPS   float32 `json:"tokenQPS"`
	TokenBurst int     `json:"tokenBurst"`
	EventQPS   float32 `json:"eventQPS"`
	EventBurst int     `json:"eventBurst"`
}

// ControllersConfig tunes the Kubernetes controllers.
type ControllersConfig struct {
	EdgeLabel     string          `json:"edgeLabel"`
	Workers       int             `json:"workers"`
	LeaseDuration metav1.Duration `json:"leaseDuration"`
	// LeaseRenewInterval is how often a node's Lease is renewed while the
	// node sends heartbeats; less than leaseDuration/2.
	LeaseRenewInterval metav1.Duration `json:"leaseRenewInterval"`
	ResyncPeriod       metav1.Duration `json:"resyncPeriod"`
	DisableDevices     bool            `json:"disableDevices"`
	// NodeEventRate and NodeEventBurst are each node's budget of events
	// (per second, and bursts); events beyond it are dropped and counted.
	NodeEventRate  float64 `json:"nodeEventRate"`
	NodeEventBurst int     `json:"nodeEventBurst"`
}

// OwnershipConfig makes replicas own nodes through Leases in Namespace, so
// that with several replicas only one serves and writes for each node.
// Required whenever more than one replica runs; off when Namespace is empty.
type OwnershipConfig struct {
	// Namespace holds the ownership Leases: the server's namespace.
	Namespace string `json:"namespace"`
	// Address is where other replicas and operators reach this one
	// (host:port; the pod IP and the gRPC port in Kubernetes); optional.
	Address string `json:"address"`
	// LeaseDuration of the replica Lease: how long the nodes of a replica
	// that died wait before another may serve them (it is renewed every
	// third of it).
	LeaseDuration metav1.Duration `json:"leaseDuration"`
	// QPS and Burst bound ownership writes.
	QPS   float32 `json:"qps"`
	Burst int     `json:"burst"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info, warn or error.
	Level string `json:"level"`
	// Format is json or console.
	Format string `json:"format"`
}

func defaultConfig() Config {
	d := func(v time.Duration) metav1.Duration { return metav1.Duration{Duration: v} }
	return Config{
		ListenAddress: ":7443",
		HTTPAddress:   ":8080",
		TLS: TLSConfig{
			CAFile:   "/etc/edgesync/pki/ca.crt",
			CertFile: "/etc/edgesync/pki/server.crt",
			KeyFile:  "/etc/edgesync/pki/server.key",
		},
		HeartbeatInterval: d(server.DefaultHeartbeatInterval),
		AckWindow:         128,
		MaxMessageBytes:   4 << 20,
		ReportsPerSecond:  20,
		ReportBurst:       200,
		NodeLimit:         10000,
		HelloTimeout:      d(30 * time.Second),
		DrainTimeout:      d(10 * time.Second),
		Keepalive:         KeepaliveConfig{Time: d(5 * time.Minute), Timeout: d(10 * time.Second), MinTime: d(5 * time.Second)},
		Kubernetes: KubernetesConfig{QPS: controllers.DefaultQPS, Burst: controllers.DefaultBurst, LeaseQPS: controllers.DefaultLeaseQPS, LeaseBurst: controllers.DefaultLeaseBurst,
			TokenQPS: 50, TokenBurst: 100, EventQPS: 20, EventBurst: 50},
		Controllers: ControllersConfig{
			EdgeLabel:          "node-role.kubernetes.io/edge",
			Workers:            4,
			LeaseDuration:      d(controllers.DefaultLeaseDuration),
			LeaseRenewInterval: d(controllers.DefaultLeaseRenewInterval),
			NodeEventRate:      5,
			NodeEventBurst:     50,
		},
		Ownership: OwnershipConfig{LeaseDuration: d(15 * time.Second), QPS: 200, Burst: 400},
		Bootstrap: BootstrapConfig{
			Namespace:               "edgesync-system",
			NodeCertificateLifetime: d(30 * 24 * time.Hour),
			AttemptsPerSecond:       1,
			AttemptBurst:            10,
			GlobalAttemptsPerSecond: 20,
			GlobalAttemptBurst:      100,
		},
		Kubelet: KubeletConfig{MaxTunnelsPerNode: 32, MaxTunnels: 1024, IdleTimeout: d(4 * time.Hour)},
		Router:  defaultRouterConfig(),
		Log:     LogConfig{Level: "info", Format: "json"},
	}
}

// loadConfig reads path over the defaults; fields the file omits keep
// their defaults. Unknown fields are an error.
func loadConfig(path string) (Config, error) {
	cfg := defaultConfig()
	if path == "" {
		return cfg, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		return cfg, fmt.Errorf("parse config %s: %w", path, err)
	}
	return cfg, nil
}

// validate names every bad field by its YAML path.
func (c *Config) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	addr := func(field, v string, optional bool) {
		if v == "" && optional {
			return
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			bad(field, "want host:port, got %q", v)
		}
	}
	addr("listenAddress", c.ListenAddress, false)
	addr("httpAddress", c.HTTPAddress, true)
	c.validateKubelet(bad)
	c.validateRouter(bad)
	for field, v := range map[string]string{"tls.caFile": c.TLS.CAFile, "tls.certFile": c.TLS.CertFile, "tls.keyFile": c.TLS.KeyFile} {
		if v == "" {
			bad(field, "required: the server speaks mTLS only (create files with `edgesync-server certs`)")
		}
	}
	for field, v := range map[string]time.Duration{
		"heartbeatInterval": c.HeartbeatInterval.Duration, "helloTimeout": c.HelloTimeout.Duration,
		"drainTimeout": c.DrainTimeout.Duration, "keepalive.time": c.Keepalive.Time.Duration,
		"keepalive.timeout": c.Keepalive.Timeout.Duration, "keepalive.minTime": c.Keepalive.MinTime.Duration,
		"controllers.leaseDuration": c.Controllers.LeaseDuration.Duration, "controllers.leaseRenewInterval": c.Controllers.LeaseRenewInterval.Duration,
	} {
		if v <= 0 {
			bad(field, "must be a positive duration such as 15s, got %s", v)
		}
	}
	if renew, lease := c.Controllers.LeaseRenewInterval.Duration, c.Controllers.LeaseDuration.Duration; renew > 0 && lease > 0 && renew >= lease/2 {
		bad("controllers.leaseRenewInterval", "must be less than half of controllers.leaseDuration (%s), so that one late renewal does not expire a Lease; got %s (kubelets use a quarter: %s)",
			lease, renew, lease/4)
	}
	if hb, timeout := c.HeartbeatInterval.Duration, c.HeartbeatTimeout.Duration; timeout < 0 || (hb > 0 && timeout > 0 && timeout <= hb) {
		bad("heartbeatTimeout", "must be longer than heartbeatInterval (%s): sessions silent for heartbeatTimeout are ended; got %s (the default is three intervals: %s)", hb, timeout, 3*hb)
	}
	if c.Controllers.ResyncPeriod.Duration < 0 {
		bad("controllers.resyncPeriod", "must not be negative, got %s", c.Controllers.ResyncPeriod.Duration)
	}
	for field, v := range map[string]int{
		"ackWindow": c.AckWindow, "maxMessageBytes": c.MaxMessageBytes, "reportsPerSecond": c.ReportsPerSecond,
		"reportBurst": c.ReportBurst, "nodeLimit": c.NodeLimit, "kubernetes.burst": c.Kubernetes.Burst,
		"kubernetes.leaseBurst": c.Kubernetes.LeaseBurst,
		"controllers.workers":   c.Controllers.Workers,
	} {
		if v <= 0 {
			bad(field, "must be at least 1, got %d", v)
		}
	}
	if c.MaxMessageBytes > 0 && c.MaxMessageBytes < 1024 {
		bad("maxMessageBytes", "must be at least 1024, got %d", c.MaxMessageBytes)
	}
	if c.Kubernetes.QPS <= 0 {
		bad("kubernetes.qps", "must be positive, got %g", c.Kubernetes.QPS)
	}
	if c.Kubernetes.LeaseQPS <= 0 {
		bad("kubernetes.leaseQPS", "must be positive (node Lease writes per second; nodes / controllers.leaseRenewInterval must stay below it), got %g", c.Kubernetes.LeaseQPS)
	}
	if c.Bootstrap.CAKeyFile != "" && c.Bootstrap.CASecret != "" {
		bad("bootstrap.caSecret", "give either bootstrap.caKeyFile or bootstrap.caSecret, not both")
	}
	if c.Bootstrap.CASecret != "" && c.Bootstrap.Namespace == "" {
		bad("bootstrap.namespace", "required with bootstrap.caSecret")
	}
	if l := c.Bootstrap.NodeCertificateLifetime.Duration; l < time.Minute {
		bad("bootstrap.nodeCertificateLifetime", "must be at least 1m, got %s", l)
	}
	if c.Bootstrap.AttemptsPerSecond <= 0 || c.Bootstrap.AttemptBurst <= 0 {
		bad("bootstrap.attemptsPerSecond", "attemptsPerSecond and attemptBurst must be positive, got %g and %d", c.Bootstrap.AttemptsPerSecond, c.Bootstrap.AttemptBurst)
	}
	if c.Bootstrap.GlobalAttemptsPerSecond <= 0 || c.Bootstrap.GlobalAttemptBurst <= 0 {
		bad("bootstrap.globalAttemptsPerSecond", "globalAttemptsPerSecond and globalAttemptBurst must be positive, got %g and %d", c.Bootstrap.GlobalAttemptsPerSecond, c.Bootstrap.GlobalAttemptBurst)
	}
	if c.Bootstrap.Namespace == "" {
		bad("bootstrap.namespace", "required: the server's namespace, which holds its token and revocation records")
	}
	if c.Ownership.Namespace != "" {
		if d := c.Ownership.LeaseDuration.Duration; d < 3*time.Second {
			bad("ownership.leaseDuration", "must be at least 3s (it is renewed every fifth of it), got %s", d)
		}
		if c.Ownership.QPS <= 0 || c.Ownership.Burst <= 0 {
			bad("ownership.qps", "qps and burst must be positive, got %g and %d", c.Ownership.QPS, c.Ownership.Burst)
		}
		addr("ownership.address", c.Ownership.Address, true)
	}
	if c.Controllers.EdgeLabel == "" {
		bad("controllers.edgeLabel", "required")
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "want debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		bad("log.format", "want json or console, got %q", c.Log.Format)
	}
	if len(errs) == 0 {
		return nil
	}
	sortErrors(errs)
	return fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
}

func sortErrors(errs []error) {
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
}
