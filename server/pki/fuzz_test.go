package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/edgesync/edgesync/server/pki"
)

// FuzzParseCA: PEM from a Secret or a file either makes a CA that signs or
// is refused with an error, whatever it holds.
func FuzzParseCA(f *testing.F) {
	ca, err := pki.NewCA("fuzz-ca")
	if err != nil {
		f.Fatal(err)
	}
	kp := ca.KeyPair()
	f.Add(kp.CertPEM, kp.KeyPEM)
	node, err := ca.IssueNode("edge-1")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(node.CertPEM, node.KeyPEM) // not a CA
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		got, err := pki.ParseCA(certPEM, keyPEM)
		if err != nil {
			return
		}
		if !got.Cert.IsCA {
			t.Fatal("ParseCA accepted a certificate that is not a CA")
		}
		if _, err := got.IssueNode("edge-1"); err != nil {
			t.Fatalf("a parsed CA cannot issue: %v", err)
		}
	})
}

// FuzzParseNodeCSR: a joining node's CSR is accepted only for its own name,
// and never panics the server.
func FuzzParseNodeCSR(f *testing.F) {
	csrPEM, err := nodeCSR("edge-1")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csrPEM, "edge-1")
	f.Add(csrPEM, "edge-2")
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"), "edge-1")
	f.Fuzz(func(t *testing.T, csrPEM []byte, node string) {
		csr, err := pki.ParseNodeCSR(csrPEM, node)
		if err != nil {
			if !errors.Is(err, pki.ErrBadCSR) && !errors.Is(err, pki.ErrOtherNode) {
				t.Fatalf("refused without saying why in a way the caller can map: %v", err)
			}
			return
		}
		if csr.Subject.CommonName != pki.NodeCNPrefix+node {
			t.Fatalf("accepted a CSR for %q as node %q", csr.Subject.CommonName, node)
		}
	})
}

// nodeCSR makes the CSR a joining node sends.
func nodeCSR(node string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: pki.NodeCNPrefix + node}}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}
