package edgeclient

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// The google.rpc.ErrorInfo a server attaches to the PERMISSION_DENIED status
// of a node whose certificates an operator revoked (api/edgesync/v1
// sync.proto, "Errors").
const (
	ErrorDomain       = "edgesync.io"
	ReasonNodeRevoked = "NODE_REVOKED"
)

// IsRevoked reports whether err is the server saying that the node's
// certificates were revoked: PERMISSION_DENIED with the ErrorInfo reason
// ReasonNodeRevoked. Another PERMISSION_DENIED (acting as another node, a
// node that is not an edge node) is not a revocation.
func IsRevoked(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.PermissionDenied {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain && info.GetReason() == ReasonNodeRevoked {
			return true
		}
	}
	return false
}

// credentialKinds are what a revoked node stops holding: the Secrets and
// the pods' ServiceAccount tokens, which are credentials to other systems
// and to the API server. Pods, ConfigMaps and the rest stay, so that the
// node's workloads keep running as far as they can.
var credentialKinds = []edgesyncv1.Kind{edgesyncv1.Kind_KIND_SECRET, edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN}

// forgetCredentials deletes every Secret and ServiceAccount token the
// store holds, in one transaction, and delivers a Deleted event for each
// (so that an agent removes them from its pods' volumes). Run calls it
// between streams, when no session delivers events, so OnEvent is still
// called from one goroutine at a time. If the node joins again (new
// certificate files), the server sends what it should hold again: the
// store lists neither, so both arrive in the initial sync.
func (c *Client) forgetCredentials(ctx context.Context) (int, error) {
	var recs []*store.Record
	for _, kind := range credentialKinds {
		r, err := c.store.List(kind)
		if err != nil {
			return 0, fmt.Errorf("list held %s: %w", store.KindName(kind), err)
		}
		recs = append(recs, r...)
	}
	if len(recs) == 0 {
		return 0, nil
	}
	changes := make([]store.Change, len(recs))
	for i, r := range recs {
		changes[i] = store.Change{Key: r.Key}
	}
	if err := c.store.Apply(changes); err != nil {
		return 0, fmt.Errorf("delete held credentials: %w", err)
	}
	if on := c.cfg.OnEvent; on != nil {
		var errs []error
		for _, r := range recs {
			obj, err := Decode(r)
			if err != nil {
				continue // gone from the store; nothing to tell
			}
			ev := Event{Type: Deleted, Key: r.Key, UID: r.UID, ResourceVersion: r.ResourceVersion, Object: obj}
			if err := on(ctx, ev); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.Key, err))
			}
		}
		if err := errors.Join(errs...); err != nil {
			c.log.Warn("the agent failed to remove deleted credentials", zap.Error(err))
		}
	}
	return len(recs), nil
}

// revoked handles a stream refused because the node was revoked: it
// deletes the credentials the node holds, once per revocation, and says so.
func (c *Client) revoked(ctx context.Context, cause error) {
	c.mu.Lock()
	already := c.state.Revoked
	c.mu.Unlock()
	n, err := c.forgetCredentials(ctx)
	if err != nil {
		c.log.Error("the node was revoked, and deleting the credentials it holds failed", zap.Error(err))
	}
	if !already || n > 0 {
		c.log.Error("the node's certificates were revoked by an operator: deleted the Secrets and ServiceAccount tokens it held; join again with a new token",
			zap.Int("deleted", n), zap.Error(cause))
	}
	c.updateState(func(s *State) { s.Revoked = true })
}
