package bootstrap_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes/fake"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/pki"
)

// fuzzToken is one bootstrap token Secret of the fuzz target's cluster,
// with what a caller holding it may do.
type fuzzToken struct {
	id, secret string
	node       string // bound to this node, if set
	singleUse  bool
	usedBy     string
	expires    string // RFC 3339, or garbage
	groups     string
	// joins: the token proves a join (right group, not expired, not used).
	joins bool
}

func (tk fuzzToken) full() string { return tk.id + "." + tk.secret }

// allows reports whether the token joins node.
func (tk fuzzToken) allows(node string) bool {
	return tk.joins && (tk.node == "" || tk.node == node)
}

func (tk fuzzToken) secretObject() *corev1.Secret {
	data := map[string][]byte{
		bootstrapapi.BootstrapTokenIDKey:               []byte(tk.id),
		bootstrapapi.BootstrapTokenSecretKey:           []byte(tk.secret),
		bootstrapapi.BootstrapTokenUsageAuthentication: []byte("true"),
		bootstrapapi.BootstrapTokenExtraGroupsKey:      []byte(tk.groups),
	}
	if tk.expires != "" {
		data[bootstrapapi.BootstrapTokenExpirationKey] = []byte(tk.expires)
	}
	if tk.node != "" {
		data[bootstrap.NodeNameKey] = []byte(tk.node)
	}
	if tk.singleUse {
		data[bootstrap.SingleUseKey] = []byte("true")
	}
	if tk.usedBy != "" {
		data[bootstrap.UsedByKey] = []byte(tk.usedBy)
		data[bootstrap.UsedAtKey] = []byte("2026-01-01T00:00:00Z")
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: bootstraputil.BootstrapTokenSecretName(tk.id), Namespace: metav1.NamespaceSystem},
		Type:       bootstrapapi.SecretTypeBootstrapToken,
		Data:       data,
	}
}

// The fuzz target's cluster: fixed tokens (so that the committed corpus
// stays meaningful), an edge Node and a cloud Node.
var (
	fuzzTokens = []fuzzToken{
		{id: "open01", secret: "k3q9x2m4p8w1z5na", groups: bootstrap.Group, joins: true},
		{id: "bound1", secret: "r7t2y6u1i5o9p3as", groups: bootstrap.Group, node: "edge-bound", joins: true},
		{id: "once01", secret: "d4f8g2h6j1k5l9zx", groups: bootstrap.Group, singleUse: true, joins: true},
		{id: "later1", secret: "c3v7b1n5m9q2w6er", groups: bootstrap.Group, expires: time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339), joins: true},
		{id: "expir1", secret: "t8y2u6i0o4p8a2sd", groups: bootstrap.Group, expires: "2020-01-01T00:00:00Z"},
		{id: "badexp", secret: "f6g0h4j8k2l6z0xc", groups: bootstrap.Group, expires: "tomorrow"},
		{id: "kubelt", secret: "v4b8n2m6q0w4e8rt", groups: "system:bootstrappers:kubeadm:default-node-token"},
		{id: "used01", secret: "y2u6i0o4p8a2s6df", groups: bootstrap.Group, singleUse: true, usedBy: "edge-old"},
		{id: "bnde01", secret: "h5j9k3l7z1x5c9vb", groups: bootstrap.Group, node: fuzzEdgeNode, joins: true},
	}
	fuzzEdgeNode  = "edge-1"
	fuzzCloudNode = "cloud-1"
)

func fuzzObjects() []runtime.Object {
	objs := []runtime.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fuzzEdgeNode, Labels: map[string]string{edgeLabel: ""}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fuzzCloudNode}},
	}
	for _, tk := range fuzzTokens {
		objs = append(objs, tk.secretObject())
	}
	return objs
}

