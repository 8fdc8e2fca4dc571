package bootstrap_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/bootstrap"
	"github.com/edgesync/edgesync/server/pki"
)

const edgeLabel = "node-role.kubernetes.io/edge"

// env is a sync server with the BootstrapService, which reaches the
// devcluster as the server's ServiceAccount (bound by deploy/rbac only).
type env struct {
	*servertest.Env
	admin   kubernetes.Interface // the test's own client
	svc     *bootstrap.Service
	ctrls   *feedtest.Controllers
	metrics *prometheus.Registry
}

func start(t *testing.T, change func(*bootstrap.Config)) *env {
	t.Helper()
	adminCfg := testcluster.RESTConfig(t)
	testcluster.ApplyRBAC(t, adminCfg, repo.Root(t))
	asServer, err := kubernetes.NewForConfig(testcluster.AsServer(adminCfg))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{admin: testcluster.Client(t), ctrls: feedtest.New(), metrics: prometheus.NewRegistry()}
	var srvEnv *servertest.Env // set below, before any call arrives
	cfg := bootstrap.Config{
		Client:            asServer,
		SigningCA:         func(context.Context) (*pki.CA, error) { return srvEnv.CA, nil },
		Bundle:            func() ([]byte, error) { return srvEnv.CA.CertPEM, nil },
		EdgeLabel:         edgeLabel,
		Namespace:         serverNamespace,
		AttemptsPerSecond: 100, AttemptBurst: 100,
		Registerer: e.metrics,
	}
	if change != nil {
		change(&cfg)
	}
	svc, err := bootstrap.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runService(t, svc)
	e.svc = svc
	srvEnv = servertest.Start(t, e.ctrls, func(o *server.Options) { o.Bootstrap = svc })
	e.Env = srvEnv
	return e
}

// serverNamespace is the server's namespace of deploy/rbac, where it keeps
// its records.
const serverNamespace = "edgesync-system"

// runService runs svc until the test ends and waits for its caches.
func runService(t testing.TB, svc *bootstrap.Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("bootstrap Run: %v", err)
		}
	})
	select {
	case <-svc.Synced():
	case err := <-done:
		t.Fatalf("bootstrap Run ended before its caches synced: %v", err)
	}
}

// token creates a join token and deletes it when the test ends.
func (e *env) token(t *testing.T, opts bootstrap.TokenOptions) (string, *bootstrap.Token) {
	t.Helper()
	full, tok, err := bootstrap.CreateToken(t.Context(), e.admin, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bootstrap.DeleteToken(context.Background(), e.admin, tok.ID) })
	e.cached(t, tok.ID, nil)
	return full, tok
}

// cached waits until the service's caches hold the token (one check
// accepts, when set) and the nodes: joining reads only its caches.
func (e *env) cached(t *testing.T, tokenID string, check func(*bootstrap.Token) bool, nodes ...string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(30 * time.Second)
	for !e.svc.Cached(tokenID, check, nodes...) {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("the bootstrap caches did not get token %q and nodes %v within 30s", tokenID, nodes)
		}
	}
}

func (e *env) hash() string { return pki.CAHash(e.CA.Cert) }

// anonymous dials the server verifying it, without a client certificate.
func (e *env) anonymous(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: e.CA.Pool(), MinVersion: tls.VersionTLS12})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (e *env) requests(method, code string) float64 { return e.calls()[method+"/"+code] }

// calls reads edgesync_bootstrap_requests_total as "method/code" -> count.
func (e *env) calls() map[string]float64 {
	out := map[string]float64{}
	mfs, _ := e.metrics.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "edgesync_bootstrap_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[labels["method"]+"/"+labels["code"]] += m.GetCounter().GetValue()
		}
	}
	return out
}

