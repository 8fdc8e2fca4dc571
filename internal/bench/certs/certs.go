// Package certs prepares the mutual TLS material of a benchmark run: a CA,
// the server's certificate written to files for a server process to load, and
// one node client certificate per simulated edge, issued with server/pki.
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"runtime"

	"golang.org/x/sync/errgroup"

	"github.com/edgesync/edgesync/server/pki"
)

// Set is the CA and server certificate of one run.
type Set struct {
	CA *pki.CA
	// Dir holds ca.crt, ca.key, server.crt and server.key.
	Dir string
}

// Files names the PEM files in Set.Dir.
const (
	CACert     = "ca.crt"
	CAKey      = "ca.key"
	ServerCert = "server.crt"
	ServerKey  = "server.key"
)

// New creates a CA and a server certificate for 127.0.0.1 and localhost and
// writes both to dir.
func New(dir string) (*Set, error) {
	ca, err := pki.NewCA("edgesync-bench CA")
	if err != nil {
		return nil, err
	}
	srv, err := ca.IssueServer([]string{"127.0.0.1", "localhost"})
	if err != nil {
		return nil, err
	}
	if err := ca.KeyPair().WriteFiles(filepath.Join(dir, CACert), filepath.Join(dir, CAKey), true); err != nil {
		return nil, err
	}
	if err := srv.WriteFiles(filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey), true); err != nil {
		return nil, err
	}
	return &Set{CA: ca, Dir: dir}, nil
}

// Path returns the path of one of the Files.
func (s *Set) Path(name string) string { return filepath.Join(s.Dir, name) }

// ServerTLS returns a server tls.Config that requires node certificates of
// this CA. Server processes of the benchmark build it from the files.
func ServerTLS(dir string) (*tls.Config, error) {
	ca, err := pki.LoadCA(filepath.Join(dir, CACert), filepath.Join(dir, CAKey))
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey))
	if err != nil {
		return nil, fmt.Errorf("load server certificate: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    ca.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ClientTLS returns the tls.Config of one edge holding cert.
func (s *Set) ClientTLS(cert tls.Certificate) *tls.Config {
	return ClientTLS(s.CA.Pool(), cert)
}

// ClientTLS returns the tls.Config of a client holding cert and trusting roots.
func ClientTLS(roots *x509.CertPool, cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   "127.0.0.1",
		MinVersion:   tls.VersionTLS12,
	}
}

// IssueNodes issues one node certificate per name, in parallel.
func (s *Set) IssueNodes(names []string) ([]tls.Certificate, error) {
	out := make([]tls.Certificate, len(names))
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, name := range names {
		g.Go(func() error {
			kp, err := s.CA.IssueNode(name)
			if err != nil {
				return err
			}
			c, err := kp.TLSCertificate()
			if err != nil {
				return fmt.Errorf("node %s: %w", name, err)
			}
			out[i] = c
			return nil
		})
	}
	return out, g.Wait()
}
