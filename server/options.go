package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/certreload"
)

// DefaultHeartbeatInterval is the heartbeat interval edges are told when
// Options.HeartbeatInterval is zero. Node Leases are renewed on heartbeats,
// so it bounds how often they can be (controllers.DefaultLeaseRenewInterval
// says how the two fit Kubernetes' node Lease of 40 s).
const DefaultHeartbeatInterval = 15 * time.Second

// Options configure a Server. Zero fields take the defaults listed.
type Options struct {
	// ServerID names this replica in Welcome and AdminService. Default: the
	// host name.
	ServerID string

	// TLS names the PEM files to serve with, used when TLSConfig is nil.
	TLS TLSFiles
	// TLSConfig, when set, is used instead of TLS (tests build one in
	// memory). It must require and verify client certificates.
	TLSConfig *tls.Config

	// HeartbeatInterval is sent in Welcome. DefaultHeartbeatInterval when
	// zero.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout ends a session from which nothing (no heartbeat,
	// no Ack, no report) arrived for this long: the edge is gone or stuck.
	// It is how the server notices dead edges, with one sweep for all
	// sessions instead of a timer per connection. Default three
	// HeartbeatIntervals; it must be longer than one.
	HeartbeatTimeout time.Duration
	// AckWindow is the most object events a session keeps unacknowledged.
	// Default 128.
	AckWindow int
	// MaxMessageBytes is the largest SyncRequest accepted. Default 4 MiB.
	MaxMessageBytes int
	// ReportsPerSecond and ReportBurst limit each node's reports; beyond
	// them the stream ends with RESOURCE_EXHAUSTED. Defaults 20 and 200.
	ReportsPerSecond int
	ReportBurst      int
	// NodeLimit is the most sessions this replica holds. Default 10000.
	NodeLimit int
	// HelloTimeout is how long a new stream may take to send Hello.
	// Default 30s.
	HelloTimeout time.Duration
	// DrainTimeout bounds the graceful stop when Serve's context ends.
	// Default 10s.
	DrainTimeout time.Duration
	// Keepalive configures HTTP/2 pings. Zero fields take defaults derived
	// from HeartbeatInterval.
	Keepalive Keepalive

	// Bootstrap, when set, is served on the same port (package
	// server/bootstrap). Clients may then connect without a certificate;
	// the interceptors refuse them everything but what Bootstrap's
	// AuthFuncOverride lets through.
	Bootstrap edgesyncv1.BootstrapServiceServer

	// Tunnel, when set, is served on the same port (package server/tunnel):
	// the streams edges open when OpenTunnel asks them to. It authorizes
	// its callers itself (AuthFuncOverride).
	Tunnel edgesyncv1.TunnelServiceServer

	// Revocations, when set, refuses every call made with a revoked node
	// certificate (package server/revocation): Sync, Tunnel and
	// BootstrapService.RenewCertificate alike, on every stream. Ending the
	// live session of a node revoked later is the caller's: call
	// EndSession when the record changes (revocation.List.Run).
	Revocations Revocations

	// Logger receives the server's logs. Default: no logging.
	Logger *zap.Logger
	// Registerer receives the server's metrics; Gatherer serves /metrics.
	// Default: a new registry for both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer

	// HTTPListener, when set, serves /metrics, /healthz, /readyz (and
	// /debug/pprof/ with EnablePprof) while Serve runs. Serve closes it.
	HTTPListener net.Listener
	EnablePprof  bool
	// Ready, when set, must also return nil for /readyz to answer 200 (for
	// example: the controllers' caches have synced).
	Ready func() error
}

// TLSFiles names the PEM files of the server's identity and the CA that
// client certificates must chain to.
type TLSFiles struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// Keepalive configures server pings and what the server tolerates from
// clients.
type Keepalive struct {
	// Time is how long a connection may be idle before the server pings.
	// Default 5m: HeartbeatTimeout notices silent edges much sooner and at
	// a fraction of the cost (gRPC wakes a goroutine per connection every
	// Time, which at 10,000 edges and 20s cost a fifth of a core); the
	// pings remain a backstop below the heartbeat protocol.
	Time time.Duration
	// Timeout is how long the server waits for the ping's answer before it
	// closes the connection. Default 10s.
	Timeout time.Duration
	// MinTime is the shortest ping interval a client may use; faster pings
	// get the connection closed. Default 5s.
	MinTime time.Duration
}

