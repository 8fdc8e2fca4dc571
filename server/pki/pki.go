// Package pki issues and reads the certificates edgesync runs on: a CA, the
// server's serving certificate, node client certificates (CN
// "system:node:<name>", as Kubernetes node certificates) and admin client
// certificates (organization "edgesync:admins"). It also tells who a verified
// peer certificate belongs to. `edgesync-server certs` and the tests use it.
package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

const (
	// NodeCNPrefix starts the common name of every node certificate.
	NodeCNPrefix = "system:node:"
	// NodeOrganization is the organization of node certificates, as in Kubernetes.
	NodeOrganization = "system:nodes"
	// AdminOrganization marks certificates allowed to call AdminService.
	AdminOrganization = "edgesync:admins"
)

// Validity is how long issued certificates last; the CA lasts ten times as long.
var Validity = 365 * 24 * time.Hour

// CA is a certificate authority that can issue edgesync certificates.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
	keyPEM  []byte
}

// KeyPair is an issued certificate and its private key, PEM encoded.
type KeyPair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA creates a self-signed CA.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now,
		NotAfter:              now.Add(10 * Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: encodeCert(der), key: key, keyPEM: keyPEM}, nil
}

// LoadCA reads a CA certificate and key written by WriteFiles.
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certFile, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse CA %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s cannot sign", keyFile)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: signer, keyPEM: keyPEM}, nil
}

// KeyPair returns the CA's own certificate and key, for writing to files.
func (ca *CA) KeyPair() *KeyPair {
	return &KeyPair{CertPEM: ca.CertPEM, KeyPEM: ca.keyPEM}
}

// Pool returns a certificate pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// IssueServer issues a serving certificate for hosts (DNS names or IP addresses).
func (ca *CA) IssueServer(hosts []string) (*KeyPair, error) {
	if len(hosts) == 0 {
		return nil, errors.New("a server certificate needs at least one host name or IP address")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(tmpl)
}

// IssueNode issues the client certificate of edge node nodeName.
func (ca *CA) IssueNode(nodeName string) (*KeyPair, error) {
	if nodeName == "" || strings.ContainsAny(nodeName, " /:") {
		return nil, fmt.Errorf("invalid node name %q: use a Kubernetes node name (lowercase letters, digits, '-' and '.')", nodeName)
	}
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: NodeCNPrefix + nodeName, Organization: []string{NodeOrganization}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// IssueAdmin issues an operator's client certificate for AdminService.
func (ca *CA) IssueAdmin(name string) (*KeyPair, error) {
	if name == "" || strings.HasPrefix(name, NodeCNPrefix) {
		return nil, fmt.Errorf("invalid admin name %q", name)
	}
	return ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{AdminOrganization}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (ca *CA) issue(tmpl *x509.Certificate) (*KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	now := time.Now().Add(-5 * time.Minute)
	tmpl.SerialNumber = newSerial()
	tmpl.NotBefore = now
	tmpl.NotAfter = now.Add(Validity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &KeyPair{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// TLSCertificate returns the pair for a tls.Config.
func (kp *KeyPair) TLSCertificate() (tls.Certificate, error) {
	return tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
}

// ErrExists is returned by WriteFiles when a file exists and overwrite is false.
var ErrExists = errors.New("file exists")

// WriteFiles writes the certificate (mode 0644) and key (mode 0600),
// creating directories as needed. Without overwrite it refuses to replace
// either file and writes neither.
func (kp *KeyPair) WriteFiles(certFile, keyFile string, overwrite bool) error {
	if !overwrite {
		for _, f := range []string{certFile, keyFile} {
			if _, err := os.Stat(f); err == nil {
				return fmt.Errorf("%s: %w (pass --force to replace it)", f, ErrExists)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	for _, f := range []string{certFile, keyFile} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return err
		}
	}
	if err := writeAtomic(keyFile, kp.KeyPEM, 0o600); err != nil {
		return err
	}
	return writeAtomic(certFile, kp.CertPEM, 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// NodeName returns the node a verified client certificate belongs to:
// its common name is NodeCNPrefix followed by the name, and it is not an
// admin certificate (which may not act as a node).
func NodeName(cert *x509.Certificate) (string, bool) {
	name, ok := strings.CutPrefix(cert.Subject.CommonName, NodeCNPrefix)
	return name, ok && name != "" && !IsAdmin(cert)
}

// PeerCertificate returns the verified client certificate of a gRPC call,
// or nil when the call has none (no TLS, or no certificate the server
// verified).
func PeerCertificate(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

// PeerNode is the one place a call's node is read from its certificate:
// the node of the verified client certificate, with the certificate (nil
// when there is none; node is then empty, and empty too for a
// certificate that is not a node's).
func PeerNode(ctx context.Context) (node string, cert *x509.Certificate) {
	cert = PeerCertificate(ctx)
	if cert == nil {
		return "", nil
	}
	node, _ = NodeName(cert)
	return node, cert
}

// IsAdmin reports whether a verified client certificate may call AdminService.
func IsAdmin(cert *x509.Certificate) bool {
	return slices.Contains(cert.Subject.Organization, AdminOrganization)
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
