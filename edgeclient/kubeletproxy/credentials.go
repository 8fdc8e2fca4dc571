package kubeletproxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files of a credentials directory (EnsureCredentials). Keys are 0600 in a
// 0700 directory.
const (
	// CAFile is the node-local CA: the kubelet's authentication.x509.clientCAFile,
	// and what the agent verifies the kubelet's serving certificate with.
	CAFile    = "kubelet-ca.crt"
	caKeyFile = "kubelet-ca.key"
	// ServerCertFile and ServerKeyFile are the kubelet's serving
	// certificate for 127.0.0.1, ::1 and localhost (tlsCertFile,
	// tlsPrivateKeyFile).
	ServerCertFile = "kubelet-server.crt"
	ServerKeyFile  = "kubelet-server.key"
	// ClientCertFile and ClientKeyFile are the agent's own client
	// certificate (CN ClientName), the one client the kubelet lets in.
	ClientCertFile = "agent-client.crt"
	ClientKeyFile  = "agent-client.key"
)

// ClientName is the common name of the agent's client certificate, the
// user the kubelet sees.
const ClientName = "edgesync-agent"

const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 365 * 24 * time.Hour
)

// Credentials are the files in Dir that the agent and the kubelet's server
// authenticate each other with.
type Credentials struct {
	Dir string
}

// Path returns the path of one of the files above.
func (c *Credentials) Path(file string) string { return filepath.Join(c.Dir, file) }

// EnsureCredentials makes sure dir holds a node-local CA, the kubelet's
// serving certificate and the agent's client certificate, all valid for a
// third of their lifetime yet, and issues what is missing or ageing. The
// CA is kept while valid, so a kubelet configured once stays configured;
// a kubelet re-reads renewed serving certificates only when it restarts.
func EnsureCredentials(dir string) (*Credentials, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kubelet credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("kubelet credentials: %w", err)
	}
	c := &Credentials{Dir: dir}
	now := time.Now()
	ca, caKey, err := loadPair(c.Path(CAFile), c.Path(caKeyFile))
	renewLeaves := false
	if err != nil || fresh(ca, now) != nil || !ca.IsCA {
		ca, caKey, err = issue(nil, nil, &x509.Certificate{
			Subject:               pkix.Name{CommonName: "edgesync-agent kubelet CA"},
			IsCA:                  true,
			BasicConstraintsValid: true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}, now, caLifetime)
		if err != nil {
			return nil, err
		}
		if err := writePair(c.Path(CAFile), c.Path(caKeyFile), ca, caKey); err != nil {
			return nil, err
		}
		renewLeaves = true
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	leaves := []struct {
		cert, key string
		tmpl      x509.Certificate
	}{
		{ServerCertFile, ServerKeyFile, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kubelet"},
			DNSNames:    []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			KeyUsage:    x509.KeyUsageDigitalSignature,
		}},
		{ClientCertFile, ClientKeyFile, x509.Certificate{
			Subject:     pkix.Name{CommonName: ClientName},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			KeyUsage:    x509.KeyUsageDigitalSignature,
		}},
	}
	for _, l := range leaves {
		if !renewLeaves {
			if cert, _, err := loadPair(c.Path(l.cert), c.Path(l.key)); err == nil && fresh(cert, now) == nil {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
					continue
				}
			}
		}
		tmpl := l.tmpl
		cert, key, err := issue(ca, caKey, &tmpl, now, leafLifetime)
		if err != nil {
			return nil, err
		}
		if err := writePair(c.Path(l.cert), c.Path(l.key), cert, key); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// fresh says why cert should be issued again: expired, or less than a
// third of its lifetime left.
func fresh(cert *x509.Certificate, now time.Time) error {
	life := cert.NotAfter.Sub(cert.NotBefore)
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter.Add(-life/3)) {
		return errors.New("expired or ageing")
	}
	return nil
}

// issue signs tmpl with ca (self-signed when ca is nil) for a new P-256 key.
func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate, now time.Time, life time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), now.Add(life)
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s certificate: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func loadPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not an ECDSA key", keyFile)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	return cert, key, err
}

// writePair writes the certificate (0644) and key (0600), each through a
// temporary file and a rename.
func writePair(certFile, keyFile string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return writeAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
