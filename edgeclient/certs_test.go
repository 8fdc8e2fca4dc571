package edgeclient

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/edgesync/edgesync/server/pki"
)

func TestCertLoaderFollowsTheFiles(t *testing.T) {
	ca, err := pki.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "n.crt"), filepath.Join(dir, "n.key")
	issue := func() string {
		kp, err := ca.IssueNode("edge-1")
		if err != nil {
			t.Fatal(err)
		}
		if err := kp.WriteFiles(certFile, keyFile, true); err != nil {
			t.Fatal(err)
		}
		c, err := kp.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.String()
	}
	serial := func(l *certLoader) string {
		t.Helper()
		c, err := l.get()
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf.SerialNumber.String()
	}

	first := issue()
	l, err := newCertLoader(certFile, keyFile, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := serial(l); got != first {
		t.Fatalf("serial %s, want %s", got, first)
	}
	second := issue()
	if got := serial(l); got != second {
		t.Errorf("after rotation: serial %s, want the new %s", got, second)
	}
	// Half-way through a rotation the files do not match: keep the
	// current certificate rather than fail the handshake.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := serial(l); got != second {
		t.Errorf("with broken files: serial %s, want the previous %s", got, second)
	}
	third := issue()
	if got := serial(l); got != third {
		t.Errorf("after the rotation completed: serial %s, want %s", got, third)
	}

	if _, err := newCertLoader(filepath.Join(dir, "missing.crt"), keyFile, zaptest.NewLogger(t)); err == nil {
		t.Error("a missing certificate file was accepted")
	}
}
