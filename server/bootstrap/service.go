// Package bootstrap issues edge nodes their identity: it implements
// edgesync.v1.BootstrapService (api/edgesync/v1/bootstrap.proto). A node
// joins with a Kubernetes bootstrap token (a Secret in kube-system, which
// this package also creates, lists and deletes for `edgesync-server token`)
// and a CSR; it renews with the certificate it holds. The package owns the
// token rules (expiry, usage, binding to a node, single use consumed by
// creating a record in the server's namespace), the CSR rules (package
// pki), the refusal of names that belong to non-edge Nodes, the rule that
// an existing edge node's name joins only with a token bound to it, and
// the rate limits (per address, and for all addresses together).
//
// Everything a join reads comes from informer caches (Run): an attempt
// costs the API server nothing until its token is proven, and then one
// create for a single-use token. Certificates carry the node's revocation
// generation (package server/revocation); tokens bound to a revoked node
// and made before its revocation no longer join it.
//
// The server registers the Service on its port (server.Options.Bootstrap).
// Its AuthFuncOverride lets GetCACertificate and IssueCertificate through
// without a client certificate and requires a node certificate for
// RenewCertificate; the server requires a certificate for everything else.
//
// # Metrics
//
// edgesync_bootstrap_requests_total{method,code}: every call, by its gRPC
// code (RESOURCE_EXHAUSTED for rate-limited ones).
package bootstrap

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/pki"
	"github.com/edgesync/edgesync/server/revocation"
)

// Config configures a Service. Zero fields take the defaults listed.
type Config struct {
	// Client watches bootstrap token Secrets in kube-system and Nodes
	// (list, watch) and creates the use records of single-use tokens in
	// Namespace.
	Client kubernetes.Interface
	// Namespace is the server's own namespace, where single-use tokens'
	// use records are kept (UseRecordName). Required.
	Namespace string
	// Revocations, when set, gives the generation node certificates are
	// signed at and refuses tokens bound to a revoked node that predate
	// its revocation.
	Revocations *revocation.List
	// SigningCA returns the CA that signs node certificates; it is asked
	// at every signature, so a rotated CA is used at once. Its key is
	// never logged.
	SigningCA func(ctx context.Context) (*pki.CA, error)
	// Bundle returns the CA bundle edges trust (the server's client CA
	// file): GetCACertificate returns it.
	Bundle func() ([]byte, error)
	// EdgeLabel marks edge Nodes; a name that belongs to a Node without it
	// is refused. Required.
	EdgeLabel string
	// CertificateLifetime is how long node certificates last. Default
	// DefaultCertificateLifetime.
	CertificateLifetime time.Duration
	// AttemptsPerSecond and AttemptBurst limit calls per peer address.
	// Defaults 1 and 10.
	AttemptsPerSecond float64
	AttemptBurst      int
	// GlobalAttemptsPerSecond and GlobalAttemptBurst limit the calls of
	// all addresses together, so that callers rotating addresses cannot
	// make the server sign (or check tokens) without bound. Defaults 20
	// and 100.
	GlobalAttemptsPerSecond float64
	GlobalAttemptBurst      int
	// Registerer receives the metrics; nil means none.
	Registerer prometheus.Registerer
	// Logger receives the logs; nil means none.
	Logger *zap.Logger
}

// Service implements edgesync.v1.BootstrapService.
type Service struct {
	edgesyncv1.UnimplementedBootstrapServiceServer

	cfg      Config
	log      *zap.Logger
	limits   *peerLimits
	global   *rate.Limiter
	caches   *caches
	started  atomic.Bool            // Run was called
	synced   chan struct{}          // closed once the caches synced
	requests *prometheus.CounterVec // by method, code
}

// DefaultCertificateLifetime is how long node certificates last unless
// configured: 30 days. Edges renew at two thirds of the lifetime over
// their live connection (edgeclient), so a shorter lifetime costs nothing
// while it bounds how long a stolen certificate works on a cluster that
// never revokes it; an edge offline for longer than its lifetime joins
// again with a token.
const DefaultCertificateLifetime = 30 * 24 * time.Hour

var _ edgesyncv1.BootstrapServiceServer = (*Service)(nil)

