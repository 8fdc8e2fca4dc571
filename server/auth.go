package server

import (
	"context"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgesync/edgesync/server/pki"
)

// identity is who a verified client certificate belongs to.
type identity struct {
	// node is set for node certificates (CN system:node:<node>).
	node string
	// admin is true for certificates of organization edgesync:admins.
	admin bool
	// subject is the certificate's common name, for messages and logs.
	subject string
}

type nodeKey struct{}

// peerIdentity reads the verified client certificate of the call.
func peerIdentity(ctx context.Context) (identity, bool) {
	node, cert := pki.PeerNode(ctx)
	if cert == nil {
		return identity{}, false
	}
	return identity{node: node, admin: pki.IsAdmin(cert), subject: cert.Subject.CommonName}, true
}

// notRevoked runs before the auth rules, for every call on the port: a
// call made with a revoked node certificate is refused PERMISSION_DENIED,
// whatever it calls. It is an interceptor of its own, not an auth rule,
// because a service's AuthFuncOverride replaces the auth rules and no
// service may opt out of this one.
func (s *Server) notRevoked(ctx context.Context) error {
	if s.opts.Revocations == nil {
		return nil
	}
	if cert := pki.PeerCertificate(ctx); cert != nil {
		return s.opts.Revocations.Check(cert)
	}
	return nil
}

func (s *Server) unaryNotRevoked(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.notRevoked(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamNotRevoked(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.notRevoked(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

// authenticated is the default rule (health, reflection): any verified
// client certificate.
func authenticated(ctx context.Context) (context.Context, error) {
	if _, ok := peerIdentity(ctx); !ok {
		return nil, status.Error(codes.Unauthenticated, "a client certificate signed by the server's CA is required")
	}
	return ctx, nil
}

// authorizeNode admits node certificates only and records the node name.
func authorizeNode(ctx context.Context) (context.Context, error) {
	id, ok := peerIdentity(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "a client certificate signed by the server's CA is required")
	}
	if id.node == "" {
		return nil, status.Errorf(codes.PermissionDenied, "Sync needs a node certificate (common name %q followed by the node name); certificate %q is not one", pki.NodeCNPrefix, id.subject)
	}
	return context.WithValue(ctx, nodeKey{}, id.node), nil
}

// authorizeAdmin admits admin certificates only.
func authorizeAdmin(ctx context.Context) (context.Context, error) {
	id, ok := peerIdentity(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "a client certificate signed by the server's CA is required")
	}
	if !id.admin {
		return nil, status.Errorf(codes.PermissionDenied, "AdminService needs an admin certificate (organization %q); certificate %q is not one", pki.AdminOrganization, id.subject)
	}
	return ctx, nil
}

func nodeFromContext(ctx context.Context) string {
	name, _ := ctx.Value(nodeKey{}).(string)
	return name
}

// logFields names the caller in log lines: the node or the admin.
func logFields(ctx context.Context) logging.Fields {
	id, ok := peerIdentity(ctx)
	switch {
	case !ok:
		return nil
	case id.node != "":
		return []any{"node", id.node}
	default:
		return []any{"client", id.subject}
	}
}
