package handlers

import (
	"testing"

	"go.uber.org/goleak"
)

// A controller built and never used starts no goroutine: a Queue makes
// client-go's queue (which runs goroutines) only on first use.
func TestUnusedQueueStartsNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t)
	q := NewQueue[string]("test", nil)
	_ = q
}

// Work added before the workers start is kept, and ShutDown ends the
// queue's goroutines: what is added after is dropped and Get reports the
// shutdown.
func TestQueueKeepsEarlyWorkAndShutsDown(t *testing.T) {
	defer goleak.VerifyNone(t)
	q := NewQueue[string]("test", nil)
	q.Add("before-run")
	q.AddAfter("also-before-run", 0)
	for _, want := range []string{"before-run", "also-before-run"} {
		got, quit := q.Get()
		if quit || got != want {
			t.Fatalf("Get = %q, %v; want %q, false", got, quit, want)
		}
		q.Forget(got)
		q.Done(got)
	}
	q.ShutDown()
	q.ShutDown() // a second ShutDown does nothing
	q.Add("after-shutdown")
	if got, quit := q.Get(); !quit {
		t.Fatalf("Get after ShutDown = %q, want the shutdown", got)
	}
	if n := q.Len(); n != 0 {
		t.Fatalf("Len after ShutDown = %d, want 0 (adds are dropped)", n)
	}
}

// A Queue shut down before any use (Run ended before anything was added)
// stays shut down.
func TestQueueShutDownBeforeUse(t *testing.T) {
	defer goleak.VerifyNone(t)
	q := NewQueue[string]("test", nil)
	q.ShutDown()
	q.Add("late")
	if got, quit := q.Get(); !quit {
		t.Fatalf("Get = %q, want the shutdown", got)
	}
}