// FuzzIssueCertificate hands arbitrary IssueCertificateRequest bytes, as
// an unauthenticated caller sends them, to the real service with a real CA
// and a fake cluster of tokens and Nodes. Whatever they hold:
//   - a refusal is a gRPC status with a code BootstrapService documents
//     for a reachable cluster (INVALID_ARGUMENT, UNAUTHENTICATED,
//     PERMISSION_DENIED), and a caller without a valid token learns
//     nothing but UNAUTHENTICATED (or that its node name is malformed);
//   - a certificate is issued exactly when the request carries a token that
//     joins the node, the name is a valid one not taken by a cloud Node, and
//     the CSR is the node's own; the certificate is a client certificate of
//     that node only, for the CSR's key, signed by the CA; a single-use
//     token is consumed by that node;
//   - no token secret appears in an error message or in the logs.
func FuzzIssueCertificate(f *testing.F) {
	ca, err := pki.NewCA("fuzz-ca")
	if err != nil {
		f.Fatal(err)
	}
	open, bound, once, expired := fuzzTokens[0], fuzzTokens[1], fuzzTokens[2], fuzzTokens[4]
	seeds := []*edgesyncv1.IssueCertificateRequest{
		{Token: open.full(), NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{Token: open.full(), NodeName: "edge-new", CsrPem: fuzzCSR(f, pki.NodeCNPrefix+"edge-new")},
		{Token: bound.full(), NodeName: "edge-bound", CsrPem: fuzzCSR(f, pki.NodeCNPrefix+"edge-bound")},
		{Token: bound.full(), NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{Token: once.full(), NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{Token: fuzzTokens[8].full(), NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{Token: expired.full(), NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{Token: open.id + ".0000000000000000", NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{Token: open.id + "-" + open.secret, NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{Token: open.full(), NodeName: fuzzEdgeNode},
		{Token: open.full(), NodeName: fuzzEdgeNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+"edge-2")},
		{Token: open.full(), NodeName: fuzzCloudNode, CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzCloudNode)},
		{Token: open.full(), NodeName: "Edge_1", CsrPem: fuzzCSR(f, pki.NodeCNPrefix+"Edge_1")},
		{},
	}
	for _, req := range seeds {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		req := &edgesyncv1.IssueCertificateRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			t.Skip("not an IssueCertificateRequest")
		}
		// A cluster and a Service per input: a single-use token consumed by
		// one input stays usable for the next.
		client := fake.NewClientset(fuzzObjects()...)
		core, logs := observer.New(zapcore.DebugLevel)
		svc, err := bootstrap.New(bootstrap.Config{
			Client:    client,
			Namespace: serverNamespace,
			SigningCA: func(context.Context) (*pki.CA, error) { return ca, nil },
			Bundle:    func() ([]byte, error) { return ca.CertPEM, nil },
			EdgeLabel: edgeLabel,
			Logger:    zap.New(core),
		})
		if err != nil {
			t.Fatal(err)
		}
		runService(t, svc)
		resp, err := svc.IssueCertificate(t.Context(), req)

		node := req.GetNodeName()
		tok, held := heldToken(req.GetToken())
		_, csrErr := pki.ParseNodeCSR(req.GetCsrPem(), node)
		// An existing edge node's name joins only with a token bound to it.
		want := held && tok.allows(node) && len(validation.IsDNS1123Subdomain(node)) == 0 &&
			node != fuzzCloudNode && csrErr == nil && (node != fuzzEdgeNode || tok.node == node)

		checkNoSecret(t, req, "the error", fmt.Sprint(err))
		for _, e := range logs.All() {
			checkNoSecret(t, req, "the log", fmt.Sprint(e.Message, e.ContextMap()))
		}
		if err != nil {
			st, ok := status.FromError(err)
			if !ok {
				t.Fatalf("refused without a gRPC status: %v", err)
			}
			if resp != nil {
				t.Fatalf("answered %v with a certificate too", err)
			}
			if want {
				t.Fatalf("refused a valid join of node %q with token %s: %v", node, tok.id, err)
			}
			switch st.Code() {
			case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied:
			default:
				t.Fatalf("refused with an undocumented code: %v", err)
			}
			if !held || !tok.joins {
				nameBad := len(validation.IsDNS1123Subdomain(node)) > 0
				if st.Code() != codes.Unauthenticated && (st.Code() != codes.InvalidArgument || !nameBad) {
					t.Fatalf("a caller without a valid token learned more than UNAUTHENTICATED: %v", err)
				}
			}
			return
		}
		if !want {
			t.Fatalf("issued a certificate for node %q to token %q with CSR error %v", node, req.GetToken(), csrErr)
		}
		checkNodeCertificate(t, ca, node, req.GetCsrPem(), resp.GetCertificatePem(), resp.GetCaBundlePem(), resp.GetNotAfter().AsTime())
		if tok.singleUse {
			r, err := client.CoreV1().ConfigMaps(serverNamespace).Get(t.Context(), bootstrap.UseRecordName(tok.id), metav1.GetOptions{})
			if err != nil {
				t.Fatalf("single-use token %s joined node %q without a use record: %v", tok.id, node, err)
			}
			if got := r.Data["node"]; got != node {
				t.Fatalf("single-use token %s joined node %q but records used-by %q", tok.id, node, got)
			}
			if _, err := svc.IssueCertificate(t.Context(), req); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("single-use token %s joined node %q twice: second answer %v", tok.id, node, err)
			}
		}
	})
}

// FuzzRenewCertificate hands arbitrary RenewCertificateRequest bytes to the
// real service as node edge-1 presenting its verified certificate. Whatever
// they hold, a refusal is INVALID_ARGUMENT or PERMISSION_DENIED, and a
// certificate is issued exactly when the CSR is edge-1's own: a node renews
// only its own identity, for the key it proves it holds.
func FuzzRenewCertificate(f *testing.F) {
	ca, err := pki.NewCA("fuzz-ca")
	if err != nil {
		f.Fatal(err)
	}
	kp, err := ca.IssueNode(fuzzEdgeNode)
	if err != nil {
		f.Fatal(err)
	}
	block, _ := pem.Decode(kp.CertPEM)
	callerCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		f.Fatal(err)
	}
	for _, req := range []*edgesyncv1.RenewCertificateRequest{
		{CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzEdgeNode)},
		{CsrPem: fuzzCSR(f, pki.NodeCNPrefix+fuzzCloudNode)},
		{CsrPem: fuzzCSR(f, pki.NodeCNPrefix+"edge-2")},
		{CsrPem: []byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n")},
		{},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		req := &edgesyncv1.RenewCertificateRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			t.Skip("not a RenewCertificateRequest")
		}
		svc, err := bootstrap.New(bootstrap.Config{
			Client:    fake.NewClientset(fuzzObjects()...),
			Namespace: serverNamespace,
			SigningCA: func(context.Context) (*pki.CA, error) { return ca, nil },
			Bundle:    func() ([]byte, error) { return ca.CertPEM, nil },
			EdgeLabel: edgeLabel,
		})
		if err != nil {
			t.Fatal(err)
		}
		runService(t, svc)
		ctx := peer.NewContext(t.Context(), &peer.Peer{
			Addr:     &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000},
			AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{callerCert, ca.Cert}}}},
		})
		resp, err := svc.RenewCertificate(ctx, req)

		_, csrErr := pki.ParseNodeCSR(req.GetCsrPem(), fuzzEdgeNode)
		if err != nil {
			switch status.Code(err) {
			case codes.InvalidArgument, codes.PermissionDenied:
			default:
				t.Fatalf("refused with an undocumented code: %v", err)
			}
			if resp != nil {
				t.Fatalf("answered %v with a certificate too", err)
			}
			if csrErr == nil {
				t.Fatalf("refused node %q its own renewal: %v", fuzzEdgeNode, err)
			}
			return
		}
		if csrErr != nil {
			t.Fatalf("renewed node %q with a CSR that is not its own: %v", fuzzEdgeNode, csrErr)
		}
		checkNodeCertificate(t, ca, fuzzEdgeNode, req.GetCsrPem(), resp.GetCertificatePem(), resp.GetCaBundlePem(), resp.GetNotAfter().AsTime())
	})
}

