package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgesync/edgesync/server/pki"
)

func parse(t *testing.T, kp *pki.KeyPair) *x509.Certificate {
	t.Helper()
	pair, err := kp.TLSCertificate()
	if err != nil {
		t.Fatalf("issued pair does not load: %v", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestIssuedCertificatesVerifyAndCarryIdentity(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	node, err := ca.IssueNode("edge-1")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.IssueAdmin("alice")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.IssueServer([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}

	clientOpts := x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	nodeCert := parse(t, node)
	if _, err := nodeCert.Verify(clientOpts); err != nil {
		t.Fatalf("node certificate does not verify as a client: %v", err)
	}
	if name, ok := pki.NodeName(nodeCert); !ok || name != "edge-1" {
		t.Fatalf("NodeName = %q, %v; want edge-1", name, ok)
	}
	if pki.IsAdmin(nodeCert) {
		t.Fatal("a node certificate must not be an admin")
	}

	adminCert := parse(t, admin)
	if _, err := adminCert.Verify(clientOpts); err != nil {
		t.Fatalf("admin certificate does not verify as a client: %v", err)
	}
	if !pki.IsAdmin(adminCert) {
		t.Fatal("admin certificate is not recognised as admin")
	}
	if _, ok := pki.NodeName(adminCert); ok {
		t.Fatal("an admin certificate must not name a node")
	}

	serverCert := parse(t, server)
	if _, err := serverCert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "127.0.0.1"}); err != nil {
		t.Fatalf("server certificate does not verify for 127.0.0.1: %v", err)
	}

	other, err := pki.NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodeCert.Verify(x509.VerifyOptions{Roots: other.Pool(), KeyUsages: clientOpts.KeyUsages}); err == nil {
		t.Fatal("a certificate verified against a CA that did not sign it")
	}
}

func TestInvalidNamesAreRefused(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", "a b", "system:node:x", "a/b"} {
		if _, err := ca.IssueNode(name); err == nil {
			t.Errorf("IssueNode(%q) succeeded", name)
		}
	}
	if _, err := ca.IssueServer(nil); err == nil {
		t.Error("IssueServer without hosts succeeded")
	}
}

func TestWriteFilesRefusesOverwriteAndProtectsKeys(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := ca.KeyPair().WriteFiles(certFile, keyFile, false); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %o, want 600", perm)
	}
	if err := ca.KeyPair().WriteFiles(certFile, keyFile, false); !errors.Is(err, pki.ErrExists) {
		t.Fatalf("second write without overwrite: %v, want ErrExists", err)
	}

	loaded, err := pki.LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	node, err := loaded.IssueNode("edge-2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parse(t, node).Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate from the reloaded CA does not verify against the original: %v", err)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
}
