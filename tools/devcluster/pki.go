package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// devPKI is the control plane's own certificate authority and the files the
// apiserver and its admin client need. It has nothing to do with edgesync's
// PKI: it only secures the devcluster.
type devPKI struct {
	caFile, serverCertFile, serverKeyFile string
	caPEM                                 []byte
	saPublicFile, saPrivateFile           string
	// Client certificates: the admin (system:masters) and one per
	// control-plane component, named as Kubernetes' default RBAC expects.
	admin, controllerManager, scheduler clientCert
	// kubeletClientCertFile and kubeletClientKeyFile are the certificate
	// the apiserver presents to kubelets (here: edgesync-server's kubelet
	// endpoint), signed by the CA like every other client certificate, as
	// kubeadm does; a kubelet trusts caFile and authorizes by
	// SubjectAccessReview.
	kubeletClientCertFile, kubeletClientKeyFile string
}

// clientCert is a client certificate and key, PEM encoded.
type clientCert struct {
	certPEM, keyPEM []byte
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func writePEM(path, blockType string, der []byte, mode os.FileMode) ([]byte, error) {
	data := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return data, nil
}

func writeKey(path string, key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// makePKI writes a fresh CA, apiserver serving certificate, client
// certificates for the admin (group system:masters), the controller-manager,
// the scheduler and the apiserver's kubelet client, and the service-account
// key pair into dir.
func makePKI(dir string) (*devPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &devPKI{
		caFile:         filepath.Join(dir, "ca.crt"),
		serverCertFile: filepath.Join(dir, "apiserver.crt"),
		serverKeyFile:  filepath.Join(dir, "apiserver.key"),
		saPublicFile:   filepath.Join(dir, "sa.pub"),
		saPrivateFile:  filepath.Join(dir, "sa.key"),
	}
	now := time.Now().Add(-time.Hour)
	caKey, err := newKey()
	if err != nil {
		return nil, err
	}
	caTemplate := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "devcluster-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if p.caPEM, err = writePEM(p.caFile, "CERTIFICATE", caDER, 0o644); err != nil {
		return nil, err
	}

	issue := func(tmpl *x509.Certificate) (certDER []byte, key *ecdsa.PrivateKey, err error) {
		key, err = newKey()
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore = now
		tmpl.NotAfter = now.Add(365 * 24 * time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		certDER, err = x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		return certDER, key, err
	}

	serverDER, serverKey, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	})
	if err != nil {
		return nil, err
	}
	if _, err := writePEM(p.serverCertFile, "CERTIFICATE", serverDER, 0o644); err != nil {
		return nil, err
	}
	if _, err := writeKey(p.serverKeyFile, serverKey); err != nil {
		return nil, err
	}

	issueClient := func(name string, subject pkix.Name) (clientCert, error) {
		der, key, err := issue(&x509.Certificate{
			Subject:     subject,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return clientCert{}, err
		}
		var c clientCert
		if c.certPEM, err = writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der, 0o644); err != nil {
			return clientCert{}, err
		}
		if c.keyPEM, err = writeKey(filepath.Join(dir, name+".key"), key); err != nil {
			return clientCert{}, err
		}
		return c, nil
	}
	if p.admin, err = issueClient("admin", pkix.Name{CommonName: "devcluster-admin", Organization: []string{"system:masters"}}); err != nil {
		return nil, err
	}
	if p.controllerManager, err = issueClient("kube-controller-manager", pkix.Name{CommonName: "system:kube-controller-manager"}); err != nil {
		return nil, err
	}
	if p.scheduler, err = issueClient("kube-scheduler", pkix.Name{CommonName: "system:kube-scheduler"}); err != nil {
		return nil, err
	}
	if _, err = issueClient("apiserver-kubelet-client", pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}); err != nil {
		return nil, err
	}
	p.kubeletClientCertFile = filepath.Join(dir, "apiserver-kubelet-client.crt")
	p.kubeletClientKeyFile = filepath.Join(dir, "apiserver-kubelet-client.key")

	saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	if _, err := writeKey(p.saPrivateFile, saKey); err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	if _, err := writePEM(p.saPublicFile, "PUBLIC KEY", saPub, 0o644); err != nil {
		return nil, err
	}
	return p, nil
}
