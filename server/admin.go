package server

import (
	"context"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// adminService answers AdminService for admin certificates.
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
	slices.SortFunc(all, func(x, y *session) int { return strings.Compare(x.node, y.node) })
	resp := &edgesyncv1.ListSessionsResponse{Sessions: make([]*edgesyncv1.Session, 0, len(all))}
	for _, sess := range all {
		resp.Sessions = append(resp.Sessions, sess.view())
	}
	return resp, nil
}

func (a *adminService) GetSession(_ context.Context, req *edgesyncv1.GetSessionRequest) (*edgesyncv1.GetSessionResponse, error) {
	sess, err := a.lookup(req.GetNodeName())
	if err != nil {
		return nil, err
	}
	return &edgesyncv1.GetSessionResponse{Session: sess.view()}, nil
}

func (a *adminService) ResyncNode(_ context.Context, req *edgesyncv1.ResyncNodeRequest) (*edgesyncv1.ResyncNodeResponse, error) {
	sess, err := a.lookup(req.GetNodeName())
	if err != nil {
		return nil, err
	}
	n, err := sess.queueDifference()
	if err != nil {
		return nil, desiredError(sess.node, err)
	}
	return &edgesyncv1.ResyncNodeResponse{ObjectsQueued: uint32(n)}, nil
}

func (a *adminService) DisconnectNode(_ context.Context, req *edgesyncv1.DisconnectNodeRequest) (*edgesyncv1.DisconnectNodeResponse, error) {
	sess, err := a.lookup(req.GetNodeName())
	if err != nil {
		return nil, err
	}
	reason := req.GetReason()
	if reason == "" {
		reason = "no reason given"
	}
	sess.end(status.Errorf(codes.Unavailable, "disconnected by an operator: %s", reason))
	return &edgesyncv1.DisconnectNodeResponse{}, nil
}

func (a *adminService) lookup(node string) (*session, error) {
	if node == "" {
		return nil, status.Error(codes.InvalidArgument, "node_name is required")
	}
	sess := a.srv.session(node)
	if sess == nil {
		return nil, status.Errorf(codes.NotFound, "node %q has no session on server %s", node, a.srv.opts.ServerID)
	}
	return sess, nil
}