func csrFor(t *testing.T, cn string, key any) []byte {
	t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestJoinThenSync(t *testing.T) {
	e := start(t, nil)
	node := testcluster.UniqueName("edge")
	token, tok := e.token(t, bootstrap.TokenOptions{Node: node, TTL: time.Hour, SingleUse: true})
	dir := t.TempDir()

	joined, err := edgeclient.Join(t.Context(), edgeclient.JoinConfig{
		Server: e.Addr, Token: token, CACertHash: e.hash(), NodeName: node, Dir: filepath.Join(dir, "pki"),
	})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	for _, f := range []string{joined.CAFile, joined.CertFile, joined.KeyFile} {
		info, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, info.Mode().Perm())
		}
	}
	pair, err := tls.LoadX509KeyPair(joined.CertFile, joined.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if cn := pair.Leaf.Subject.CommonName; cn != "system:node:"+node {
		t.Fatalf("joined certificate has CN %q, want system:node:%s", cn, node)
	}
	if life := time.Until(pair.Leaf.NotAfter); life < 29*24*time.Hour || life > 30*24*time.Hour {
		t.Errorf("certificate expires in %s, want the default of 30 days", life)
	}

	// The single-use token is consumed, recorded in the server's own
	// namespace (it writes nothing in kube-system), and says by whom.
	r, err := e.admin.CoreV1().ConfigMaps(serverNamespace).Get(t.Context(), bootstrap.UseRecordName(tok.ID), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Data["node"]; got != node {
		t.Errorf("token use record names node %q, want %q", got, node)
	}
	tokens, err := bootstrap.ListTokens(t.Context(), e.admin, serverNamespace)
	if err != nil {
		t.Fatal(err)
	}
	for _, lt := range tokens {
		if lt.ID == tok.ID && lt.UsedBy != node {
			t.Errorf("token list says %s was used by %q, want %q", tok.ID, lt.UsedBy, node)
		}
	}

	// The files are all a client needs.
	c, err := edgeclient.New(edgeclient.Config{
		Server: e.Addr, CAFile: joined.CAFile, CertFile: joined.CertFile, KeyFile: joined.KeyFile,
		NodeName: node, StoreDir: filepath.Join(dir, "store"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	if _, err := c.WaitFor(t.Context(), func(s edgeclient.State) bool { return s.Synced }); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestTokensRefused(t *testing.T) {
	e := start(t, nil)
	client := edgesyncv1.NewBootstrapServiceClient(e.anonymous(t))
	issue := func(token, node string, csr []byte) error {
		if csr == nil {
			csr = csrFor(t, "system:node:"+node, nil)
		}
		_, err := client.IssueCertificate(t.Context(), &edgesyncv1.IssueCertificateRequest{Token: token, NodeName: node, CsrPem: csr})
		return err
	}
	node := testcluster.UniqueName("edge")
	good, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour})

	expired, expiredTok := e.token(t, bootstrap.TokenOptions{TTL: time.Hour})
	s, err := e.admin.CoreV1().Secrets(metav1.NamespaceSystem).Get(t.Context(), "bootstrap-token-"+expiredTok.ID, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Data[bootstrapapi.BootstrapTokenExpirationKey] = []byte(time.Now().Add(-time.Minute).UTC().Format(time.RFC3339))
	if _, err := e.admin.CoreV1().Secrets(metav1.NamespaceSystem).Update(t.Context(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.cached(t, expiredTok.ID, func(tok *bootstrap.Token) bool { return !tok.Expires.IsZero() && tok.Expires.Before(time.Now()) })

	bound, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour, Node: "someone-else"})
	single, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour, SingleUse: true})
	if err := issue(single, node, nil); err != nil {
		t.Fatalf("first use of a single-use token: %v", err)
	}

	// A kubelet's kubeadm token: no edgesync group.
	kubeletTok, err := bootstraputil.GenerateBootstrapToken()
	if err != nil {
		t.Fatal(err)
	}
	kubelet := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + kubeletTok[:6], Namespace: metav1.NamespaceSystem},
		Type:       bootstrapapi.SecretTypeBootstrapToken,
		StringData: map[string]string{"token-id": kubeletTok[:6], "token-secret": kubeletTok[7:], "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true"},
	}
	if _, err := e.admin.CoreV1().Secrets(metav1.NamespaceSystem).Create(t.Context(), kubelet, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bootstrap.DeleteToken(context.Background(), e.admin, kubeletTok) })
	e.cached(t, kubeletTok[:6], nil)

	// A cloud node's name.
	cloud := testcluster.UniqueName("cloud")
	if _, err := e.admin.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: cloud}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.admin.CoreV1().Nodes().Delete(context.Background(), cloud, metav1.DeleteOptions{}) })

	// An existing edge node's name: an unbound token may not take it over
	// (its certificate would read that node's Secrets and tokens); a token
	// bound to it may (the node joining again).
	existing := testcluster.UniqueName("edge-existing")
	if _, err := e.admin.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: existing, Labels: map[string]string{edgeLabel: ""}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.admin.CoreV1().Nodes().Delete(context.Background(), existing, metav1.DeleteOptions{}) })
	boundExisting, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour, Node: existing, SingleUse: true})
	e.cached(t, "", nil, cloud, existing)

	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := good[:6]
	for _, tc := range []struct {
		name      string
		token     string
		node      string
		csr       []byte
		code      codes.Code
		saying    string
		notSaying string
	}{
		{"malformed token", "not-a-token", node, nil, codes.Unauthenticated, "not a bootstrap token", ""},
		{"unknown token", "zzzzzz.0123456789abcdef", node, nil, codes.Unauthenticated, "token zzzzzz is unknown", ""},
		{"wrong secret", id + ".0000000000000000", node, nil, codes.Unauthenticated, "wrong token", "0000000000000000"},
		{"expired token", expired, node, nil, codes.Unauthenticated, "expired at", expired[7:]},
		{"reused single-use token", single, testcluster.UniqueName("edge"), nil, codes.Unauthenticated, "already joined node \"" + node + "\"", single[7:]},
		{"token bound to another node", bound, node, nil, codes.PermissionDenied, "bound to node \"someone-else\"", bound[7:]},
		{"kubelet token", kubeletTok, node, nil, codes.Unauthenticated, "not an edgesync join token", kubeletTok[7:]},
		{"CSR for another name", good, node, csrFor(t, "system:node:other", nil), codes.PermissionDenied, "want \"system:node:" + node + "\"", ""},
		{"CSR with an extra subject", good, node, func() []byte {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:masters"}}}, key)
			return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
		}(), codes.InvalidArgument, "subject must be exactly", ""},
		{"RSA 1024 key", good, node, csrFor(t, "system:node:"+node, smallRSA), codes.InvalidArgument, "at least 2048 bits", ""},
		{"ECDSA P-384 key", good, node, csrFor(t, "system:node:"+node, p384), codes.InvalidArgument, "P-256", ""},
		{"not a CSR", good, node, []byte("hello"), codes.InvalidArgument, "CERTIFICATE REQUEST", ""},
		{"invalid node name", good, "Edge_1", nil, codes.InvalidArgument, "not a valid Kubernetes node name", ""},
		{"cloud node's name", good, cloud, nil, codes.PermissionDenied, "not an edge node", ""},
		{"unbound token for an existing edge node", good, existing, nil, codes.PermissionDenied,
			"node \"" + existing + "\" already exists: token " + id + " is not bound to a node, and only a token bound to \"" + existing + "\" may join an existing node", good[7:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := issue(tc.token, tc.node, tc.csr)
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.saying) {
				t.Fatalf("IssueCertificate: %v, want %v saying %q", err, tc.code, tc.saying)
			}
			if tc.notSaying != "" && strings.Contains(st.Message(), tc.notSaying) {
				t.Fatalf("IssueCertificate: %q gives the token's secret away", st.Message())
			}
		})
	}
	if err := issue(good, node, nil); err != nil {
		t.Fatalf("a good token after all refusals: %v", err)
	}
	if err := issue(boundExisting, existing, nil); err != nil {
		t.Fatalf("a token bound to an existing edge node, joining it: %v", err)
	}
	if got := e.requests("IssueCertificate", "Unauthenticated"); got != 6 {
		t.Errorf("edgesync_bootstrap_requests_total{method=IssueCertificate,code=Unauthenticated} = %v, want 6", got)
	}
}

