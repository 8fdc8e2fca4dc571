package server

import (
	"context"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/apimachinery/pkg/util/validation"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// adminService answers AdminService for admin certificates. With
// controllers that know every node's replica (feed.Directory) it answers
// for the whole deployment: nodes owned by other replicas are listed with
// their replica, and disconnecting one releases its ownership, which ends
// the session on the replica holding it.
type adminService struct {
	edgesyncv1.UnimplementedAdminServiceServer
	srv *Server
}

// AuthFuncOverride admits admin certificates only (auth interceptor hook).
func (*adminService) AuthFuncOverride(ctx context.Context, _ string) (context.Context, error) {
	return authorizeAdmin(ctx)
}

func (a *adminService) ListSessions(context.Context, *edgesyncv1.ListSessionsRequest) (*edgesyncv1.ListSessionsResponse, error) {
	all := a.srv.all()
	resp := &edgesyncv1.ListSessionsResponse{Sessions: make([]*edgesyncv1.Session, 0, len(all))}
	local := make(map[string]bool, len(all))
	for _, sess := range all {
		resp.Sessions = append(resp.Sessions, sess.view())
		local[sess.node] = true
	}
	for node, replica := range a.owners() {
		if !local[node] && replica != a.srv.opts.ServerID {
			resp.Sessions = append(resp.Sessions, remoteView(node, replica))
		}
	}
	slices.SortFunc(resp.Sessions, func(x, y *edgesyncv1.Session) int { return strings.Compare(x.GetNodeName(), y.GetNodeName()) })
	return resp, nil
}

// RevokeNode records the revocation (every replica then refuses the
// node's certificates and ends its session) and ends this replica's
// session at once.
func (a *adminService) RevokeNode(ctx context.Context, req *edgesyncv1.RevokeNodeRequest) (*edgesyncv1.RevokeNodeResponse, error) {
	node := req.GetNodeName()
	if errs := validation.IsDNS1123Subdomain(node); len(errs) > 0 {
		return nil, status.Errorf(codes.InvalidArgument, "node name %q is not a valid Kubernetes node name: %s", node, strings.Join(errs, "; "))
	}
	rev := a.srv.opts.Revocations
	if rev == nil {
		return nil, status.Error(codes.FailedPrecondition, "this server keeps no revocation record (it runs without Kubernetes); revoke nodes where it does")
	}
	gen, at, err := rev.Revoke(ctx, node)
	if err != nil {
		a.srv.log.Warn("revoke a node", zap.String("node", node), zap.Error(err))
		return nil, status.Errorf(codes.Unavailable, "cannot record the revocation of node %q in the Kubernetes API; retry: %v", node, err)
	}
	a.srv.log.Info("node revoked by an operator", zap.String("node", node), zap.Int64("generation", gen))
	a.srv.EndSession(node, status.Errorf(codes.PermissionDenied,
		"node %q was revoked by an operator at %s: its certificates no longer work; join again with a new token (`edgesync-server token create --node %s`)",
		node, at.Format(time.RFC3339), node))
	return &edgesyncv1.RevokeNodeResponse{Generation: gen, RevokeTime: timestamppb.New(at)}, nil
}

func (a *adminService) GetSession(_ context.Context, req *edgesyncv1.GetSessionRequest) (*edgesyncv1.GetSessionResponse, error) {
	sess, replica, err := a.lookup(req.GetNodeName())
	if err != nil {
		return nil, err
	}
	if sess == nil {
		return &edgesyncv1.GetSessionResponse{Session: remoteView(req.GetNodeName(), replica)}, nil
	}
	return &edgesyncv1.GetSessionResponse{Session: sess.view()}, nil
}

func (a *adminService) ResyncNode(_ context.Context, req *edgesyncv1.ResyncNodeRequest) (*edgesyncv1.ResyncNodeResponse, error) {
	sess, replica, err := a.lookup(req.GetNodeName())
	if err != nil {
		return nil, err
	}
	if sess == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "node %q is connected to server %s, not %s; call ResyncNode there", req.GetNodeName(), replica, a.srv.opts.ServerID)
	}
	n, err := sess.queueDifference()
	if err != nil {
		return nil, desiredError(sess.node, err)
	}
	return &edgesyncv1.ResyncNodeResponse{ObjectsQueued: uint32(n)}, nil
}

func (a *adminService) DisconnectNode(ctx context.Context, req *edgesyncv1.DisconnectNodeRequest) (*edgesyncv1.DisconnectNodeResponse, error) {
	sess, replica, err := a.lookup(req.GetNodeName())
	if err != nil {
		return nil, err
	}
	reason := req.GetReason()
	if reason == "" {
		reason = "no reason given"
	}
	if sess == nil {
		// Owned by another replica: releasing the ownership ends the
		// session there.
		if err := a.srv.directory.Release(ctx, req.GetNodeName(), reason); err != nil {
			return nil, status.Errorf(codes.Unavailable, "release node %q from server %s: %v", req.GetNodeName(), replica, err)
		}
		return &edgesyncv1.DisconnectNodeResponse{}, nil
	}
	sess.end(status.Errorf(codes.Unavailable, "disconnected by an operator: %s", reason))
	return &edgesyncv1.DisconnectNodeResponse{}, nil
}

// lookup finds node's session here, or else the replica owning it.
func (a *adminService) lookup(node string) (*session, string, error) {
	if node == "" {
		return nil, "", status.Error(codes.InvalidArgument, "node_name is required")
	}
	if sess := a.srv.session(node); sess != nil {
		return sess, a.srv.opts.ServerID, nil
	}
	if replica, ok := a.owners()[node]; ok && replica != a.srv.opts.ServerID {
		return nil, replica, nil
	}
	return nil, "", status.Errorf(codes.NotFound, "node %q has no session on server %s or any other replica", node, a.srv.opts.ServerID)
}

// owners returns every node's replica, when the controllers know them.
func (a *adminService) owners() map[string]string {
	if a.srv.directory == nil {
		return nil
	}
	return a.srv.directory.Owners()
}

// remoteView is what this replica knows of a session on another one.
func remoteView(node, replica string) *edgesyncv1.Session {
	return &edgesyncv1.Session{NodeName: node, ServerId: replica}
}
