package edgeclient

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"

	"go.uber.org/zap"
)

// certLoader hands out the client certificate, reloading the files when
// they change so that a rotated certificate is used from the next TLS
// handshake on, without a restart.
type certLoader struct {
	certFile, keyFile string
	log               *zap.Logger

	mu       sync.Mutex // guards the fields below
	certInfo os.FileInfo
	keyInfo  os.FileInfo
	cert     *tls.Certificate
}

func newCertLoader(certFile, keyFile string, log *zap.Logger) (*certLoader, error) {
	l := &certLoader{certFile: certFile, keyFile: keyFile, log: log}
	if _, err := l.get(); err != nil {
		return nil, err
	}
	return l, nil
}

func sameFile(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.ModTime().Equal(b.ModTime()) && a.Size() == b.Size()
}

// get returns the current certificate. When the files changed but do not
// load (for example half-way through a rotation), it keeps the previous
// certificate and tries again next time.
func (l *certLoader) get() (*tls.Certificate, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	certInfo, certErr := os.Stat(l.certFile)
	keyInfo, keyErr := os.Stat(l.keyFile)
	if l.cert != nil && certErr == nil && keyErr == nil && sameFile(certInfo, l.certInfo) && sameFile(keyInfo, l.keyInfo) {
		return l.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(l.certFile, l.keyFile)
	if err != nil {
		err = fmt.Errorf("load client certificate %s with key %s: %w", l.certFile, l.keyFile, err)
		if l.cert != nil {
			l.log.Warn("client certificate files changed but do not load; keeping the previous certificate", zap.Error(err))
			return l.cert, nil
		}
		return nil, err
	}
	if cert.Leaf == nil && len(cert.Certificate) > 0 {
		cert.Leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	}
	if l.cert != nil {
		l.log.Info("loaded rotated client certificate", zap.String("file", l.certFile))
	}
	l.cert, l.certInfo, l.keyInfo = &cert, certInfo, keyInfo
	return l.cert, nil
}

func loadCAPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	return pool, nil
}

// tlsConfig builds the TLS configuration of one connection attempt. The CA
// file is read again each time, so a rotated CA is picked up too.
func (c *Client) tlsConfig() (*tls.Config, error) {
	pool, err := loadCAPool(c.cfg.CAFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.certs.get()
		},
	}, nil
}
