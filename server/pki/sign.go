package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// CAHashPrefix starts a CA hash: "sha256:" and the hex SHA-256 of the CA
// certificate's DER-encoded SubjectPublicKeyInfo, kubeadm's format.
const CAHashPrefix = "sha256:"

// CAHash returns cert's hash in kubeadm's format.
func CAHash(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return CAHashPrefix + hex.EncodeToString(sum[:])
}

// ErrBadCSR wraps every reason a CSR is refused; its message says what to
// change.
var ErrBadCSR = errors.New("certificate request refused")

// ErrOtherNode wraps ErrBadCSR when the CSR names another node.
var ErrOtherNode = fmt.Errorf("%w: it names another node", ErrBadCSR)

// ParseNodeCSR parses a PEM certificate request and checks that it is a
// request for node nodeName: its signature verifies, its subject is
// exactly CN "system:node:<nodeName>" (organization "system:nodes" at
// most), it asks for no extensions of its own, and its key is ECDSA P-256 or
// RSA of at least 2048 bits.
func ParseNodeCSR(csrPEM []byte, nodeName string) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: want one PEM block of type CERTIFICATE REQUEST", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: its signature does not verify: %v", ErrBadCSR, err)
	}
	want := NodeCNPrefix + nodeName
	s := csr.Subject
	if s.CommonName != want {
		return nil, fmt.Errorf("%w: subject common name is %q, want %q", ErrOtherNode, s.CommonName, want)
	}
	if len(s.Organization) > 1 || (len(s.Organization) == 1 && s.Organization[0] != NodeOrganization) ||
		len(s.OrganizationalUnit)+len(s.Country)+len(s.Province)+len(s.Locality)+len(s.StreetAddress)+len(s.PostalCode)+len(s.ExtraNames) > 0 ||
		s.SerialNumber != "" {
		return nil, fmt.Errorf("%w: subject must be exactly CN=%s (optionally O=%s), got %q", ErrBadCSR, want, NodeOrganization, s.String())
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses)+len(csr.URIs) > 0 {
		return nil, fmt.Errorf("%w: a node certificate carries no subject alternative names", ErrBadCSR)
	}
	switch key := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if key.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA keys must use curve P-256, got %s", ErrBadCSR, key.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if key.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA keys must have at least 2048 bits, got %d", ErrBadCSR, key.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("%w: key must be ECDSA P-256 or RSA of at least 2048 bits, got %T", ErrBadCSR, csr.PublicKey)
	}
	return csr, nil
}

// SignNode issues node nodeName's client certificate for csr's key, valid
// from a minute ago (clock skew) for lifetime, at generation 0 (see
// SignNodeGeneration).
func (ca *CA) SignNode(csr *x509.CertificateRequest, nodeName string, lifetime time.Duration) (certPEM []byte, notAfter time.Time, err error) {
	return ca.SignNodeGeneration(csr, nodeName, lifetime, 0)
}

// SignNodeGeneration issues node nodeName's client certificate for csr's
// key, valid from a minute ago (clock skew) for lifetime, carrying the
// node's revocation generation (NodeGeneration; package
// server/revocation). Check csr with ParseNodeCSR first: it takes only its
// key, never its subject or extensions.
func (ca *CA) SignNodeGeneration(csr *x509.CertificateRequest, nodeName string, lifetime time.Duration, generation int64) (certPEM []byte, notAfter time.Time, err error) {
	if nodeName == "" || strings.ContainsAny(nodeName, " /:") {
		return nil, time.Time{}, fmt.Errorf("invalid node name %q", nodeName)
	}
	now := time.Now().Truncate(time.Second) // as the certificate holds it
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      nodeSubject(nodeName, generation),
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("sign certificate for node %q: %w", nodeName, err)
	}
	return encodeCert(der), tmpl.NotAfter, nil
}

// ParseCA reads a CA from PEM, as LoadCA does from files (for a CA kept in
// a Kubernetes Secret).
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("the CA certificate is not a CA (basic constraints)")
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("the CA key cannot sign")
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: signer, keyPEM: keyPEM}, nil
}

// generationPrefix starts the organizational unit that carries a node
// certificate's revocation generation.
const generationPrefix = "edgesync:generation:"

func nodeSubject(nodeName string, generation int64) pkix.Name {
	name := pkix.Name{CommonName: NodeCNPrefix + nodeName, Organization: []string{NodeOrganization}}
	if generation > 0 {
		name.OrganizationalUnit = []string{generationPrefix + strconv.FormatInt(generation, 10)}
	}
	return name
}

// NodeGeneration returns the revocation generation a node certificate was
// signed at: 0 for certificates without one (signed before any
// revocation of the node, or by `edgesync-server certs`).
func NodeGeneration(cert *x509.Certificate) int64 {
	for _, ou := range cert.Subject.OrganizationalUnit {
		if v, ok := strings.CutPrefix(ou, generationPrefix); ok {
			if g, err := strconv.ParseInt(v, 10, 64); err == nil && g > 0 {
				return g
			}
		}
	}
	return 0
}
