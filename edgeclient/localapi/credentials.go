package localapi

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/edgesync/edgesync/edgeclient/localca"
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
	err := localca.Ensure(dir,
		localca.Pair{CertFile: CAFile, KeyFile: caKeyFile, Template: x509.Certificate{
			Subject:        pkix.Name{CommonName: "edgesync-localapi-ca@" + node},
			KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
			MaxPathLenZero: true,
		}},
		localca.Pair{CertFile: ServerCertFile, KeyFile: ServerKeyFile, Template: serverTemplate(node, hosts),
			Valid: func(c *x509.Certificate) bool { return coversHosts(c, hosts) }},
		localca.Pair{CertFile: ClientCertFile, KeyFile: ClientKeyFile, Template: x509.Certificate{
			Subject:     pkix.Name{CommonName: NodeUser(node), Organization: []string{NodesGroup}},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, Valid: func(c *x509.Certificate) bool { return c.Subject.CommonName == NodeUser(node) }})
	if err != nil {
		return nil, fmt.Errorf("localapi credentials: %w", err)
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
	return localca.WriteFileAtomic(path, b, 0o600)
}