// New checks cfg and builds a Service.
func New(cfg Config) (*Service, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("bootstrap: Client is not set")
	case cfg.Namespace == "":
		return nil, errors.New("bootstrap: Namespace is not set (the server's namespace, for single-use token records)")
	case cfg.SigningCA == nil || cfg.Bundle == nil:
		return nil, errors.New("bootstrap: SigningCA and Bundle must be set")
	case cfg.EdgeLabel == "":
		return nil, errors.New("bootstrap: EdgeLabel is not set")
	}
	if cfg.CertificateLifetime == 0 {
		cfg.CertificateLifetime = DefaultCertificateLifetime
	}
	if cfg.CertificateLifetime < time.Minute {
		return nil, fmt.Errorf("bootstrap: CertificateLifetime must be at least a minute, got %s", cfg.CertificateLifetime)
	}
	if cfg.AttemptsPerSecond == 0 {
		cfg.AttemptsPerSecond = 1
	}
	if cfg.AttemptBurst == 0 {
		cfg.AttemptBurst = 10
	}
	if cfg.GlobalAttemptsPerSecond == 0 {
		cfg.GlobalAttemptsPerSecond = 20
	}
	if cfg.GlobalAttemptBurst == 0 {
		cfg.GlobalAttemptBurst = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c, err := newCaches(cfg)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	s := &Service{
		cfg:    cfg,
		log:    cfg.Logger,
		caches: c,
		synced: make(chan struct{}),
		global: rate.NewLimiter(rate.Limit(cfg.GlobalAttemptsPerSecond), cfg.GlobalAttemptBurst),
		limits: newPeerLimits(rate.Limit(cfg.AttemptsPerSecond), cfg.AttemptBurst),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_bootstrap_requests_total",
			Help: "BootstrapService calls, by method and gRPC code (ResourceExhausted: rate limited per peer address or for all together).",
		}, []string{"method", "code"}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(s.requests); err != nil {
			return nil, fmt.Errorf("bootstrap: register metrics: %w", err)
		}
	}
	return s, nil
}

// AuthFuncOverride is the auth interceptor's hook: joining needs no client
// certificate, renewing needs a node certificate.
func (s *Service) AuthFuncOverride(ctx context.Context, fullMethod string) (context.Context, error) {
	if fullMethod == edgesyncv1.BootstrapService_RenewCertificate_FullMethodName {
		if _, err := callerNode(ctx); err != nil {
			s.count("RenewCertificate", err)
			return nil, err
		}
	}
	return ctx, nil
}

// GetCACertificate returns the CA bundle.
func (s *Service) GetCACertificate(ctx context.Context, _ *edgesyncv1.GetCACertificateRequest) (resp *edgesyncv1.GetCACertificateResponse, err error) {
	defer func() { s.count("GetCACertificate", err) }()
	if err := s.limit(ctx); err != nil {
		return nil, err
	}
	bundle, err := s.cfg.Bundle()
	if err != nil {
		s.log.Error("read the CA bundle", zap.Error(err))
		return nil, status.Error(codes.Internal, "the server cannot read its CA bundle; see its log")
	}
	return &edgesyncv1.GetCACertificateResponse{CaBundlePem: bundle}, nil
}

// IssueCertificate signs a joining node's CSR in exchange for a token.
func (s *Service) IssueCertificate(ctx context.Context, req *edgesyncv1.IssueCertificateRequest) (resp *edgesyncv1.IssueCertificateResponse, err error) {
	defer func() { s.count("IssueCertificate", err) }()
	if err := s.limit(ctx); err != nil {
		return nil, err
	}
	if err := s.ready(); err != nil {
		return nil, err
	}
	node := req.GetNodeName()
	if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "node name %q is not a valid Kubernetes node name: %s", node, strings.Join(errs, "; "))
	}
	tok, err := s.checkToken(req.GetToken(), node)
	if err != nil {
		return nil, err
	}
	csr, err := pki.ParseNodeCSR(req.GetCsrPem(), node)
	if err != nil {
		return nil, csrError(err, "")
	}
	existing, err := s.checkNode(node)
	if err != nil {
		return nil, err
	}
	if existing && tok.Node == "" {
		return nil, status.Errorf(codes.PermissionDenied,
			"node %q already exists: token %s is not bound to a node, and only a token bound to %q may join an existing node (`edgesync-server token create --node %s`)",
			node, tok.ID, node, node)
	}
	certPEM, notAfter, bundle, err := s.sign(ctx, csr, node)
	if err != nil {
		return nil, err
	}
	if tok.SingleUse {
		if err := s.consume(ctx, tok, node); err != nil {
			return nil, err
		}
	}
	s.log.Info("issued a node certificate for a bootstrap token", zap.String("node", node), zap.String("token_id", tok.ID),
		zap.Time("not_after", notAfter), zap.String("peer", peerAddr(ctx)))
	return &edgesyncv1.IssueCertificateResponse{CertificatePem: certPEM, CaBundlePem: bundle, NotAfter: timestamppb.New(notAfter)}, nil
}

