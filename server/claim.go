package server

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// With several replicas a session's node must be owned by this replica
// before anything is written for it (feed.Claimer). Taking a node over
// from a replica that died waits for that replica's ownership to expire
// (seconds), and an edge should not wait that long for what it is missing:
// the session's initial sync and live events need no ownership, since they
// write nothing to the API server. So the claim runs beside the initial
// sync, and only the node's reports wait for it: they are held, in the
// order they arrived, and handed to the controllers once the claim
// succeeded. Acknowledgements are read all along, so the downstream window
// never stalls on a claim. A claim that fails ends the session with its
// status; the reports it held were never answered, and the edge sends them
// again on its next stream.

// maxHeldReports bounds the reports a session holds while its claim runs.
// The per-session report rate limit keeps an edge far below it for the
// longest claim (a dead owner's ownership expiring, then the write).
const maxHeldReports = 1024

// heldReport is a report that arrived before the node was owned.
type heldReport struct {
	kind string
	req  *edgesyncv1.SyncRequest
}

// startClaim has the controllers make this replica the node's owner, in a
// goroutine of the session, and then hands over the reports that arrived
// meanwhile. Without a Claimer the node is owned at once.
func (s *session) startClaim() {
	if s.srv.claimer == nil {
		s.mu.Lock()
		s.owned = true
		s.mu.Unlock()
		return
	}
	s.srv.wg.Add(1)
	go func() {
		defer s.srv.wg.Done()
		if err := s.srv.claimer.Claim(s.ctx, s.node); err != nil {
			s.end(controllerStatus(err).Err())
			return
		}
		s.releaseHeld()
	}()
}

// releaseHeld hands the held reports to the controllers, oldest first, and
// marks the node owned once none are left, so that a report arriving
// meanwhile is held behind them rather than overtaking them (an older
// status must never overwrite a newer one).
func (s *session) releaseHeld() {
	for {
		s.mu.Lock()
		batch := s.held
		s.held = nil
		if len(batch) == 0 {
			s.owned = true
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, r := range batch {
			if s.ctx.Err() != nil {
				return
			}
			if err := s.report(r.kind, r.req); err != nil {
				s.end(err)
				return
			}
		}
	}
}

// reportWhenOwned hands a report to the controllers, or holds it while the
// node's claim runs.
func (s *session) reportWhenOwned(kind string, req *edgesyncv1.SyncRequest) error {
	s.mu.Lock()
	if !s.owned {
		if len(s.held) >= maxHeldReports {
			s.mu.Unlock()
			return status.Errorf(codes.ResourceExhausted, "more than %d reports sent while server %s is still taking over node %q from another replica; send status only when it changes", maxHeldReports, s.srv.opts.ServerID, s.node)
		}
		s.held = append(s.held, heldReport{kind: kind, req: req})
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	return s.report(kind, req)
}
