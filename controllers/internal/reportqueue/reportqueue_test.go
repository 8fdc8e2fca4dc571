package reportqueue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func heartbeat(id uint64) *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
}

// collector gathers answers by request id.
type collector struct {
	mu  sync.Mutex
	got map[uint64]*edgesyncv1.StatusResult
	ch  chan struct{}
}

func newCollector() *collector {
	return &collector{got: make(map[uint64]*edgesyncv1.StatusResult), ch: make(chan struct{}, 100)}
}

func (c *collector) answer(r *edgesyncv1.StatusResult) {
	c.mu.Lock()
	if _, dup := c.got[r.GetRequestId()]; dup {
		panic("request answered twice")
	}
	c.got[r.GetRequestId()] = r
	c.mu.Unlock()
	c.ch <- struct{}{}
}

func (c *collector) wait(t *testing.T, n int) map[uint64]*edgesyncv1.StatusResult {
	t.Helper()
	for range n {
		select {
		case <-c.ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d reports answered", len(c.got), n)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got
}

func run(t *testing.T, q *Queue) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx, 2); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// While a write is slow, reports for the same key coalesce: the latest is
// written once and every waiting request gets its outcome.
func TestReportsCoalesceWhileAWriteIsSlow(t *testing.T) {
	started := make(chan uint64, 10)
	release := make(chan struct{})
	var mu sync.Mutex
	var written []uint64
	q := New(zaptest.NewLogger(t), func(ctx context.Context, node string, req *edgesyncv1.SyncRequest) error {
		started <- req.GetRequestId()
		<-release
		mu.Lock()
		written = append(written, req.GetRequestId())
		mu.Unlock()
		return nil
	})
	run(t, q)
	answers := newCollector()

	q.Add("lease/a", "a", heartbeat(1), answers.answer)
	if id := <-started; id != 1 {
		t.Fatalf("first write is for request %d, want 1", id)
	}
	for id := uint64(2); id <= 5; id++ {
		q.Add("lease/a", "a", heartbeat(id), answers.answer)
	}
	close(release)
	got := answers.wait(t, 5)
	for id := uint64(1); id <= 5; id++ {
		if got[id].GetCode() != int32(codes.OK) {
			t.Errorf("request %d answered %v, want OK", id, got[id])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(written) != 2 || written[1] != 5 {
		t.Fatalf("writes for requests %v, want [1 5]: the waiting reports coalesce to the latest", written)
	}
}

func TestFailuresAreAnsweredWithTheirCode(t *testing.T) {
	gr := schema.GroupResource{Resource: "pods"}
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"grpc status kept", status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
		{"not found", apierrors.NewNotFound(gr, "x"), codes.NotFound},
		{"forbidden", apierrors.NewForbidden(gr, "x", errors.New("rbac")), codes.PermissionDenied},
		{"invalid", apierrors.NewBadRequest("bad"), codes.InvalidArgument},
		{"conflict", apierrors.NewConflict(gr, "x", errors.New("uid")), codes.Aborted},
		{"other", errors.New("boom"), codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := New(zaptest.NewLogger(t), func(context.Context, string, *edgesyncv1.SyncRequest) error { return tc.err })
			run(t, q)
			answers := newCollector()
			q.Add("k", "a", heartbeat(9), answers.answer)
			got := answers.wait(t, 1)[9]
			if codes.Code(got.GetCode()) != tc.want || got.GetMessage() == "" {
				t.Fatalf("answer %v, want code %v with a message", got, tc.want)
			}
		})
	}
}

func TestTransientFailureIsRetried(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	q := New(zaptest.NewLogger(t), func(context.Context, string, *edgesyncv1.SyncRequest) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			return apierrors.NewServiceUnavailable("apiserver restarting")
		}
		return nil
	})
	run(t, q)
	answers := newCollector()
	q.Add("k", "a", heartbeat(1), answers.answer)
	if got := answers.wait(t, 1)[1]; got.GetCode() != 0 {
		t.Fatalf("answer %v, want OK after a retry", got)
	}
}

func TestDropAndShutdownAnswerWaitingReports(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	q := New(zaptest.NewLogger(t), func(ctx context.Context, _ string, req *edgesyncv1.SyncRequest) error {
		started <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx, 1); close(done) }()
	answers := newCollector()

	q.Add("busy", "a", heartbeat(1), answers.answer)
	<-started
	q.Add("lease/a", "a", heartbeat(2), answers.answer)
	q.Drop("lease/a", status.Error(codes.Aborted, "session ended"))
	if got := answers.wait(t, 1)[2]; codes.Code(got.GetCode()) != codes.Aborted {
		t.Fatalf("dropped report answered %v, want Aborted", got)
	}
	q.Add("other", "a", heartbeat(3), answers.answer)
	cancel()
	<-done
	got := answers.wait(t, 2)
	if codes.Code(got[3].GetCode()) != codes.Unavailable {
		t.Errorf("report waiting at shutdown answered %v, want Unavailable", got[3])
	}
	q.Add("late", "a", heartbeat(4), answers.answer)
	if got := answers.wait(t, 1)[4]; codes.Code(got.GetCode()) != codes.Unavailable {
		t.Errorf("report after shutdown answered %v, want Unavailable", got)
	}
	close(release)
}