// heldToken returns the cluster's token that token is, exactly.
func heldToken(token string) (fuzzToken, bool) {
	i := slices.IndexFunc(fuzzTokens, func(tk fuzzToken) bool { return tk.full() == token })
	if i < 0 {
		return fuzzToken{}, false
	}
	return fuzzTokens[i], true
}

// checkNoSecret fails when text holds a token secret (the cluster's, or
// the well-formed one the caller sent) that the caller did not also send
// as its node name, which the service may repeat.
func checkNoSecret(t *testing.T, req *edgesyncv1.IssueCertificateRequest, where, text string) {
	t.Helper()
	secrets := make([]string, 0, len(fuzzTokens)+1)
	for _, tk := range fuzzTokens {
		secrets = append(secrets, tk.secret)
	}
	if bootstraputil.IsValidBootstrapToken(req.GetToken()) {
		_, secret, _ := strings.Cut(req.GetToken(), ".")
		secrets = append(secrets, secret)
	}
	for _, s := range secrets {
		if strings.Contains(text, s) && !strings.Contains(req.GetNodeName(), s) {
			t.Fatalf("%s holds a token secret: %s", where, text)
		}
	}
}

// checkNodeCertificate checks that certPEM is node's client certificate
// for the key of csrPEM, signed by ca, and nothing more, and that the rest
// of the answer goes with it.
func checkNodeCertificate(t *testing.T, ca *pki.CA, node string, csrPEM, certPEM, bundle []byte, notAfter time.Time) {
	t.Helper()
	block, rest := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) > 0 {
		t.Fatalf("certificate_pem is not one PEM certificate: %q", certPEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := pki.NodeName(cert); !ok || got != node || cert.Subject.CommonName != pki.NodeCNPrefix+node {
		t.Fatalf("issued %q for node %q", cert.Subject.CommonName, node)
	}
	if pki.IsAdmin(cert) || cert.IsCA || !slices.Equal(cert.Subject.Organization, []string{pki.NodeOrganization}) {
		t.Fatalf("node %q got more than a node certificate: CA %t, organizations %q", node, cert.IsCA, cert.Subject.Organization)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses)+len(cert.URIs) > 0 {
		t.Fatalf("node %q's certificate names more: %q %v %q %v", node, cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.URIs)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Fatalf("node %q's certificate has extended key usages %v, want client auth only", node, cert.ExtKeyUsage)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("node %q's certificate does not verify against the CA: %v", node, err)
	}
	csr, err := pki.ParseNodeCSR(csrPEM, node)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cert.RawSubjectPublicKeyInfo, csr.RawSubjectPublicKeyInfo) {
		t.Fatalf("node %q's certificate is not for the CSR's key", node)
	}
	if !cert.NotAfter.Equal(notAfter) {
		t.Fatalf("not_after %s, the certificate says %s", notAfter, cert.NotAfter)
	}
	if !bytes.Equal(bundle, ca.CertPEM) {
		t.Fatal("ca_bundle_pem is not the CA bundle")
	}
}

// fuzzCSR makes the CSR a joining node sends, for common name cn.
func fuzzCSR(tb testing.TB, cn string) []byte {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