func (o *Options) setDefaults() error {
	if o.ServerID == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("ServerID not set and host name unknown: %w", err)
		}
		o.ServerID = host
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	def(&o.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&o.HelloTimeout, 30*time.Second)
	def(&o.DrainTimeout, 10*time.Second)
	def(&o.HeartbeatTimeout, 3*o.HeartbeatInterval)
	def(&o.Keepalive.Time, 5*time.Minute)
	def(&o.Keepalive.Timeout, 10*time.Second)
	def(&o.Keepalive.MinTime, 5*time.Second)
	defInt(&o.AckWindow, 128)
	defInt(&o.MaxMessageBytes, 4<<20)
	defInt(&o.ReportsPerSecond, 20)
	defInt(&o.ReportBurst, 200)
	defInt(&o.NodeLimit, 10000)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Registerer == nil {
		reg := prometheus.NewRegistry()
		o.Registerer = reg
		if o.Gatherer == nil {
			o.Gatherer = reg
		}
	}
	if o.Gatherer == nil {
		if g, ok := o.Registerer.(prometheus.Gatherer); ok {
			o.Gatherer = g
		} else {
			o.Gatherer = prometheus.DefaultGatherer
		}
	}
	return o.validate()
}

func (o *Options) validate() error {
	var errs []error
	positive := func(name string, v int64) {
		if v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %d", name, v))
		}
	}
	positive("HeartbeatInterval", int64(o.HeartbeatInterval))
	positive("HelloTimeout", int64(o.HelloTimeout))
	if o.HeartbeatTimeout <= o.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("HeartbeatTimeout (%s) must be longer than HeartbeatInterval (%s): a session is ended when nothing arrived for that long", o.HeartbeatTimeout, o.HeartbeatInterval))
	}
	positive("DrainTimeout", int64(o.DrainTimeout))
	positive("Keepalive.Time", int64(o.Keepalive.Time))
	positive("Keepalive.Timeout", int64(o.Keepalive.Timeout))
	positive("Keepalive.MinTime", int64(o.Keepalive.MinTime))
	positive("AckWindow", int64(o.AckWindow))
	positive("MaxMessageBytes", int64(o.MaxMessageBytes))
	positive("ReportsPerSecond", int64(o.ReportsPerSecond))
	positive("ReportBurst", int64(o.ReportBurst))
	positive("NodeLimit", int64(o.NodeLimit))
	if o.TLSConfig == nil && (o.TLS.CAFile == "" || o.TLS.CertFile == "" || o.TLS.KeyFile == "") {
		errs = append(errs, errors.New("TLS.CAFile, TLS.CertFile and TLS.KeyFile must all be set (the server speaks mTLS only)"))
	}
	return errors.Join(errs...)
}

// serverTLS returns the TLS configuration: TLS 1.2 or newer, client
// certificates verified against the CA. They are required at the TLS layer,
// except with a Bootstrap service: then a client may come without one, and
// the auth interceptor refuses every call but the joining ones
// (UNAUTHENTICATED). Files are reloaded when they change (package
// certreload).
func (o *Options) serverTLS() (*tls.Config, error) {
	clientAuth := tls.RequireAndVerifyClientCert
	if o.Bootstrap != nil {
		clientAuth = tls.VerifyClientCertIfGiven
	}
	if o.TLSConfig != nil {
		cfg := o.TLSConfig.Clone()
		if cfg.ClientAuth != tls.RequireAndVerifyClientCert {
			return nil, errors.New("TLSConfig.ClientAuth must be tls.RequireAndVerifyClientCert")
		}
		cfg.ClientAuth = clientAuth
		if cfg.MinVersion < tls.VersionTLS12 {
			cfg.MinVersion = tls.VersionTLS12
		}
		return cfg, nil
	}
	r, err := certreload.New(certreload.Files{CAFile: o.TLS.CAFile, CertFile: o.TLS.CertFile, KeyFile: o.TLS.KeyFile},
		&tls.Config{ClientAuth: clientAuth, MinVersion: tls.VersionTLS12}, o.Logger.Named("tls"))
	if err != nil {
		return nil, err
	}
	return r.Config(), nil
}

// Revocations is what the server needs of the revocation record
// (revocation.List implements it).
type Revocations interface {
	// Check refuses a revoked node certificate with PERMISSION_DENIED.
	Check(cert *x509.Certificate) error
	// Revoke revokes every certificate node holds, on every replica.
	Revoke(ctx context.Context, node string) (generation int64, at time.Time, err error)
}
