// Package bootstrap issues edge nodes their identity: it implements
// edgesync.v1.BootstrapService (api/edgesync/v1/bootstrap.proto). A node
// joins with a Kubernetes bootstrap token (a Secret in kube-system, which
// this package also creates, lists and deletes for `edgesync-server token`)
// and a CSR; it renews with the certificate it holds. The package owns the
// token rules (expiry, usage, binding to a node, single use consumed with a
// resourceVersion precondition), the CSR rules (package pki), the refusal of
// names that belong to non-edge Nodes, and a per-address rate limit.
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
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/pki"
)

// Config configures a Service. Zero fields take the defaults listed.
type Config struct {
	// Client reads bootstrap token Secrets in kube-system (get, and update
	// for single-use tokens) and Nodes (get).
	Client kubernetes.Interface
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
	// CertificateLifetime is how long node certificates last. Default one
	// year.
	CertificateLifetime time.Duration
	// AttemptsPerSecond and AttemptBurst limit calls per peer address.
	// Defaults 1 and 10.
	AttemptsPerSecond float64
	AttemptBurst      int
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
	requests *prometheus.CounterVec // by method, code
}

var _ edgesyncv1.BootstrapServiceServer = (*Service)(nil)

// New checks cfg and builds a Service.
func New(cfg Config) (*Service, error) {
	switch {
	case cfg.Client == nil:
		return nil, errors.New("bootstrap: Client is not set")
	case cfg.SigningCA == nil || cfg.Bundle == nil:
		return nil, errors.New("bootstrap: SigningCA and Bundle must be set")
	case cfg.EdgeLabel == "":
		return nil, errors.New("bootstrap: EdgeLabel is not set")
	}
	if cfg.CertificateLifetime == 0 {
		cfg.CertificateLifetime = 365 * 24 * time.Hour
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
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Service{
		cfg:    cfg,
		log:    cfg.Logger,
		limits: newPeerLimits(rate.Limit(cfg.AttemptsPerSecond), cfg.AttemptBurst),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_bootstrap_requests_total",
			Help: "BootstrapService calls, by method and gRPC code (ResourceExhausted: rate limited per peer address).",
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
	node := req.GetNodeName()
	if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "node name %q is not a valid Kubernetes node name: %s", node, strings.Join(errs, "; "))
	}
	secret, tok, err := s.checkToken(ctx, req.GetToken(), node)
	if err != nil {
		return nil, err
	}
	csr, err := pki.ParseNodeCSR(req.GetCsrPem(), node)
	if err != nil {
		return nil, csrError(err, "")
	}
	if err := s.checkNode(ctx, node); err != nil {
		return nil, err
	}
	certPEM, notAfter, bundle, err := s.sign(ctx, csr, node)
	if err != nil {
		return nil, err
	}
	if tok.SingleUse {
		if err := s.consume(ctx, secret, tok, node); err != nil {
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
	csr, err := pki.ParseNodeCSR(req.GetCsrPem(), node)
	if err != nil {
		return nil, csrError(err, fmt.Sprintf("node %q may renew only its own certificate: ", node))
	}
	if err := s.checkNode(ctx, node); err != nil {
		return nil, err
	}
	certPEM, notAfter, bundle, err := s.sign(ctx, csr, node)
	if err != nil {
		return nil, err
	}
	s.log.Info("renewed a node certificate", zap.String("node", node), zap.Time("not_after", notAfter))
	return &edgesyncv1.RenewCertificateResponse{CertificatePem: certPEM, CaBundlePem: bundle, NotAfter: timestamppb.New(notAfter)}, nil
}

// checkToken finds the token's Secret and checks every rule but the CSR.
// Messages name the token by its public ID only.
func (s *Service) checkToken(ctx context.Context, token, node string) (*corev1.Secret, *Token, error) {
	if !bootstraputil.IsValidBootstrapToken(token) {
		return nil, nil, status.Error(codes.Unauthenticated, "the token is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}); copy it as `edgesync-server token create` printed it")
	}
	id, secret, _ := strings.Cut(token, ".")
	name := bootstraputil.BootstrapTokenSecretName(id)
	obj, err := s.cfg.Client.CoreV1().Secrets(metav1.NamespaceSystem).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil, status.Errorf(codes.Unauthenticated, "token %s is unknown (deleted, or expired and cleaned up); create a new one with `edgesync-server token create`", id)
	case err != nil:
		s.log.Warn("read a bootstrap token Secret", zap.String("token_id", id), zap.Error(err))
		return nil, nil, status.Error(codes.Unavailable, "the server cannot reach the Kubernetes API to check the token; retry later")
	}
	tok := tokenFromSecret(obj)
	switch {
	case tok == nil || !secretMatches(obj, secret):
		return nil, nil, status.Errorf(codes.Unauthenticated, "token %s: wrong token; copy it as `edgesync-server token create` printed it", id)
	case !tok.Expires.IsZero() && !time.Now().Before(tok.Expires):
		return nil, nil, status.Errorf(codes.Unauthenticated, "token %s expired at %s; create a new one with `edgesync-server token create`", id, tok.Expires.UTC().Format(time.RFC3339))
	case !tok.Joins():
		return nil, nil, status.Errorf(codes.Unauthenticated, "token %s is not an edgesync join token (it needs usage-bootstrap-authentication and the group %s); create one with `edgesync-server token create`", id, Group)
	case tok.UsedBy != "":
		return nil, nil, status.Errorf(codes.Unauthenticated, "token %s was single-use and already joined node %q at %s; create a new one with `edgesync-server token create`", id, tok.UsedBy, tok.UsedAt)
	case tok.Node != "" && tok.Node != node:
		return nil, nil, status.Errorf(codes.PermissionDenied, "token %s is bound to node %q, not %q; join as %q or create a token with `edgesync-server token create --node %s`", id, tok.Node, node, tok.Node, node)
	}
	return obj, tok, nil
}

// checkNode refuses a name that belongs to a Node which is not an edge
// node: its certificate would let an edge write a cloud node's status.
func (s *Service) checkNode(ctx context.Context, node string) error {
	n, err := s.cfg.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		s.log.Warn("read a Node", zap.String("node", node), zap.Error(err))
		return status.Error(codes.Unavailable, "the server cannot reach the Kubernetes API to check the node; retry later")
	}
	if _, edge := n.Labels[s.cfg.EdgeLabel]; !edge {
		return status.Errorf(codes.PermissionDenied, "node %q exists and is not an edge node (no label %s); choose another name", node, s.cfg.EdgeLabel)
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
	certPEM, notAfter, err := ca.SignNode(csr, node, s.cfg.CertificateLifetime)
	if err != nil {
		return fail("sign a node certificate", err)
	}
	return certPEM, notAfter, bundle, nil
}

// consume marks a single-use token used, on the version that was checked:
// of two joins racing with one token, the second update conflicts.
func (s *Service) consume(ctx context.Context, secret *corev1.Secret, tok *Token, node string) error {
	used := secret.DeepCopy()
	used.Data[UsedByKey] = []byte(node)
	used.Data[UsedAtKey] = []byte(time.Now().UTC().Format(time.RFC3339))
	// Update sends the resourceVersion read in checkToken: a precondition.
	_, err := s.cfg.Client.CoreV1().Secrets(metav1.NamespaceSystem).Update(ctx, used, metav1.UpdateOptions{FieldManager: "edgesync-server"})
	switch {
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
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