// RenewCertificate signs a new CSR for the caller's own node.
func (s *Service) RenewCertificate(ctx context.Context, req *edgesyncv1.RenewCertificateRequest) (resp *edgesyncv1.RenewCertificateResponse, err error) {
	defer func() { s.count("RenewCertificate", err) }()
	node, err := callerNode(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.limit(ctx); err != nil {
		return nil, err
	}
	if err := s.ready(); err != nil {
		return nil, err
	}
	csr, err := pki.ParseNodeCSR(req.GetCsrPem(), node)
	if err != nil {
		return nil, csrError(err, fmt.Sprintf("node %q may renew only its own certificate: ", node))
	}
	if _, err := s.checkNode(node); err != nil {
		return nil, err
	}
	certPEM, notAfter, bundle, err := s.sign(ctx, csr, node)
	if err != nil {
		return nil, err
	}
	s.log.Info("renewed a node certificate", zap.String("node", node), zap.Time("not_after", notAfter))
	return &edgesyncv1.RenewCertificateResponse{CertificatePem: certPEM, CaBundlePem: bundle, NotAfter: timestamppb.New(notAfter)}, nil
}

// checkToken finds the token's Secret in the cache and checks every rule
// but the CSR and the node's existence. Messages name the token by its
// public ID only.
func (s *Service) checkToken(token, node string) (*Token, error) {
	if !bootstraputil.IsValidBootstrapToken(token) {
		return nil, status.Error(codes.Unauthenticated, "the token is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}); copy it as `edgesync-server token create` printed it")
	}
	id, secret, _ := strings.Cut(token, ".")
	obj, err := s.caches.tokens.Secrets(metav1.NamespaceSystem).Get(bootstraputil.BootstrapTokenSecretName(id))
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "token %s is unknown (deleted, or expired and cleaned up); create a new one with `edgesync-server token create`", id)
	}
	tok := tokenFromSecret(obj)
	switch {
	case tok == nil || !secretMatches(obj, secret):
		return nil, status.Errorf(codes.Unauthenticated, "token %s: wrong token; copy it as `edgesync-server token create` printed it", id)
	case !tok.Expires.IsZero() && !time.Now().Before(tok.Expires):
		return nil, status.Errorf(codes.Unauthenticated, "token %s expired at %s; create a new one with `edgesync-server token create`", id, tok.Expires.UTC().Format(time.RFC3339))
	case !tok.Joins():
		return nil, status.Errorf(codes.Unauthenticated, "token %s is not an edgesync join token (it needs usage-bootstrap-authentication and the group %s); create one with `edgesync-server token create`", id, Group)
	case tok.UsedBy != "":
		return nil, status.Errorf(codes.Unauthenticated, "token %s was single-use and already joined node %q at %s; create a new one with `edgesync-server token create`", id, tok.UsedBy, tok.UsedAt)
	case tok.Node != "" && tok.Node != node:
		return nil, status.Errorf(codes.PermissionDenied, "token %s is bound to node %q, not %q; join as %q or create a token with `edgesync-server token create --node %s`", id, tok.Node, node, tok.Node, node)
	}
	if tok.SingleUse {
		if by, at, used := s.caches.useRecord(id); used {
			return nil, status.Errorf(codes.Unauthenticated, "token %s was single-use and already joined node %q at %s; create a new one with `edgesync-server token create`", id, by, at)
		}
	}
	if s.cfg.Revocations != nil && tok.Node != "" {
		// Both times have one-second resolution: a token made in the
		// second of the revocation is taken as made after it, so that
		// `node revoke` followed at once by `token create` works (`node
		// revoke` deletes the tokens bound to the node that exist then).
		if e := s.cfg.Revocations.Entry(tok.Node); e.Generation > 0 && obj.CreationTimestamp.Time.Before(e.RevokedAt) {
			return nil, status.Errorf(codes.PermissionDenied, "token %s was made before node %q was revoked (%s); create a new one with `edgesync-server token create --node %s`",
				id, tok.Node, e.RevokedAt.Format(time.RFC3339), tok.Node)
		}
	}
	return tok, nil
}

