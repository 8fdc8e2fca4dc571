package kubeletproxy

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"path/filepath"

	"github.com/edgesync/edgesync/edgeclient/localca"
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
	err := localca.Ensure(dir,
		localca.Pair{CertFile: CAFile, KeyFile: caKeyFile, Template: x509.Certificate{
			Subject:  pkix.Name{CommonName: "edgesync-agent kubelet CA"},
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		}},
		localca.Pair{CertFile: ServerCertFile, KeyFile: ServerKeyFile, Template: x509.Certificate{
			Subject:     pkix.Name{CommonName: "kubelet"},
			DNSNames:    []string{"localhost"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			KeyUsage:    x509.KeyUsageDigitalSignature,
		}},
		localca.Pair{CertFile: ClientCertFile, KeyFile: ClientKeyFile, Template: x509.Certificate{
			Subject:     pkix.Name{CommonName: ClientName},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			KeyUsage:    x509.KeyUsageDigitalSignature,
		}})
	if err != nil {
		return nil, fmt.Errorf("kubelet credentials: %w", err)
	}
	return &Credentials{Dir: dir}, nil
}
