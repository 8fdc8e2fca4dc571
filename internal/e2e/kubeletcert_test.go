package e2e_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/pki"
)

// TestKubeletEndpointServesARotatedCertificate replaces the server's
// certificate files while it runs (as a renewed Secret mounted into the
// pod would): the kubelet port serves the new certificate to the next
// connection, without a restart, as the gRPC port does.
func TestKubeletEndpointServesARotatedCertificate(t *testing.T) {
	testcluster.RESTConfig(t) // skips or fails when there is no devcluster
	clientCA := os.Getenv(kubeletClientCAEnv)
	if clientCA == "" {
		t.Fatalf("%s is not set: run the tests under a devcluster built from this tree (make devcluster)", kubeletClientCAEnv)
	}
	// A known port: no edge node needs to advertise it.
	kubeletAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	in := install(t, "--kubelet-listen", kubeletAddr, "--kubelet-client-ca", clientCA)
	certFile, keyFile := filepath.Join(in.pki, "server.crt"), filepath.Join(in.pki, "server.key")
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(in.pki, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(caPEM)
	// served is the serial of the certificate a new connection to the
	// kubelet port gets (verified against the CA, as the apiserver would).
	served := func() (string, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", kubeletAddr,
			&tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
		if err != nil {
			return "", err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
	}
	fileSerial := func() string {
		t.Helper()
		b, err := os.ReadFile(certFile)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert.SerialNumber.String()
	}

	before := fileSerial()
	eventually(t, 30*time.Second, "the kubelet port to serve the server certificate", func() error {
		got, err := served()
		if err == nil && got != before {
			err = fmt.Errorf("serves serial %s, want %s", got, before)
		}
		return err
	}, in.server)

	// A new certificate from the same CA, written over the old files.
	ca, err := pki.LoadCA(filepath.Join(in.pki, "ca.crt"), filepath.Join(in.pki, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := ca.IssueServer([]string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := kp.WriteFiles(certFile, keyFile, true); err != nil {
		t.Fatal(err)
	}
	after := fileSerial()
	if after == before {
		t.Fatal("the new certificate has the old serial")
	}
	eventually(t, 30*time.Second, "the kubelet port to serve the rotated certificate", func() error {
		got, err := served()
		if err == nil && got != after {
			err = fmt.Errorf("serves serial %s, want the new %s", got, after)
		}
		return err
	}, in.server)
	if err := in.server.exited(); err != nil {
		t.Fatalf("the server did not keep running: %v", err)
	}
}
