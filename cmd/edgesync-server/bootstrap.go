package main

import (
	"context"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/pki"
)

// newBootstrap builds the BootstrapService from the configuration: the
// signing CA from files or a Secret, the bundle from tls.caFile.
func newBootstrap(cfg Config, kube *rest.Config, reg prometheus.Registerer, log *zap.Logger) (*bootstrap.Service, error) {
	client, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: clientset: %w", err)
	}
	b := cfg.Bootstrap
	var signing func(ctx context.Context) (*pki.CA, error)
	if b.CASecret != "" {
		signing = func(ctx context.Context) (*pki.CA, error) {
			s, err := client.CoreV1().Secrets(b.Namespace).Get(ctx, b.CASecret, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("read CA Secret %s/%s: %w", b.Namespace, b.CASecret, err)
			}
			ca, err := pki.ParseCA(s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey])
			if err != nil {
				return nil, fmt.Errorf("CA Secret %s/%s: %w", b.Namespace, b.CASecret, err)
			}
			return ca, nil
		}
	} else {
		certFile := b.CACertFile
		if certFile == "" {
			certFile = cfg.TLS.CAFile
		}
		// Read at every signature, so that replaced files are used at once.
		signing = func(context.Context) (*pki.CA, error) { return pki.LoadCA(certFile, b.CAKeyFile) }
		if _, err := signing(context.Background()); err != nil {
			return nil, fmt.Errorf("bootstrap.caKeyFile: %w", err)
		}
	}
	return bootstrap.New(bootstrap.Config{
		Client:              client,
		SigningCA:           signing,
		Bundle:              func() ([]byte, error) { return os.ReadFile(cfg.TLS.CAFile) },
		EdgeLabel:           cfg.Controllers.EdgeLabel,
		CertificateLifetime: b.NodeCertificateLifetime.Duration,
		AttemptsPerSecond:   b.AttemptsPerSecond,
		AttemptBurst:        b.AttemptBurst,
		Registerer:          reg,
		Logger:              log,
	})
}
