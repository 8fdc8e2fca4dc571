package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/edgesync/edgesync/server/pki"
)

func csrPEM(t *testing.T, subject pkix.Name, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: subject}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSignNodeCSR(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		subject pkix.Name
		key     crypto.Signer
	}{
		{"ECDSA P-256", pkix.Name{CommonName: "system:node:edge-1"}, p256},
		{"RSA 2048 with the nodes group", pkix.Name{CommonName: "system:node:edge-1", Organization: []string{pki.NodeOrganization}}, rsa2048},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csr, err := pki.ParseNodeCSR(csrPEM(t, tc.subject, tc.key), "edge-1")
			if err != nil {
				t.Fatal(err)
			}
			certPEM, notAfter, err := ca.SignNode(csr, "edge-1", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			block, _ := pem.Decode(certPEM)
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("signed certificate does not verify as a client certificate: %v", err)
			}
			if name, ok := pki.NodeName(cert); !ok || name != "edge-1" || pki.IsAdmin(cert) {
				t.Fatalf("signed certificate identifies as %q (node %v, admin %v)", cert.Subject, ok, pki.IsAdmin(cert))
			}
			if !cert.NotAfter.Equal(notAfter) {
				t.Fatalf("NotAfter %s, reported %s", cert.NotAfter, notAfter)
			}
		})
	}
	t.Run("lifetime capped at the CA's", func(t *testing.T) {
		csr, err := pki.ParseNodeCSR(csrPEM(t, pkix.Name{CommonName: "system:node:edge-1"}, p256), "edge-1")
		if err != nil {
			t.Fatal(err)
		}
		_, notAfter, err := ca.SignNode(csr, "edge-1", 100*365*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if notAfter.After(ca.Cert.NotAfter) {
			t.Fatalf("node certificate outlives its CA: %s > %s", notAfter, ca.Cert.NotAfter)
		}
	})
	t.Run("another node", func(t *testing.T) {
		_, err := pki.ParseNodeCSR(csrPEM(t, pkix.Name{CommonName: "system:node:edge-2"}, p256), "edge-1")
		if !errors.Is(err, pki.ErrOtherNode) {
			t.Fatalf("CSR for edge-2 checked as edge-1: %v, want pki.ErrOtherNode", err)
		}
	})
	t.Run("admin organization", func(t *testing.T) {
		_, err := pki.ParseNodeCSR(csrPEM(t, pkix.Name{CommonName: "system:node:edge-1", Organization: []string{pki.AdminOrganization}}, p256), "edge-1")
		if !errors.Is(err, pki.ErrBadCSR) || errors.Is(err, pki.ErrOtherNode) {
			t.Fatalf("CSR asking for the admin organization: %v, want pki.ErrBadCSR", err)
		}
	})
}
