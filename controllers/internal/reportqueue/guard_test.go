package reportqueue

import (
	"context"
	"sync/atomic"
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// A guarded queue writes only for the nodes its guard admits, answers the
// others with the guard's error, and ends each admitted write (done) only
// after the write returned.
func TestGuardedWritesOnlyAdmittedNodes(t *testing.T) {
	var writing, written atomic.Int32
	var endedWhileWriting atomic.Bool
	guard := func(_ context.Context, node string) (func(), error) {
		if node != "owned" {
			return nil, status.Errorf(codes.Unavailable, "server r1 no longer serves node %q", node)
		}
		return func() {
			if writing.Load() != 0 {
				endedWhileWriting.Store(true)
			}
		}, nil
	}
	q := New(zaptest.NewLogger(t), Guarded(guard, func(context.Context, string, *edgesyncv1.SyncRequest) error {
		writing.Add(1)
		defer writing.Add(-1)
		written.Add(1)
		return nil
	}))
	run(t, q)
	c := newCollector()
	q.Add("owned", "owned", heartbeat(1), c.answer)
	q.Add("moved", "moved", heartbeat(2), c.answer)
	got := c.wait(t, 2)
	if got[1].GetCode() != int32(codes.OK) {
		t.Errorf("report of an owned node answered %v, want OK", got[1])
	}
	if got[2].GetCode() != int32(codes.Unavailable) || got[2].GetMessage() != `server r1 no longer serves node "moved"` {
		t.Errorf("report of a node the guard refuses answered %v, want the guard's UNAVAILABLE", got[2])
	}
	if n := written.Load(); n != 1 {
		t.Errorf("%d writes, want only the owned node's", n)
	}
	if endedWhileWriting.Load() {
		t.Error("done was called while the write was under way")
	}
}
