package revocation_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/edgesync/edgesync/server/pki"
	"github.com/edgesync/edgesync/server/revocation"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func nodeCert(t *testing.T, ca *pki.CA, node string, generation int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.SignNodeGeneration(csr, node, time.Hour, generation)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// A revocation refuses the node's certificates of older generations, and
// only the node's: a certificate signed after it (at the new generation)
// and other nodes' certificates still work; every List sees it, and tells
// its callback which node to end the session of.
func TestRevokeRefusesOlderGenerations(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	list := revocation.New(client, "edgesync-system", nil)
	ended := make(chan string, 4)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- list.Run(ctx, func(node string, reason error) { ended <- node + ": " + reason.Error() })
	}()
	defer func() { cancel(); <-done }()

	old := nodeCert(t, ca, "edge-1", 0)
	other := nodeCert(t, ca, "edge-2", 0)
	for !list.Synced() {
		select {
		case <-time.After(10 * time.Millisecond):
		case err := <-done:
			t.Fatal(err)
		}
	}
	if err := list.Check(old); err != nil {
		t.Fatalf("a node never revoked was refused: %v", err)
	}
	gen, _, err := list.Revoke(t.Context(), "edge-1")
	if err != nil || gen != 1 {
		t.Fatalf("Revoke: generation %d, %v; want 1", gen, err)
	}
	select {
	case got := <-ended:
		if !strings.HasPrefix(got, "edge-1: ") || !strings.Contains(got, "was revoked by an operator") {
			t.Fatalf("session ended with %q", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the List did not report the revocation")
	}
	st := status.Convert(list.Check(old))
	if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), `node "edge-1" was revoked`) || !strings.Contains(st.Message(), "token create --node edge-1") {
		t.Fatalf("old certificate after the revocation: %v, want PERMISSION_DENIED saying what to do", st.Err())
	}
	if err := list.Check(nodeCert(t, ca, "edge-1", gen)); err != nil {
		t.Fatalf("a certificate signed after the revocation was refused: %v", err)
	}
	if err := list.Check(other); err != nil {
		t.Fatalf("another node's certificate was refused: %v", err)
	}
	// Revoking again raises the generation again.
	if gen, _, err := list.Revoke(t.Context(), "edge-1"); err != nil || gen != 2 {
		t.Fatalf("second Revoke: generation %d, %v; want 2", gen, err)
	}
}