func TestSingleUseTokenJoinsOneNodeUnderRace(t *testing.T) {
	e := start(t, nil)
	token, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour, SingleUse: true})
	client := edgesyncv1.NewBootstrapServiceClient(e.anonymous(t))
	const racers = 4
	var wg sync.WaitGroup
	errs := make([]error, racers)
	for i := range racers {
		node := testcluster.UniqueName("edge")
		csr := csrFor(t, "system:node:"+node, nil)
		wg.Go(func() {
			_, errs[i] = client.IssueCertificate(t.Context(), &edgesyncv1.IssueCertificateRequest{Token: token, NodeName: node, CsrPem: csr})
		})
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.Unauthenticated:
		default:
			t.Errorf("racing join: %v, want OK or Unauthenticated", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d racing joins with one single-use token succeeded, want exactly 1 (%v)", ok, racers, errs)
	}
}

func TestCAHashMismatchSendsNoToken(t *testing.T) {
	e := start(t, nil)
	token, _ := e.token(t, bootstrap.TokenOptions{TTL: time.Hour})
	other, err := pki.NewCA("someone-elses-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err = edgeclient.Join(t.Context(), edgeclient.JoinConfig{
		Server: e.Addr, Token: token, CACertHash: pki.CAHash(other.Cert), NodeName: "edge-x", Dir: dir,
	})
	if !errors.Is(err, edgeclient.ErrCAHashMismatch) {
		t.Fatalf("join with another CA's hash: %v, want ErrCAHashMismatch", err)
	}
	if strings.Contains(err.Error(), token[7:]) {
		t.Fatalf("join error %q shows the token's secret", err)
	}
	if got := e.calls(); len(got) != 1 || got["GetCACertificate/OK"] != 1 {
		t.Errorf("the server saw calls %v, want GetCACertificate only", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused join wrote %d files", len(entries))
	}
	if _, err := edgeclient.Join(t.Context(), edgeclient.JoinConfig{Server: e.Addr, Token: token, CACertHash: "sha256:abc", NodeName: "edge-x", Dir: dir}); err == nil || !strings.Contains(err.Error(), "64 hex digits") {
		t.Fatalf("join with a malformed hash: %v, want it to say the form", err)
	}
}

