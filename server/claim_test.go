package server_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
)

// claimingControllers are controllers of a replica among several: every
// Claim waits until the test answers it.
type claimingControllers struct {
	*feedtest.Controllers
	claims chan claimCall
}

type claimCall struct {
	node   string
	result chan error
}

func newClaimingControllers() claimingControllers {
	return claimingControllers{Controllers: feedtest.New(), claims: make(chan claimCall)}
}

func (c claimingControllers) Claim(ctx context.Context, node string) error {
	call := claimCall{node: node, result: make(chan error, 1)}
	select {
	case c.claims <- call:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-call.result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// nextClaim returns the next Claim call, which waits for its answer.
func (c claimingControllers) nextClaim(t *testing.T) claimCall {
	t.Helper()
	select {
	case call := <-c.claims:
		return call
	case <-t.Context().Done():
		t.Fatal("no Claim call")
		return claimCall{}
	}
}

func heartbeat() *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
}

func podStatus(name string) *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_PodStatus{PodStatus: &edgesyncv1.PodStatus{Namespace: "default", Name: name}}}
}

// An edge that moved to this replica gets what it is missing while the
// replica is still taking the node over (from a dead replica that takes
// seconds): initial sync, live events and acknowledgements flow at once.
// Its reports wait, unanswered, until the node is owned, and then reach
// the controllers in the order they were sent; none is lost.
func TestSyncDoesNotWaitForTheClaim(t *testing.T) {
	ctrls := newClaimingControllers()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = 1 })
	ctrls.Put("node-a", cm("a", "1"))
	e := connect(t, env, "node-a")
	claim := ctrls.nextClaim(t)
	if claim.node != "node-a" {
		t.Fatalf("claim for %q, want node-a", claim.node)
	}

	objs, _, _ := e.recvInitial()
	if got := names(objs); len(got) != 1 || got[0] != "a@1" {
		t.Fatalf("initial sync while the claim runs: %v, want [a@1]", got)
	}
	first := e.report(heartbeat())
	second := e.report(podStatus("x"))
	// The window holds one object: b and c arrive only as a@1 and b@1 are
	// acknowledged, which shows that acknowledgements were read while the
	// reports waited.
	ctrls.Put("node-a", cm("b", "1"), cm("c", "1"))
	e.ack(objs[0].seq)
	b := e.recvObjects(1)
	e.ack(b[0].seq)
	if got := names(e.recvObjects(1)); got[0] != "c@1" {
		t.Fatalf("live events while the claim runs: %v, want [c@1]", got)
	}
	if r := ctrls.Reports(); len(r) != 0 {
		t.Fatalf("controllers got %d reports before the node was owned", len(r))
	}

	claim.result <- nil
	third := e.report(podStatus("y"))
	answered := map[uint64]codes.Code{}
	for len(answered) < 3 {
		msg := e.recv()
		if r := msg.GetStatusResult(); r != nil {
			answered[r.GetRequestId()] = codes.Code(r.GetCode())
		}
	}
	for _, id := range []uint64{first, second, third} {
		if answered[id] != codes.OK {
			t.Errorf("report %d answered %v, want OK", id, answered[id])
		}
	}
	reports, err := ctrls.WaitReports(t.Context(), 3)
	if err != nil {
		t.Fatal(err)
	}
	var order []uint64
	for _, r := range reports {
		order = append(order, r.Request.GetRequestId())
	}
	if len(order) != 3 || order[0] != first || order[1] != second || order[2] != third {
		t.Fatalf("controllers got reports %v, want %v in the order sent", order, []uint64{first, second, third})
	}
}

// A claim that fails (the previous owner did not hand the node over) ends
// the session with the controllers' status; the reports held meanwhile
// never reached the controllers and were never answered, so the edge sends
// them again on its next stream.
func TestFailedClaimEndsTheSession(t *testing.T) {
	ctrls := newClaimingControllers()
	env := servertest.Start(t, ctrls)
	e := connect(t, env, "node-a")
	claim := ctrls.nextClaim(t)
	e.recvInitial()
	e.report(heartbeat())

	claim.result <- status.Error(codes.Unavailable, `node "node-a" is held by server r1, which did not hand it over within 10s; connect again`)
	for {
		msg, err := e.stream.Recv()
		if err != nil {
			st := status.Convert(err)
			if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "did not hand it over") {
				t.Fatalf("stream ended with %v %q, want the claim's UNAVAILABLE", st.Code(), st.Message())
			}
			break
		}
		if r := msg.GetStatusResult(); r != nil {
			t.Fatalf("report answered %v although the node was never owned", r)
		}
	}
	if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
		t.Fatal(err)
	}
	if r := ctrls.Reports(); len(r) != 0 {
		t.Fatalf("controllers got %d reports from a session that never owned its node", len(r))
	}
}
