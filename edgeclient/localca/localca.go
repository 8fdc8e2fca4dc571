// Package localca keeps, in one directory of an edge node, a certificate
// authority private to that node and the leaf certificates it signs for
// the node's own processes (the local API and the kubelet it serves, the
// agent and the kubelet's server). Nothing outside the node trusts it.
//
// Ensure issues what is missing and issues again what is expiring: a
// certificate with less than a third of its lifetime left, or one that no
// longer verifies against the CA. The CA is kept while it is valid, so
// configurations naming its file stay good; a new CA re-issues every leaf.
// Keys are P-256, written 0600 in a 0700 directory, each file replaced
// atomically (a reader sees the old or the new one, never half).
package localca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Lifetimes of the certificates Ensure issues.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	LeafLifetime = 365 * 24 * time.Hour
)

// Pair names a certificate's and its key's files in the directory, and
// what a newly issued certificate holds (its serial number, validity and
// the CA's part are filled in).
type Pair struct {
	CertFile, KeyFile string
	Template          x509.Certificate
	// Valid, when set, tells whether an existing certificate still says
	// what Template says (for example that it names every host); one that
	// does not is issued again.
	Valid func(*x509.Certificate) bool
}

// Ensure makes dir hold the CA and every leaf, signed by the CA and not
// expiring, issuing what is missing or expiring.
func Ensure(dir string, ca Pair, leaves ...Pair) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("node-local certificates: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("node-local certificates: %w", err)
	}
	now := time.Now()
	caCert, caKey, err := load(dir, ca)
	newCA := err != nil || !caCert.IsCA || expiring(caCert, now)
	if newCA {
		tmpl := ca.Template
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		if caCert, caKey, err = issue(nil, nil, &tmpl, now, CALifetime); err != nil {
			return err
		}
		if err := write(dir, ca, caCert, caKey); err != nil {
			return err
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	for _, leaf := range leaves {
		if !newCA {
			cert, _, err := load(dir, leaf)
			if err == nil && !expiring(cert, now) && (leaf.Valid == nil || leaf.Valid(cert)) {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
					continue
				}
			}
		}
		tmpl := leaf.Template
		cert, key, err := issue(caCert, caKey, &tmpl, now, LeafLifetime)
		if err != nil {
			return err
		}
		if err := write(dir, leaf, cert, key); err != nil {
			return err
		}
	}
	return nil
}

// expiring reports whether cert is not yet or no longer valid, or has
// less than a third of its lifetime left.
func expiring(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return now.Before(cert.NotBefore) || now.After(cert.NotAfter.Add(-life/3))
}

// issue signs tmpl with parent (self-signed when parent is nil) for a new
// key.
func issue(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate, now time.Time, life time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-5*time.Minute), now.Add(life)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("issue the %s certificate: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func load(dir string, p Pair) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, p.CertFile), filepath.Join(dir, p.KeyFile))
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not an ECDSA key", p.KeyFile)
	}
	return pair.Leaf, key, nil
}

// write writes the key (0600) and then the certificate (0644).
func write(dir string, p Pair, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("node-local certificates: %w", err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, p.KeyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, p.CertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

// WriteFileAtomic replaces path with data (mode from the start), so a
// reader sees the old or the new file, never half of one.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
