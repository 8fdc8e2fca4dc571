package server

import (
	"fmt"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Routed application messages (sync.proto, "Routed messages") are not
// objects: the controllers that route them (package controllers/router)
// keep their ordered per-node buffer and window, and the server only
// carries them. Deliveries go out as control messages, beside the object
// queue and outside its window, so that they never slow the object path;
// RouteResults go straight to the controllers.

// SendMessage queues msg (a RouteDelivery or RouteSubscriptions) on node's
// session here, ahead of objects (feed.Messenger). It returns an error
// wrapping ErrNotConnected when node holds no session here.
func (s *Server) SendMessage(node string, msg *edgesyncv1.SyncResponse) error {
	sess := s.session(node)
	if sess == nil || sess.ctx.Err() != nil {
		return fmt.Errorf("node %q is %w to edgesync server %s", node, ErrNotConnected, s.opts.ServerID)
	}
	sess.pushControl(msg)
	return nil
}

// routeResult hands the answer to a RouteDelivery to the controllers
// (feed.RouteResulter); without them it is dropped.
func (s *Server) routeResult(node string, res *edgesyncv1.RouteResult) {
	if r, ok := s.ctrls.(feed.RouteResulter); ok {
		r.RouteResult(node, res)
	}
}
