// Package reportqueue applies edge reports to the API server through a
// keyed, coalescing work queue: while a write for an object is slow, newer
// reports for the same object replace the waiting one, and every request
// that was waiting is answered with the outcome of the write that covered it.
//
// Memory is therefore bounded by the number of distinct objects reported,
// not by the number of reports, and writes go through the caller's client,
// so they respect its QPS and burst.
package reportqueue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"go.uber.org/zap"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/util/workqueue"

	"github.com/edgesync/edgesync/controllers/internal/handlers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Handler writes one report from node to the API server. An error of a
// kind (feed.Errorf) is answered with its kind's code; an API error is
// given its nearest kind (Refusal).
type Handler func(ctx context.Context, node string, req *edgesyncv1.SyncRequest) error

// maxRetries bounds how often a transiently failing write is retried before
// its reports are answered with the failure.
const maxRetries = 5

// errShutdown answers reports the queue can no longer write.
var errShutdown = feed.NewError(feed.ErrUnavailable, "the server is shutting down; send the report again after reconnecting")

// Queue coalesces reports per key and applies the latest with a Handler.
type Queue struct {
	log    *zap.Logger
	handle Handler

	// queue orders the keys to write; shut down by Run.
	queue *handlers.Queue[string]

	mu       sync.Mutex // guards the fields below
	pending  map[string]*entry
	shutdown bool
}

// entry is the latest report for one key and everyone waiting for it.
type entry struct {
	node    string
	req     *edgesyncv1.SyncRequest
	waiters []waiter
}

type waiter struct {
	requestID uint64
	answer    feed.Answer
}

// New returns a queue that applies reports with handle once Run is called;
// reports added before wait for Run.
func New(log *zap.Logger, handle Handler) *Queue {
	return &Queue{log: log, handle: handle, queue: handlers.NewQueue[string]("", nil), pending: make(map[string]*entry)}
}

// Add queues req from node under key. A report already waiting under key is
// replaced by req; its answer is called with the outcome of req's write.
// answer is called exactly once.
func (q *Queue) Add(key, node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	w := waiter{requestID: req.GetRequestId(), answer: answer}
	q.mu.Lock()
	if q.shutdown {
		q.mu.Unlock()
		w.answer(Result(w.requestID, errShutdown))
		return
	}
	e := q.pending[key]
	if e == nil {
		e = &entry{}
		q.pending[key] = e
	}
	e.node, e.req = node, req
	e.waiters = append(e.waiters, w)
	q.mu.Unlock()
	q.queue.Add(key)
}

// Drop answers the reports waiting under key with err and forgets them; a
// write already under way is not stopped.
func (q *Queue) Drop(key string, err error) {
	q.mu.Lock()
	e := q.pending[key]
	delete(q.pending, key)
	q.mu.Unlock()
	if e != nil {
		answerAll(e.waiters, err)
	}
}

// Run applies queued reports with workers goroutines until ctx ends, then
// answers what is still waiting with UNAVAILABLE and returns once every
// worker has stopped.
func (q *Queue) Run(ctx context.Context, workers int) {
	queue := q.queue
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for q.processNext(ctx, queue) {
			}
		})
	}
	<-ctx.Done()
	queue.ShutDown()
	wg.Wait()

	q.mu.Lock()
	q.shutdown = true
	left := q.pending
	q.pending = nil
	q.mu.Unlock()
	for _, e := range left {
		answerAll(e.waiters, errShutdown)
	}
}

func (q *Queue) processNext(ctx context.Context, queue workqueue.TypedRateLimitingInterface[string]) bool {
	key, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(key)

	q.mu.Lock()
	e := q.pending[key]
	delete(q.pending, key)
	q.mu.Unlock()
	if e == nil {
		queue.Forget(key)
		return true
	}

	if ctx.Err() != nil {
		queue.Forget(key)
		answerAll(e.waiters, errShutdown)
		return true
	}
	err := q.handle(ctx, e.node, e.req)
	if err != nil && ctx.Err() != nil {
		err = errShutdown // the write was cut short by the shutdown
	}
	if err != nil && ctx.Err() == nil && retriable(err) && queue.NumRequeues(key) < maxRetries {
		q.log.Debug("report write failed, retrying", zap.String("key", key), zap.Error(err))
		q.mu.Lock()
		if newer := q.pending[key]; newer != nil {
			// A newer report replaces this one; its write answers both.
			newer.waiters = append(e.waiters, newer.waiters...)
		} else if q.pending != nil {
			q.pending[key] = e
		}
		q.mu.Unlock()
		queue.AddRateLimited(key)
		return true
	}
	queue.Forget(key)
	if err != nil {
		q.log.Info("report write failed", zap.String("key", key), zap.String("node", e.node), zap.Error(err))
	}
	answerAll(e.waiters, err)
	return true
}

func answerAll(waiters []waiter, err error) {
	for _, w := range waiters {
		w.answer(Result(w.requestID, err))
	}
}

// retriable tells whether a write may succeed if simply tried again.
func retriable(err error) bool {
	if refused(err) {
		return false
	}
	var netErr net.Error
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) || errors.As(err, &netErr)
}

// refused tells whether err is already a refusal with its kind (or a gRPC
// status from elsewhere), which a retry will not change.
func refused(err error) bool {
	if feed.KindOf(err) != feed.KindUnknown {
		return true
	}
	_, ok := status.FromError(err)
	return ok
}

// Result turns the outcome of a write into the StatusResult for request id.
func Result(id uint64, err error) *edgesyncv1.StatusResult {
	return feed.Result(id, Refusal(err))
}

// Refusal gives an error from a write its kind: a refusal (feed.Error, or
// a gRPC status) is kept as it is, an API error gets its nearest kind.
func Refusal(err error) error {
	if err == nil || refused(err) {
		return err
	}
	switch {
	case errors.Is(err, context.Canceled):
		return feed.NewError(feed.ErrCanceled, "the write was cancelled: "+err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return feed.NewError(feed.ErrDeadlineExceeded, "the write timed out: "+err.Error())
	}
	msg := fmt.Sprintf("kubernetes API: %v", err)
	kind := feed.ErrInternal
	var netErr net.Error
	switch {
	case apierrors.IsNotFound(err):
		kind = feed.ErrNotFound
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		kind = feed.ErrPermissionDenied
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		kind = feed.ErrAborted
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		kind = feed.ErrInvalid
	case apierrors.IsTooManyRequests(err):
		kind = feed.ErrResourceExhausted
	case apierrors.IsServerTimeout(err), apierrors.IsTimeout(err), apierrors.IsServiceUnavailable(err), errors.As(err, &netErr):
		kind = feed.ErrUnavailable
	}
	return feed.NewError(kind, msg)
}
