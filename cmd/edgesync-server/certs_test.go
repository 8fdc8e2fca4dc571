package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgesync/edgesync/server/pki"
)

func runCerts(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"certs"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestCertsMakesAWorkingPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := runCerts(t, "init", "--dir", dir, "--hosts", "edgesync.example.com,10.1.2.3"); err != nil {
		t.Fatalf("certs init: %v", err)
	}
	if _, err := runCerts(t, "node", "edge-7", "--dir", dir); err != nil {
		t.Fatalf("certs node: %v", err)
	}
	if _, err := runCerts(t, "admin", "ops", "--dir", dir); err != nil {
		t.Fatalf("certs admin: %v", err)
	}

	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	server := readCert(t, filepath.Join(dir, "server.crt"))
	for _, host := range []string{"edgesync.example.com", "10.1.2.3"} {
		if _, err := server.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("server certificate does not verify for %s: %v", host, err)
		}
	}
	client := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	node := readCert(t, filepath.Join(dir, "node-edge-7.crt"))
	if _, err := node.Verify(client); err != nil {
		t.Errorf("node certificate: %v", err)
	}
	if name, ok := pki.NodeName(node); !ok || name != "edge-7" {
		t.Errorf("node certificate names node %q", name)
	}
	admin := readCert(t, filepath.Join(dir, "admin-ops.crt"))
	if _, err := admin.Verify(client); err != nil || !pki.IsAdmin(admin) {
		t.Errorf("admin certificate: verify %v, admin %v", err, pki.IsAdmin(admin))
	}
	for _, key := range []string{"ca.key", "server.key", "node-edge-7.key", "admin-ops.key"} {
		info, err := os.Stat(filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		if perm := info.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %o, want 600", key, perm)
		}
	}
}

func TestCertsRefusesToOverwriteWithoutForce(t *testing.T) {
	dir := t.TempDir()
	if _, err := runCerts(t, "init", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if _, err := runCerts(t, "init", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second init: %v, want an error that mentions --force", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if !bytes.Equal(before, after) {
		t.Fatal("the CA was replaced without --force")
	}
	if _, err := runCerts(t, "init", "--dir", dir, "--force"); err != nil {
		t.Fatalf("init --force: %v", err)
	}
	replaced, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if bytes.Equal(before, replaced) {
		t.Fatal("init --force kept the old CA")
	}
}

func TestCertsNodeWithoutCAExplainsWhatToDo(t *testing.T) {
	dir := t.TempDir()
	_, err := runCerts(t, "node", "edge-1", "--dir", dir)
	if err == nil || !strings.Contains(err.Error(), "certs init") {
		t.Fatalf("node without a CA: %v, want an error that says to run certs init", err)
	}
	if _, err := runCerts(t, "node", "--dir", dir); err == nil {
		t.Fatal("node without a name succeeded")
	}
}