// TestOnlyJoiningWithoutCertificate: with the BootstrapService on, a
// client without a certificate completes the TLS handshake, and every call
// but GetCACertificate and IssueCertificate is refused.
func TestOnlyJoiningWithoutCertificate(t *testing.T) {
	e := start(t, nil)
	cc := e.anonymous(t)
	if _, err := edgesyncv1.NewBootstrapServiceClient(cc).GetCACertificate(t.Context(), &edgesyncv1.GetCACertificateRequest{}); err != nil {
		t.Fatalf("GetCACertificate without a certificate: %v", err)
	}
	refused := map[string]func() error{
		"health": func() error {
			_, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{})
			return err
		},
		"AdminService": func() error {
			_, err := edgesyncv1.NewAdminServiceClient(cc).ListSessions(t.Context(), &edgesyncv1.ListSessionsRequest{})
			return err
		},
		"Sync": func() error {
			stream, err := edgesyncv1.NewSyncServiceClient(cc).Sync(t.Context())
			if err != nil {
				return err
			}
			_ = stream.Send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "edge-1"}}})
			_, err = stream.Recv()
			return err
		},
		"reflection": func() error {
			stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(t.Context())
			if err != nil {
				return err
			}
			_ = stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
			_, err = stream.Recv()
			return err
		},
		"RenewCertificate": func() error {
			_, err := edgesyncv1.NewBootstrapServiceClient(cc).RenewCertificate(t.Context(), &edgesyncv1.RenewCertificateRequest{CsrPem: csrFor(t, "system:node:edge-1", nil)})
			return err
		},
	}
	for name, call := range refused {
		t.Run(name, func(t *testing.T) {
			if err := call(); status.Code(err) != codes.Unauthenticated {
				t.Fatalf("%s without a client certificate: %v, want Unauthenticated", name, err)
			}
		})
	}
	t.Run("RenewCertificate for another node", func(t *testing.T) {
		_, err := edgesyncv1.NewBootstrapServiceClient(e.DialNode(t, "edge-a")).RenewCertificate(t.Context(),
			&edgesyncv1.RenewCertificateRequest{CsrPem: csrFor(t, "system:node:edge-b", nil)})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("RenewCertificate by edge-a for edge-b: %v, want PermissionDenied", err)
		}
	})
	t.Run("RenewCertificate with an admin certificate", func(t *testing.T) {
		_, err := edgesyncv1.NewBootstrapServiceClient(e.DialAdmin(t)).RenewCertificate(t.Context(),
			&edgesyncv1.RenewCertificateRequest{CsrPem: csrFor(t, "system:node:edge-b", nil)})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("RenewCertificate with an admin certificate: %v, want PermissionDenied", err)
		}
	})
}

func TestAttemptsAreRateLimited(t *testing.T) {
	e := start(t, func(c *bootstrap.Config) { c.AttemptsPerSecond, c.AttemptBurst = 0.001, 3 })
	client := edgesyncv1.NewBootstrapServiceClient(e.anonymous(t))
	for i := range 3 {
		_, err := client.IssueCertificate(t.Context(), &edgesyncv1.IssueCertificateRequest{Token: "zzzzzz.0123456789abcdef", NodeName: "edge-1"})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("attempt %d: %v, want Unauthenticated", i+1, err)
		}
	}
	_, err := client.IssueCertificate(t.Context(), &edgesyncv1.IssueCertificateRequest{Token: "zzzzzz.0123456789abcdef", NodeName: "edge-1"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("attempt 4: %v, want ResourceExhausted", err)
	}
	if got := e.requests("IssueCertificate", "ResourceExhausted"); got != 1 {
		t.Errorf("rate-limited attempts counted %v, want 1", got)
	}
}
