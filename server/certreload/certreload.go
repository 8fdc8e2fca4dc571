// Package certreload serves TLS from PEM files that may be replaced while
// the server runs: the serving certificate and key, and the CA bundle that
// client certificates must chain to. Every handshake checks whether the
// files changed (a stat each) and loads them again if so, so new
// connections get the new certificate and CA bundle while connections
// already established keep theirs: replacing the files drops no session.
// A bundle holding the old and the new CA accepts clients of both, which
// is how a CA is rotated.
package certreload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"

	"go.uber.org/zap"
)

// Files names the PEM files.
type Files struct {
	CAFile, CertFile, KeyFile string
}

// Reloader hands out the TLS configuration of the current files.
type Reloader struct {
	files Files
	base  *tls.Config
	log   *zap.Logger

	mu    sync.Mutex // guards the fields below
	infos [3]os.FileInfo
	cur   *tls.Config
}

// New loads the files; base gives every other setting (ClientAuth,
// MinVersion, ...), and its Certificates and ClientCAs are replaced.
func New(files Files, base *tls.Config, log *zap.Logger) (*Reloader, error) {
	if log == nil {
		log = zap.NewNop()
	}
	r := &Reloader{files: files, base: base.Clone(), log: log}
	infos, err := r.stat()
	if err != nil {
		return nil, err
	}
	if r.cur, err = r.load(); err != nil {
		return nil, err
	}
	r.infos = infos
	return r, nil
}

// Config returns the configuration to serve with: each handshake gets the
// files' current contents.
func (r *Reloader) Config() *tls.Config {
	return &tls.Config{
		MinVersion:         r.base.MinVersion,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return r.current(), nil },
	}
}

// current reloads the files when they changed. Files that changed but do
// not load (half-way through a replacement) leave the previous
// configuration in place until the next handshake.
func (r *Reloader) current() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	infos, err := r.stat()
	if err != nil || r.unchanged(infos) {
		return r.cur
	}
	cfg, err := r.load()
	if err != nil {
		r.log.Warn("TLS files changed but do not load; serving the previous certificate and CA bundle", zap.Error(err))
		return r.cur
	}
	r.log.Info("loaded new TLS files", zap.String("cert", r.files.CertFile), zap.String("ca", r.files.CAFile))
	r.cur, r.infos = cfg, infos
	return r.cur
}

func (r *Reloader) stat() ([3]os.FileInfo, error) {
	var infos [3]os.FileInfo
	var errs []error
	for i, f := range []string{r.files.CAFile, r.files.CertFile, r.files.KeyFile} {
		info, err := os.Stat(f)
		infos[i] = info
		errs = append(errs, err)
	}
	return infos, errors.Join(errs...)
}

func (r *Reloader) unchanged(infos [3]os.FileInfo) bool {
	for i, a := range infos {
		b := r.infos[i]
		if b == nil || !os.SameFile(a, b) || !a.ModTime().Equal(b.ModTime()) || a.Size() != b.Size() {
			return false
		}
	}
	return true
}

func (r *Reloader) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load server certificate %s: %w", r.files.CertFile, err)
	}
	caPEM, err := os.ReadFile(r.files.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", r.files.CAFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("CA %s holds no PEM certificate", r.files.CAFile)
	}
	cfg := r.base.Clone()
	cfg.Certificates = []tls.Certificate{cert}
	cfg.ClientCAs = pool
	return cfg, nil
}
