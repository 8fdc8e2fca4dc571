package certreload_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/pki"
)

// pkiDir is the server's PKI on disk, as an operator keeps it.
type pkiDir struct {
	dir                       string
	caFile, certFile, keyFile string
}

func newPKIDir(t *testing.T) *pkiDir {
	dir := t.TempDir()
	return &pkiDir{dir: dir, caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "server.crt"), keyFile: filepath.Join(dir, "server.key")}
}

func (p *pkiDir) writeBundle(t *testing.T, cas ...*pki.CA) {
	t.Helper()
	var bundle []byte
	for _, ca := range cas {
		bundle = append(bundle, ca.CertPEM...)
	}
	tmp := p.caFile + ".new"
	if err := os.WriteFile(tmp, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p.caFile); err != nil {
		t.Fatal(err)
	}
}

// writeServing replaces the serving certificate with a new one from ca and
// returns its serial number.
func (p *pkiDir) writeServing(t *testing.T, ca *pki.CA) *big.Int {
	t.Helper()
	kp, err := ca.IssueServer([]string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if err := kp.WriteFiles(p.certFile, p.keyFile, true); err != nil {
		t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return cert.Leaf.SerialNumber
}

func nodeFiles(t *testing.T, ca *pki.CA, dir, node string) (certFile, keyFile string) {
	t.Helper()
	kp, err := ca.IssueNode(node)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, node+".crt"), filepath.Join(dir, node+".key")
	if err := kp.WriteFiles(certFile, keyFile, true); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// served handshakes as node (certificate from ca) trusting roots and
// returns the serial of the certificate the server presented.
func served(t *testing.T, addr string, roots *x509.CertPool, ca *pki.CA, node string) (*big.Int, error) {
	t.Helper()
	kp, err := ca.IssueNode(node)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// TLS 1.3 reports a refused client certificate on the first read.
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return nil, err
	}
	return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// session runs an edgeclient for node until the test ends.
func session(t *testing.T, addr, caFile, certFile, keyFile, node string) *edgeclient.Client {
	t.Helper()
	c, err := edgeclient.New(edgeclient.Config{Server: addr, CAFile: caFile, CertFile: certFile, KeyFile: keyFile, NodeName: node, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		c.Close()
	})
	if _, err := c.WaitFor(t.Context(), func(s edgeclient.State) bool { return s.Synced }); err != nil {
		t.Fatal(err)
	}
	return c
}

// stillServed checks that c's first session is open and answers a report.
func stillServed(t *testing.T, c *edgeclient.Client) {
	t.Helper()
	r, err := c.RegisterNode(edgeclient.NodeRegistration{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(t.Context()); err != nil {
		t.Fatalf("report on the old session: %v", err)
	}
	if st := c.State(); st.Connections != 1 || !st.Connected {
		t.Fatalf("old session: %d connections, connected %v; want the first session still open", st.Connections, st.Connected)
	}
}

func startWithFiles(t *testing.T, p *pkiDir) *servertest.Env {
	return servertest.Start(t, feedtest.New(), func(o *server.Options) {
		o.TLSConfig = nil
		o.TLS = server.TLSFiles{CAFile: p.caFile, CertFile: p.certFile, KeyFile: p.keyFile}
	})
}

func TestReplacedServerCertificateServedToNewConnections(t *testing.T) {
	ca, err := pki.NewCA("ca-1")
	if err != nil {
		t.Fatal(err)
	}
	p := newPKIDir(t)
	p.writeBundle(t, ca)
	firstSerial := p.writeServing(t, ca)
	env := startWithFiles(t, p)

	certFile, keyFile := nodeFiles(t, ca, t.TempDir(), "edge-1")
	old := session(t, env.Addr, p.caFile, certFile, keyFile, "edge-1")
	if got, err := served(t, env.Addr, ca.Pool(), ca, "probe"); err != nil || got.Cmp(firstSerial) != 0 {
		t.Fatalf("served serial %v (%v), want the first certificate %v", got, err, firstSerial)
	}

	secondSerial := p.writeServing(t, ca)
	if got, err := served(t, env.Addr, ca.Pool(), ca, "probe"); err != nil || got.Cmp(secondSerial) != 0 {
		t.Fatalf("after replacing the files a new connection got serial %v (%v), want the new certificate %v", got, err, secondSerial)
	}
	stillServed(t, old)
}

// TestCARotation follows the README's procedure: a bundle of the old and
// the new CA accepts node certificates of both, the serving certificate
// moves to the new CA, and dropping the old CA refuses its certificates
// on new connections only.
func TestCARotation(t *testing.T) {
	oldCA, err := pki.NewCA("ca-old")
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := pki.NewCA("ca-new")
	if err != nil {
		t.Fatal(err)
	}
	p := newPKIDir(t)
	p.writeBundle(t, oldCA)
	p.writeServing(t, oldCA)
	env := startWithFiles(t, p)
	edgeDir := t.TempDir()
	certFile, keyFile := nodeFiles(t, oldCA, edgeDir, "edge-old")
	oldSession := session(t, env.Addr, p.caFile, certFile, keyFile, "edge-old")

	// 1. Both CAs in the bundle; 2. the serving certificate from the new CA.
	p.writeBundle(t, oldCA, newCA)
	newSerial := p.writeServing(t, newCA)
	both := x509.NewCertPool()
	both.AddCert(oldCA.Cert)
	both.AddCert(newCA.Cert)
	for _, ca := range []*pki.CA{oldCA, newCA} {
		if got, err := served(t, env.Addr, both, ca, "edge-probe"); err != nil || got.Cmp(newSerial) != 0 {
			t.Fatalf("node certificate from %s during the rotation: serial %v, %v; want accepted and the new serving certificate", ca.Cert.Subject.CommonName, got, err)
		}
	}

	// 3. The old CA leaves the bundle: its certificates are refused on new
	// connections, the session that started before carries on.
	p.writeBundle(t, newCA)
	if _, err := served(t, env.Addr, newCA.Pool(), oldCA, "edge-probe"); err == nil {
		t.Fatal("a node certificate from the removed CA was accepted")
	}
	if _, err := served(t, env.Addr, newCA.Pool(), newCA, "edge-probe"); err != nil {
		t.Fatalf("a node certificate from the new CA: %v", err)
	}
	stillServed(t, oldSession)

	// A half-written file keeps the last good configuration.
	if err := os.WriteFile(p.certFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	conn := env.Dial(t, tlsFor(t, newCA, "edge-probe"))
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.OK {
		t.Fatalf("health check while the certificate file is broken: %v, want the previous certificate served", err)
	}
}

func tlsFor(t *testing.T, ca *pki.CA, node string) *tls.Config {
	t.Helper()
	kp, err := ca.IssueNode(node)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}
