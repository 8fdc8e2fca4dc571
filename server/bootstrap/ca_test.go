package bootstrap_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/pki"
)

// TestCAFromSecret: node certificates are signed by the CA kept in the
// Secret edgesync-ca of the server's namespace, which the server reads as
// its ServiceAccount; no other Secret there is readable.
func TestCAFromSecret(t *testing.T) {
	const namespace, name = "edgesync-system", "edgesync-ca"
	var asServer kubernetes.Interface
	e := start(t, func(c *bootstrap.Config) {
		asServer = c.Client
		c.SigningCA = bootstrap.SecretCA(c.Client, namespace, name)
	})
	ca, err := pki.NewCA("edgesync-ca-in-a-secret")
	if err != nil {
		t.Fatal(err)
	}
	secrets := e.admin.CoreV1().Secrets(namespace)
	secret := bootstrap.CASecret(ca, namespace, name)
	if _, err := secrets.Create(t.Context(), secret, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		_, err = secrets.Update(t.Context(), secret, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = secrets.Delete(context.Background(), name, metav1.DeleteOptions{}) })

	token, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour})
	node := testcluster.UniqueName("edge")
	resp, err := edgesyncv1.NewBootstrapServiceClient(e.anonymous(t)).IssueCertificate(t.Context(), &edgesyncv1.IssueCertificateRequest{
		Token: token, NodeName: node, CsrPem: csrFor(t, "system:node:"+node, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(resp.GetCertificatePem())
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the certificate is not signed by the Secret's CA: %v", err)
	}

	_, err = bootstrap.SecretCA(asServer, namespace, "not-the-ca")(t.Context())
	if !apierrors.IsForbidden(err) {
		t.Fatalf("reading another Secret of %s as the server: %v, want Forbidden", namespace, err)
	}
}
