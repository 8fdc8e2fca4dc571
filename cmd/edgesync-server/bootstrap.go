package main

import (
	"context"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/revocation"
)

// newBootstrap builds the BootstrapService from the configuration: the
// signing CA from files or a Secret, the bundle from tls.caFile.
func newBootstrap(cfg Config, kube *rest.Config, revoked *revocation.List, reg prometheus.Registerer, log *zap.Logger) (*bootstrap.Service, error) {
	client, err := kubernetes.NewForConfig(kube)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: clientset: %w", err)
	}
	b := cfg.Bootstrap
	signing := bootstrap.SecretCA(client, b.Namespace, b.CASecret)
	if b.CASecret == "" {
		certFile := b.CACertFile
		if certFile == "" {
			certFile = cfg.TLS.CAFile
		}
		signing = bootstrap.FileCA(certFile, b.CAKeyFile)
		if _, err := signing(context.Background()); err != nil {
			return nil, fmt.Errorf("bootstrap.caKeyFile: %w", err)
		}
	}
	return bootstrap.New(bootstrap.Config{
		Client:                  client,
		Namespace:               b.Namespace,
		Revocations:             revoked,
		SigningCA:               signing,
		Bundle:                  func() ([]byte, error) { return os.ReadFile(cfg.TLS.CAFile) },
		EdgeLabel:               cfg.Controllers.EdgeLabel,
		CertificateLifetime:     b.NodeCertificateLifetime.Duration,
		AttemptsPerSecond:       b.AttemptsPerSecond,
		AttemptBurst:            b.AttemptBurst,
		GlobalAttemptsPerSecond: b.GlobalAttemptsPerSecond,
		GlobalAttemptBurst:      b.GlobalAttemptBurst,
		Registerer:              reg,
		Logger:                  log,
	})
}
