package handlers

import (
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
)

// Queue is a controller's work queue: client-go's rate-limited queue,
// made on first use. A controller makes its Queue in New and its Run
// shuts it down on every way out, so work added before Run (reports,
// Desired, handlers of informers that start first) is kept, and a
// controller built and never used starts no goroutine. Once shut down,
// it drops what is added and Get reports the shutdown, as client-go's
// queue does. All methods are safe for concurrent use.
type Queue[T comparable] struct {
	name  string
	clock clock.WithTicker
	once  sync.Once
	q     workqueue.TypedRateLimitingInterface[T] // set by once
}

var _ workqueue.TypedRateLimitingInterface[string] = (*Queue[string])(nil)

// NewQueue returns a controller's work queue, rate limited with
// client-go's controller limiter, named name (its workqueue metrics), on
// clock (nil: the real one). It starts nothing until first used.
func NewQueue[T comparable](name string, clock clock.WithTicker) *Queue[T] {
	return &Queue[T]{name: name, clock: clock}
}

// queue returns the client-go queue, making it on first use.
func (q *Queue[T]) queue() workqueue.TypedRateLimitingInterface[T] {
	q.once.Do(func() {
		q.q = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[T](),
			workqueue.TypedRateLimitingQueueConfig[T]{Name: q.name, Clock: q.clock})
	})
	return q.q
}

// Add marks item as needing processing.
func (q *Queue[T]) Add(item T) { q.queue().Add(item) }

// AddAfter adds item once duration has passed.
func (q *Queue[T]) AddAfter(item T, duration time.Duration) { q.queue().AddAfter(item, duration) }

// AddRateLimited adds item after the rate limiter says it may.
func (q *Queue[T]) AddRateLimited(item T) { q.queue().AddRateLimited(item) }

// Forget ends the rate limiter's tracking of item.
func (q *Queue[T]) Forget(item T) { q.queue().Forget(item) }

// NumRequeues returns how many times item was rate-limited back.
func (q *Queue[T]) NumRequeues(item T) int { return q.queue().NumRequeues(item) }

// Len returns how many items wait to be processed.
func (q *Queue[T]) Len() int { return q.queue().Len() }

// Get blocks until an item is ready to process; shutdown is true once the
// queue is shut down and drained.
func (q *Queue[T]) Get() (item T, shutdown bool) { return q.queue().Get() }

// Done marks item as processed.
func (q *Queue[T]) Done(item T) { q.queue().Done(item) }

// ShutDown makes Get report the shutdown to the workers and ends the
// queue's goroutines; calling it again does nothing.
func (q *Queue[T]) ShutDown() { q.queue().ShutDown() }

// ShutDownWithDrain is ShutDown after the items being processed are Done.
func (q *Queue[T]) ShutDownWithDrain() { q.queue().ShutDownWithDrain() }

// ShuttingDown reports whether ShutDown was called.
func (q *Queue[T]) ShuttingDown() bool { return q.queue().ShuttingDown() }
