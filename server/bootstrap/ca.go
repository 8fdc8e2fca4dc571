package bootstrap

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/server/pki"
)

// FileCA returns a Config.SigningCA that reads the CA from PEM files at
// every signature, so that replaced files are used at once.
func FileCA(certFile, keyFile string) func(context.Context) (*pki.CA, error) {
	return func(context.Context) (*pki.CA, error) { return pki.LoadCA(certFile, keyFile) }
}

// SecretCA returns a Config.SigningCA that reads the CA from a
// kubernetes.io/tls Secret (tls.crt, tls.key) at every signature, as
// `edgesync-server certs init --kube` creates it: the key then never lies
// on a disk.
func SecretCA(client kubernetes.Interface, namespace, name string) func(context.Context) (*pki.CA, error) {
	return func(ctx context.Context) (*pki.CA, error) {
		s, err := client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read CA Secret %s/%s: %w", namespace, name, err)
		}
		ca, err := pki.ParseCA(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
		if err != nil {
			return nil, fmt.Errorf("CA Secret %s/%s: %w", namespace, name, err)
		}
		return ca, nil
	}
}

// CASecret builds the Secret SecretCA reads.
func CASecret(ca *pki.CA, namespace, name string) *corev1.Secret {
	kp := ca.KeyPair()
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "edgesync"}},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: kp.CertPEM, corev1.TLSPrivateKeyKey: kp.KeyPEM},
	}
}
