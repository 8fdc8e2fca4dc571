package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/controllers/router"
)

// RouterConfig configures KubeEdge's router: Rules and RuleEndpoints
// (rules.kubeedge.io/v1, whose CRDs must be installed) route application
// messages between callers of the REST port and applications on edge
// nodes (MQTT topics, HTTP services). See package controllers/router.
type RouterConfig struct {
	// ListenAddress serves the REST port over TLS; empty turns the router
	// off. KubeEdge's router port is 9443.
	ListenAddress string `json:"listenAddress"`
	// CertFile and KeyFile are its serving certificate; default the
	// server's (tls.certFile, tls.keyFile).
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
	// AdvertiseAddress is where other replicas reach this REST port
	// (host:port) to forward calls for the nodes this replica holds;
	// default the listen address, with $POD_IP when it listens on every
	// address. Recorded on the replica Lease (ownership.namespace).
	AdvertiseAddress string `json:"advertiseAddress"`
	// PeerCAFile verifies other replicas' REST certificates when
	// forwarding; default tls.caFile. PeerServerName is the name their
	// certificates carry; default the host of their address.
	PeerCAFile     string `json:"peerCAFile"`
	PeerServerName string `json:"peerServerName"`
	// MessageTTL is how long a message for an edge may wait for it.
	MessageTTL metav1.Duration `json:"messageTTL"`
	// NodeBuffer bounds the messages waiting for (or unanswered by) one
	// node: a call that finds it full is refused with 503.
	NodeBuffer int `json:"nodeBuffer"`
	// DeliveryWait is how long a call to an eventbus target waits for the
	// edge to publish before it is answered 202 (queued).
	DeliveryWait metav1.Duration `json:"deliveryWait"`
	// RequestTimeout is how long a call to a servicebus target waits for
	// the application's answer before it is answered 504.
	RequestTimeout metav1.Duration `json:"requestTimeout"`
	// MaxBodyBytes bounds a call's body.
	MaxBodyBytes int64 `json:"maxBodyBytes"`
}

func defaultRouterConfig() RouterConfig {
	d := func(v time.Duration) metav1.Duration { return metav1.Duration{Duration: v} }
	return RouterConfig{
		MessageTTL: d(router.DefaultMessageTTL), NodeBuffer: router.DefaultNodeBuffer,
		DeliveryWait: d(router.DefaultDeliveryWait), RequestTimeout: d(router.DefaultRequestTimeout),
		MaxBodyBytes: router.DefaultMaxBodyBytes,
	}
}

// validateRouter checks the router section.
func (c *Config) validateRouter(bad func(field, format string, args ...any)) {
	rc := c.Router
	if rc.ListenAddress == "" {
		return
	}
	if _, _, err := net.SplitHostPort(rc.ListenAddress); err != nil {
		bad("router.listenAddress", "want host:port, got %q", rc.ListenAddress)
	}
	if rc.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(rc.AdvertiseAddress); err != nil {
			bad("router.advertiseAddress", "want host:port, got %q", rc.AdvertiseAddress)
		}
	}
	if (rc.CertFile == "") != (rc.KeyFile == "") {
		bad("router.certFile", "give both router.certFile and router.keyFile, or neither (the server's certificate is used)")
	}
	if rc.MessageTTL.Duration <= 0 || rc.DeliveryWait.Duration <= 0 || rc.RequestTimeout.Duration <= 0 {
		bad("router", "messageTTL, deliveryWait and requestTimeout must be positive durations")
	}
	if rc.NodeBuffer <= 0 || rc.MaxBodyBytes <= 0 {
		bad("router", "nodeBuffer and maxBodyBytes must be at least 1")
	}
	if rc.MaxBodyBytes > 15<<20 {
		// Deliveries carry the body on the edge's stream, whose messages
		// the edge accepts up to 16 MiB.
		bad("router.maxBodyBytes", "must be at most 15 MiB (the edge accepts messages up to 16 MiB); got %d", rc.MaxBodyBytes)
	}
}

// advertise is where other replicas reach this REST port.
func (rc RouterConfig) advertise(lis net.Listener) string {
	if rc.AdvertiseAddress != "" {
		return rc.AdvertiseAddress
	}
	host, port, _ := net.SplitHostPort(lis.Addr().String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = os.Getenv("POD_IP")
	}
	if host == "" {
		return ""
	}
	return net.JoinHostPort(host, port)
}

func (rc RouterConfig) options() *router.Options {
	return &router.Options{
		MessageTTL: rc.MessageTTL.Duration, NodeBuffer: rc.NodeBuffer, DeliveryWait: rc.DeliveryWait.Duration,
		RequestTimeout: rc.RequestTimeout.Duration, MaxBodyBytes: rc.MaxBodyBytes,
	}
}

// routerTLS returns the REST port's serving configuration and the client
// configuration for forwarding to other replicas.
func routerTLS(cfg Config) (serving, peers *tls.Config, err error) {
	certFile, keyFile := cfg.Router.CertFile, cfg.Router.KeyFile
	if certFile == "" {
		certFile, keyFile = cfg.TLS.CertFile, cfg.TLS.KeyFile
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("router serving certificate: %w", err)
	}
	caFile := cfg.Router.PeerCAFile
	if caFile == "" {
		caFile = cfg.TLS.CAFile
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("router peer CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, fmt.Errorf("router peer CA %s: no PEM certificate", caFile)
	}
	serving = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	peers = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: cfg.Router.PeerServerName}
	return serving, peers, nil
}

// serveHTTPS serves h on lis over TLS until ctx ends, then shuts down
// within 5 s. what names the port in errors. Upgraded connections (the
// kubelet API's exec and port-forward) are hijacked: Shutdown does not wait
// for them; ending the sessions ends their tunnels.
func serveHTTPS(ctx context.Context, what string, lis net.Listener, h http.Handler, tlsCfg *tls.Config, log *zap.Logger) error {
	srv := &http.Server{Handler: h, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: zap.NewStdLog(log.WithOptions(zap.IncreaseLevel(zap.WarnLevel)))}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(lis, "", "") }()
	select {
	case err := <-done:
		return fmt.Errorf("%s: %w", what, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
