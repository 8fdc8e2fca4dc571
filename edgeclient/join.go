package edgeclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// The files Join writes into JoinConfig.Dir, which Config.CAFile,
// CertFile and KeyFile then name.
const (
	CAFileName   = "ca.crt"
	CertFileName = "node.crt"
	KeyFileName  = "node.key"
)

// JoinConfig says which cluster to join, with what, and as whom.
type JoinConfig struct {
	// Server is the server address, host:port.
	Server string
	// Token is the bootstrap token, "<id>.<secret>".
	Token string
	// CACertHash pins the cluster's CA: "sha256:" and the hex SHA-256 of
	// its SubjectPublicKeyInfo, as `edgesync-server token create` prints
	// it. Join refuses a server whose CA does not match, before it sends
	// the token.
	CACertHash string
	// NodeName is the node to join as.
	NodeName string
	// Dir receives ca.crt, node.crt and node.key (mode 0600).
	Dir string
	// Logger receives Join's logs; nil means none.
	Logger *zap.Logger
	// DialOptions are added to Join's own.
	DialOptions []grpc.DialOption
}

// Joined says what Join wrote.
type Joined struct {
	CAFile, CertFile, KeyFile string
	// NotAfter is when the certificate expires; a Client with
	// RenewCertificates renews it before.
	NotAfter time.Time
}

// ErrCAHashMismatch is returned by Join when the server's CA is not the
// pinned one.
var ErrCAHashMismatch = errors.New("the server's CA does not match --ca-cert-hash")

// Join makes the node a member of the cluster: it fetches the CA from the
// server and checks it against CACertHash (refusing before the token is
// sent), generates a private key that never leaves the node, has the
// server sign a certificate for it with the token, and writes the CA, the
// certificate and the key into Dir. A Client configured with the files
// (and RenewCertificates) then keeps the certificate fresh.
func Join(ctx context.Context, cfg JoinConfig) (*Joined, error) {
	switch {
	case cfg.Server == "" || cfg.Token == "" || cfg.NodeName == "" || cfg.Dir == "":
		return nil, errors.New("join: Server, Token, NodeName and Dir must all be set")
	}
	pinned, err := parseCAHash(cfg.CACertHash)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}

	// 1. The CA, over TLS that does not verify the server yet.
	bundle, err := fetchCA(ctx, cfg)
	if err != nil {
		return nil, err
	}
	pool, err := pinnedPool(bundle, pinned)
	if err != nil {
		return nil, err
	}
	log.Info("the server's CA matches the pinned hash", zap.String("server", cfg.Server))

	// 2. A key of our own and a request for it.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("join: generate key: %w", err)
	}
	csrPEM, err := nodeCSR(key, cfg.NodeName)
	if err != nil {
		return nil, err
	}

	// 3. The certificate, over TLS verified against the pinned CA alone.
	cc, err := grpc.NewClient(cfg.Server, append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool})),
	}, cfg.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("join: dial %s: %w", cfg.Server, err)
	}
	defer cc.Close()
	resp, err := edgesyncv1.NewBootstrapServiceClient(cc).IssueCertificate(ctx, &edgesyncv1.IssueCertificateRequest{
		Token: cfg.Token, NodeName: cfg.NodeName, CsrPem: csrPEM,
	})
	if err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}

	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("join: encode key: %w", err)
	}
	j := &Joined{
		CAFile:   filepath.Join(cfg.Dir, CAFileName),
		CertFile: filepath.Join(cfg.Dir, CertFileName),
		KeyFile:  filepath.Join(cfg.Dir, KeyFileName),
		NotAfter: resp.GetNotAfter().AsTime(),
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	// The bundle as the verified server sent it (with a CA being rotated
	// in, more than the pinned one).
	caPEM := resp.GetCaBundlePem()
	if _, err := pinnedPool(caPEM, pinned); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(j.CAFile, caPEM); err != nil {
		return nil, err
	}
	if err := writeCertAndKey(j.CertFile, j.KeyFile, resp.GetCertificatePem(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return nil, err
	}
	log.Info("joined", zap.String("node", cfg.NodeName), zap.String("dir", cfg.Dir), zap.Time("not_after", j.NotAfter))
	return j, nil
}

// parseCAHash checks the "sha256:<64 hex>" form.
func parseCAHash(s string) ([]byte, error) {
	hexSum, ok := strings.CutPrefix(s, "sha256:")
	sum, err := hex.DecodeString(hexSum)
	if !ok || err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("join: CA hash %q is not of the form sha256:<64 hex digits>, as `edgesync-server token create` prints it", s)
	}
	return sum, nil
}

// fetchCA calls GetCACertificate without verifying the server: the bundle
// is checked against the pin before anything else is sent.
func fetchCA(ctx context.Context, cfg JoinConfig) ([]byte, error) {
	insecure := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} //nolint:gosec // verified against the pinned hash below
	cc, err := grpc.NewClient(cfg.Server, append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(insecure))}, cfg.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("join: dial %s: %w", cfg.Server, err)
	}
	defer cc.Close()
	resp, err := edgesyncv1.NewBootstrapServiceClient(cc).GetCACertificate(ctx, &edgesyncv1.GetCACertificateRequest{})
	if err != nil {
		return nil, fmt.Errorf("join: fetch the CA from %s: %w", cfg.Server, err)
	}
	return resp.GetCaBundlePem(), nil
}

// pinnedPool returns a pool of the bundle's certificates that have the
// pinned hash: only they may vouch for the server. (The rest of the bundle
// came over an unverified connection; the node takes the bundle from the
// verified answer to IssueCertificate.)
func pinnedPool(bundle, pinned []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	var hashes []string
	match := false
	for rest := bundle; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil || block.Type != "CERTIFICATE" {
			continue
		}
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		hashes = append(hashes, "sha256:"+hex.EncodeToString(sum[:]))
		if string(sum[:]) == string(pinned) {
			match = true
			pool.AddCert(cert)
		}
	}
	if !match {
		return nil, fmt.Errorf("join: %w: the server offers %s, the pin is sha256:%s; check the address, or the hash `edgesync-server token create` printed (no token was sent)",
			ErrCAHashMismatch, strings.Join(hashes, ", "), hex.EncodeToString(pinned))
	}
	return pool, nil
}

// nodeCSR builds the PEM request of node name for key.
func nodeCSR(key *ecdsa.PrivateKey, name string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// writeCertAndKey replaces the key, then the certificate, each
// atomically. Between the two renames the pair does not match, which the
// certificate loader treats as "keep the previous one".
func writeCertAndKey(certFile, keyFile string, certPEM, keyPEM []byte) error {
	if err := writeFileAtomic(keyFile, keyPEM); err != nil {
		return err
	}
	return writeFileAtomic(certFile, certPEM)
}

// writeFileAtomic writes data (mode 0600) through a temporary file and a
// rename, so readers see the old or the new file, never half of one.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
