// Package servertest runs a real edgesync sync server for tests: a real
// gRPC server on 127.0.0.1 with real mutual TLS from a fresh CA, and helpers
// to write node and admin certificates and to dial it.
//
//	ctrls := feedtest.New()
//	env := servertest.Start(t, ctrls)
//	conn := env.DialNode(t, "node-a")
//	stream, err := edgesyncv1.NewSyncServiceClient(conn).Sync(t.Context())
//
// The server stops when the test ends (t.Cleanup); Serve's error fails the
// test.
package servertest

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/feed"
	"github.com/edgesync/edgesync/server/pki"
)

// Option changes the server's options before it starts.
type Option func(*server.Options)

// Env is a running server and what a test needs to reach it.
type Env struct {
	Server *server.Server
	// Addr is the server's gRPC address, 127.0.0.1:port.
	Addr string
	// HTTPAddr serves /metrics, /healthz, /readyz and pprof.
	HTTPAddr string
	// CA signed the server's and every test certificate.
	CA *pki.CA
	// CAFile holds CA.CertPEM.
	CAFile string
	// Options are the options the server was built with.
	Options server.Options

	dir  string
	stop func()
}

// CAPEM returns the CA certificate in PEM.
func (e *Env) CAPEM() []byte { return e.CA.CertPEM }

// Start starts a server for ctrls on a free loopback port. If ctrls has a
// SetPublisher(feed.Publisher) method (as feedtest.Controllers does), it is
// called with the server before serving. The server logs to the test log
// (warnings and errors) unless an Option sets a logger.
func Start(t testing.TB, ctrls feed.Controllers, opts ...Option) *Env {
	t.Helper()
	ca, err := pki.NewCA("edgesync-test-ca")
	if err != nil {
		t.Fatalf("servertest: new CA: %v", err)
	}
	serving, err := ca.IssueServer([]string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatalf("servertest: issue server certificate: %v", err)
	}
	cert, err := serving.TLSCertificate()
	if err != nil {
		t.Fatalf("servertest: server certificate: %v", err)
	}
	dir := t.TempDir()
	env := &Env{CA: ca, CAFile: filepath.Join(dir, "ca.crt"), dir: dir}
	if err := os.WriteFile(env.CAFile, ca.CertPEM, 0o644); err != nil {
		t.Fatalf("servertest: write CA: %v", err)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("servertest: listen: %v", err)
	}
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		lis.Close()
		t.Fatalf("servertest: listen HTTP: %v", err)
	}
	env.Addr, env.HTTPAddr = lis.Addr().String(), httpLis.Addr().String()

	o := server.Options{
		ServerID: "test-server",
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientCAs:    ca.Pool(),
			ClientAuth:   tls.RequireAndVerifyClientCert,
			MinVersion:   tls.VersionTLS12,
		},
		Logger:       zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		HTTPListener: httpLis,
		EnablePprof:  true,
	}
	for _, opt := range opts {
		opt(&o)
	}
	env.Options = o
	srv, err := server.New(o)
	if err != nil {
		lis.Close()
		httpLis.Close()
		t.Fatalf("servertest: new server: %v", err)
	}
	env.Server = srv
	if p, ok := ctrls.(interface{ SetPublisher(feed.Publisher) }); ok {
		p.SetPublisher(srv)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis, ctrls) }()
	env.stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("servertest: Serve: %v", err)
		}
	})
	t.Cleanup(env.stop)
	return env
}

// Stop shuts the server down as on SIGTERM and waits until Serve returns.
// Tests that do not call it get it at cleanup.
func (e *Env) Stop() { e.stop() }

// NodeCert writes a certificate and key for node name into a temporary
// directory and returns their paths.
func (e *Env) NodeCert(t testing.TB, name string) (certFile, keyFile string) {
	t.Helper()
	kp, err := e.CA.IssueNode(name)
	if err != nil {
		t.Fatalf("servertest: issue node certificate: %v", err)
	}
	return e.write(t, "node-"+name, kp)
}

// AdminCert writes an admin certificate and key and returns their paths.
func (e *Env) AdminCert(t testing.TB, name string) (certFile, keyFile string) {
	t.Helper()
	kp, err := e.CA.IssueAdmin(name)
	if err != nil {
		t.Fatalf("servertest: issue admin certificate: %v", err)
	}
	return e.write(t, "admin-"+name, kp)
}

func (e *Env) write(t testing.TB, base string, kp *pki.KeyPair) (string, string) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key")
	if err := kp.WriteFiles(certFile, keyFile, true); err != nil {
		t.Fatalf("servertest: %v", err)
	}
	return certFile, keyFile
}

// NodeTLS returns a client TLS configuration for node name.
func (e *Env) NodeTLS(t testing.TB, name string) *tls.Config {
	t.Helper()
	kp, err := e.CA.IssueNode(name)
	if err != nil {
		t.Fatalf("servertest: issue node certificate: %v", err)
	}
	return e.clientTLS(t, kp)
}

// AdminTLS returns a client TLS configuration with an admin certificate.
func (e *Env) AdminTLS(t testing.TB) *tls.Config {
	t.Helper()
	kp, err := e.CA.IssueAdmin("test-admin")
	if err != nil {
		t.Fatalf("servertest: issue admin certificate: %v", err)
	}
	return e.clientTLS(t, kp)
}

func (e *Env) clientTLS(t testing.TB, kp *pki.KeyPair) *tls.Config {
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatalf("servertest: client certificate: %v", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: e.CA.Pool(), MinVersion: tls.VersionTLS12}
}

// Dial returns a client connection using cfg, closed when the test ends.
func (e *Env) Dial(t testing.TB, cfg *tls.Config, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(e.Addr, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(cfg))}, opts...)...)
	if err != nil {
		t.Fatalf("servertest: dial %s: %v", e.Addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// DialNode dials as node name.
func (e *Env) DialNode(t testing.TB, name string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return e.Dial(t, e.NodeTLS(t, name), opts...)
}

// DialAdmin dials with an admin certificate.
func (e *Env) DialAdmin(t testing.TB, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return e.Dial(t, e.AdminTLS(t), opts...)
}
