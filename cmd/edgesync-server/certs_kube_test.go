package main

import (
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/pki"
)

// TestCertsInKube: certs init --kube keeps the CA's key in a Secret only,
// and certs admin --kube signs with it.
func TestCertsInKube(t *testing.T) {
	testcluster.RESTConfig(t)
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	kubeconfig := os.Getenv(testcluster.KubeconfigEnv)
	dir := t.TempDir()
	kube := []string{"--kube", "--kubeconfig", kubeconfig, "--namespace", ns, "--secret", "ca", "--dir", dir}

	if out, err := runCerts(t, append([]string{"init", "--hosts", "edgesync.example.com"}, kube...)...); err != nil {
		t.Fatalf("certs init --kube: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.key")); !os.IsNotExist(err) {
		t.Fatalf("certs init --kube wrote ca.key (%v); the key belongs in the Secret only", err)
	}
	s, err := client.CoreV1().Secrets(ns).Get(t.Context(), "ca", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the CA Secret: %v", err)
	}
	if _, err := pki.ParseCA(s.Data["tls.crt"], s.Data["tls.key"]); err != nil {
		t.Fatalf("the CA Secret does not hold a CA: %v", err)
	}
	ca := readCert(t, filepath.Join(dir, "ca.crt"))
	if server := readCert(t, filepath.Join(dir, "server.crt")); server.CheckSignatureFrom(ca) != nil {
		t.Fatal("server.crt is not signed by ca.crt")
	}

	if out, err := runCerts(t, append([]string{"admin", "ops"}, kube...)...); err != nil {
		t.Fatalf("certs admin --kube: %v\n%s", err, out)
	}
	admin := readCert(t, filepath.Join(dir, "admin-ops.crt"))
	if admin.CheckSignatureFrom(ca) != nil || !pki.IsAdmin(admin) {
		t.Fatalf("admin-ops.crt: signed by the CA %v, admin %v", admin.CheckSignatureFrom(ca) == nil, pki.IsAdmin(admin))
	}
	if out, err := runCerts(t, append([]string{"init"}, kube...)...); err == nil {
		t.Fatalf("a second certs init --kube replaced the CA:\n%s", out)
	}
}
