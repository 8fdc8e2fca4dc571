package certreload

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgesync/edgesync/server/pki"
)

// BenchmarkUnchangedFiles is what every handshake pays to notice that the
// files did not change (three stats).
func BenchmarkUnchangedFiles(b *testing.B) {
	ca, err := pki.NewCA("bench")
	if err != nil {
		b.Fatal(err)
	}
	kp, err := ca.IssueServer([]string{"127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	files := Files{CAFile: filepath.Join(dir, "ca.crt"), CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key")}
	if err := os.WriteFile(files.CAFile, ca.CertPEM, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := kp.WriteFiles(files.CertFile, files.KeyFile, true); err != nil {
		b.Fatal(err)
	}
	r, err := New(files, &tls.Config{MinVersion: tls.VersionTLS12}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		r.current()
	}
}
