package localapi

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

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Files of a credentials directory (EnsureCredentials). Keys are written
// 0600 in a 0700 directory: only the agent's user (root on an edge) can
// read them.
const (
	CAFile         = "ca.crt"
	caKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
	ClientCertFile = "kubelet.crt"
	ClientKeyFile  = "kubelet.key"
)

// Lifetimes of the generated certificates. Leaves are issued again by
// EnsureCredentials once a third of their lifetime is left, so an agent
// restarted at least once every few months never serves an expired one.
const (
	caLifetime   = 10 * 365 * 24 * time.Hour
	leafLifetime = 365 * 24 * time.Hour
)

// Credentials are what the local API and its one client, the node's
// kubelet, authenticate each other with: a CA private to this node, a
// serving certificate for the loopback addresses, and a client
// certificate for the kubelet (CN system:node:<node>, O system:nodes, as
// the cluster's own would be).
type Credentials struct {
	// Dir is the directory the files live in.
	Dir string
	// Node is the node's name, as in the client certificate.
	Node string
}

// CAPath, ClientCertPath and ClientKeyPath are the files a kubeconfig
// names.
func (c *Credentials) CAPath() string         { return filepath.Join(c.Dir, CAFile) }
func (c *Credentials) ClientCertPath() string { return filepath.Join(c.Dir, ClientCertFile) }
func (c *Credentials) ClientKeyPath() string  { return filepath.Join(c.Dir, ClientKeyFile) }

// EnsureCredentials makes sure dir holds a CA, a serving certificate for
// hosts (default 127.0.0.1, ::1 and localhost) and a kubelet client
// certificate for node, all valid for a while yet, and creates or renews
// what is missing or ageing. The CA is kept as long as it is valid, so a
// kubeconfig written once stays good.
func EnsureCredentials(dir, node string, hosts ...string) (*Credentials, error) {
	if node == "" {
		return nil, errors.New("localapi credentials: node name is empty")
	}
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "::1", "localhost"}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("localapi credentials: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("localapi credentials: %w", err)
	}
	now := time.Now()
	ca, caKey, err := loadPair(filepath.Join(dir, CAFile), filepath.Join(dir, caKeyFile))
	fresh := err != nil || !ca.IsCA || now.After(ca.NotAfter.Add(-caLifetime/3))
	if fresh {
		ca, caKey, err = issue(nil, nil, &x509.Certificate{
			Subject:               pkix.Name{CommonName: "edgesync-localapi-ca@" + node},
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
		}, now, caLifetime)
		if err != nil {
			return nil, fmt.Errorf("localapi credentials: CA: %w", err)
		}
		if err := writePair(dir, CAFile, caKeyFile, ca, caKey); err != nil {
			return nil, err
		}
	}
	leaves := []struct {
		cert, key string
		tmpl      x509.Certificate
		ok        func(*x509.Certificate) bool
	}{
		{ServerCertFile, ServerKeyFile, serverTemplate(node, hosts), func(c *x509.Certificate) bool { return coversHosts(c, hosts) }},
		{ClientCertFile, ClientKeyFile, x509.Certificate{
			Subject:     pkix.Name{CommonName: NodeUser(node), Organization: []string{NodesGroup}},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, func(c *x509.Certificate) bool { return c.Subject.CommonName == NodeUser(node) }},
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, l := range leaves {
		cert, _, err := loadPair(filepath.Join(dir, l.cert), filepath.Join(dir, l.key))
		if !fresh && err == nil && l.ok(cert) && now.Before(cert.NotAfter.Add(-leafLifetime/3)) {
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				continue
			}
		}
		tmpl := l.tmpl
		cert, key, err := issue(ca, caKey, &tmpl, now, leafLifetime)
		if err != nil {
			return nil, fmt.Errorf("localapi credentials: %s: %w", l.cert, err)
		}
		if err := writePair(dir, l.cert, l.key, cert, key); err != nil {
			return nil, err
		}
	}
	return &Credentials{Dir: dir, Node: node}, nil
}

// NodeUser is the user name a node's credentials carry.
func NodeUser(node string) string { return "system:node:" + node }

// NodesGroup is the group every node belongs to.
const NodesGroup = "system:nodes"

func serverTemplate(node string, hosts []string) x509.Certificate {
	t := x509.Certificate{
		Subject:     pkix.Name{CommonName: "edgesync-localapi@" + node},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, h)
		}
	}
	return t
}

func coversHosts(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// ServerTLS is the local API's TLS configuration: its serving certificate,
// and client certificates required and verified against the local CA.
// The certificate files are read on every handshake, so credentials
// renewed on disk take effect without a restart.
func (c *Credentials) ServerTLS() (*tls.Config, error) {
	caPEM, err := os.ReadFile(c.CAPath())
	if err != nil {
		return nil, fmt.Errorf("localapi: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("localapi: %s holds no certificate", c.CAPath())
	}
	certFile, keyFile := filepath.Join(c.Dir, ServerCertFile), filepath.Join(c.Dir, ServerKeyFile)
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		return nil, fmt.Errorf("localapi: serving certificate: %w", err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			return &cert, err
		},
		NextProtos: []string{"h2", "http/1.1"},
	}, nil
}

// Kubeconfig is a kubeconfig for the kubelet: the local API at server
// (e.g. "https://127.0.0.1:10550"), trusted through the local CA, and the
// kubelet's client certificate, by file path so renewals need no rewrite.
func (c *Credentials) Kubeconfig(server string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["edgesync-local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: c.CAPath()}
	cfg.AuthInfos["kubelet"] = &clientcmdapi.AuthInfo{ClientCertificate: c.ClientCertPath(), ClientKey: c.ClientKeyPath()}
	cfg.Contexts["edgesync-local"] = &clientcmdapi.Context{Cluster: "edgesync-local", AuthInfo: "kubelet"}
	cfg.CurrentContext = "edgesync-local"
	return cfg
}

// WriteKubeconfig writes Kubeconfig(server) to path (mode 0600).
func (c *Credentials) WriteKubeconfig(path, server string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	b, err := clientcmd.Write(*c.Kubeconfig(server))
	if err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return writeFileAtomic(path, b, 0o600)
}

// issue creates a key and a certificate from tmpl, signed by parent (self-
// signed when parent is nil).
func issue(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate, now time.Time, lifetime time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-5 * time.Minute)
	tmpl.NotAfter = now.Add(lifetime)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func loadPair(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not an ECDSA key", keyPath)
	}
	return pair.Leaf, key, nil
}

func writePair(dir, certName, keyName string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("localapi credentials: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, certName), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

// writeFileAtomic replaces path with data, so a reader sees the old or the
// new file, never half of one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
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