// checkNode refuses a name that belongs to a Node which is not an edge
// node (its certificate would let an edge write a cloud node's status),
// and reports whether an edge Node of that name exists.
func (s *Service) checkNode(node string) (existing bool, err error) {
	n, err := s.caches.nodes.Get(node)
	if err != nil {
		return false, nil
	}
	if _, edge := n.Labels[s.cfg.EdgeLabel]; !edge {
		return true, status.Errorf(codes.PermissionDenied, "node %q exists and is not an edge node (no label %s); choose another name", node, s.cfg.EdgeLabel)
	}
	return true, nil
}

// ready answers UNAVAILABLE until the caches have synced.
func (s *Service) ready() error {
	select {
	case <-s.synced:
	default:
		return status.Error(codes.Unavailable, "the server is still loading its tokens and nodes; retry shortly")
	}
	if s.cfg.Revocations != nil && !s.cfg.Revocations.Synced() {
		return status.Error(codes.Unavailable, "the server is still loading its tokens and nodes; retry shortly")
	}
	return nil
}

func (s *Service) sign(ctx context.Context, csr *x509.CertificateRequest, node string) ([]byte, time.Time, []byte, error) {
	fail := func(what string, err error) ([]byte, time.Time, []byte, error) {
		s.log.Error(what, zap.String("node", node), zap.Error(err))
		return nil, time.Time{}, nil, status.Error(codes.Internal, "the server cannot sign certificates right now; see its log")
	}
	ca, err := s.cfg.SigningCA(ctx)
	if err != nil {
		return fail("load the signing CA", err)
	}
	bundle, err := s.cfg.Bundle()
	if err != nil {
		return fail("read the CA bundle", err)
	}
	var generation int64
	if s.cfg.Revocations != nil {
		generation = s.cfg.Revocations.Entry(node).Generation
	}
	certPEM, notAfter, err := ca.SignNodeGeneration(csr, node, s.cfg.CertificateLifetime, generation)
	if err != nil {
		return fail("sign a node certificate", err)
	}
	return certPEM, notAfter, bundle, nil
}

// consume records that node used the single-use token tok: of two joins
// racing with one token, the second create fails.
func (s *Service) consume(ctx context.Context, tok *Token, node string) error {
	err := s.recordUse(ctx, tok, node)
	switch {
	case apierrors.IsAlreadyExists(err):
		// A live read, once the token is proven: who used it.
		if r, err := s.cfg.Client.CoreV1().ConfigMaps(s.cfg.Namespace).Get(ctx, UseRecordName(tok.ID), metav1.GetOptions{}); err == nil {
			return status.Errorf(codes.Unauthenticated, "token %s was single-use and already joined node %q at %s; create a new one with `edgesync-server token create`", tok.ID, r.Data["node"], r.Data["usedAt"])
		}
		return status.Errorf(codes.Unauthenticated, "token %s was single-use and another node used it at the same moment; create a new one with `edgesync-server token create`", tok.ID)
	case err != nil:
		s.log.Warn("consume a single-use bootstrap token", zap.String("token_id", tok.ID), zap.Error(err))
		return status.Error(codes.Unavailable, "the server cannot reach the Kubernetes API to consume the token; retry later")
	}
	return nil
}

// csrError is INVALID_ARGUMENT for a malformed CSR, PERMISSION_DENIED for
// one that names another node (its message then starts with otherNode).
func csrError(err error, otherNode string) error {
	if errors.Is(err, pki.ErrOtherNode) {
		return status.Error(codes.PermissionDenied, otherNode+err.Error())
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

func (s *Service) limit(ctx context.Context) error {
	if !s.limits.allow(peerHost(ctx)) {
		return status.Error(codes.ResourceExhausted, "too many join attempts from this address; wait a few seconds and retry")
	}
	if !s.global.Allow() {
		return status.Error(codes.ResourceExhausted, "too many join attempts at this server right now; wait a few seconds and retry")
	}
	return nil
}

func (s *Service) count(method string, err error) {
	s.requests.WithLabelValues(method, status.Code(err).String()).Inc()
}

// callerNode returns the node of the verified client certificate.
func callerNode(ctx context.Context) (string, error) {
	node, cert := pki.PeerNode(ctx)
	switch {
	case node != "":
		return node, nil
	case cert != nil:
		return "", status.Errorf(codes.PermissionDenied, "RenewCertificate needs a node certificate (common name %q followed by the node name); certificate %q is not one", pki.NodeCNPrefix, cert.Subject.CommonName)
	}
	return "", status.Error(codes.Unauthenticated, "RenewCertificate needs the node's current client certificate; a node without one joins with IssueCertificate and a token")
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// peerHost is the peer's IP address, the unit of rate limiting.
func peerHost(ctx context.Context) string {
	addr := peerAddr(ctx)
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
