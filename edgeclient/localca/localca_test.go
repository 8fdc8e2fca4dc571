package localca

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"testing"
)

func pairs(host string) (Pair, Pair) {
	ca := Pair{CertFile: "ca.crt", KeyFile: "ca.key", Template: x509.Certificate{Subject: pkix.Name{CommonName: "test CA"}}}
	leaf := Pair{CertFile: "leaf.crt", KeyFile: "leaf.key",
		Template: x509.Certificate{Subject: pkix.Name{CommonName: "leaf"}, DNSNames: []string{host}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		Valid:    func(c *x509.Certificate) bool { return c.VerifyHostname(host) == nil }}
	return ca, leaf
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Ensure issues once and keeps what is still good; a leaf that no longer
// says what it should, or a CA that is gone, is issued again; keys and the
// directory are private to the agent's user.
func TestEnsureIssuesOnlyWhatIsMissingOrWrong(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, leaf := pairs("localhost")
	if err := Ensure(dir, ca, leaf); err != nil {
		t.Fatal(err)
	}
	caPEM, leafPEM := read(t, filepath.Join(dir, "ca.crt")), read(t, filepath.Join(dir, "leaf.crt"))
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "ca.key"): 0o600, filepath.Join(dir, "leaf.key"): 0o600} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, st.Mode().Perm(), err, want)
		}
	}

	if err := Ensure(dir, ca, leaf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, filepath.Join(dir, "ca.crt")), caPEM) || !bytes.Equal(read(t, filepath.Join(dir, "leaf.crt")), leafPEM) {
		t.Fatal("a second Ensure issued certificates that were still good")
	}

	_, other := pairs("edge.example")
	if err := Ensure(dir, ca, other); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, filepath.Join(dir, "ca.crt")), caPEM) {
		t.Error("a leaf for other hosts replaced the CA")
	}
	leafPEM = read(t, filepath.Join(dir, "leaf.crt"))
	cert, _, err := load(dir, other)
	if err != nil || cert.VerifyHostname("edge.example") != nil {
		t.Fatalf("the leaf was not issued again for its new host: %v", err)
	}

	if err := os.Remove(filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(dir, ca, other); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(read(t, filepath.Join(dir, "ca.crt")), caPEM) || bytes.Equal(read(t, filepath.Join(dir, "leaf.crt")), leafPEM) {
		t.Fatal("a lost CA key did not bring a new CA and new leaves")
	}
	caCert, _, err := load(dir, ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	if cert, _, err = load(dir, other); err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "edge.example"}); err != nil {
		t.Errorf("the new leaf does not verify against the new CA: %v", err)
	}
}
