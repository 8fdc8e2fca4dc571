// Package queue holds the outbound objects of one edge session: a
// latest-wins queue keyed by object (feed.Key). A newer version of an object
// replaces the one waiting to be sent, in place, and a delete replaces
// anything queued for its object, so the queue never holds more entries than
// the node has objects, however many events arrive.
//
// A Queue is safe for concurrent use: controllers push from their workers
// while the session's sender pops.
package queue

import (
	"sync"
	"time"

	"github.com/edgesync/edgesync/server/feed"
)

// Entry is one object waiting to be sent.
type Entry struct {
	Object *feed.Object
	// Queued is when this version was queued, for delivery latency.
	Queued time.Time
	// Ticket orders entries: it is assigned when a key first enters the
	// queue and kept when a newer version replaces the entry.
	Ticket uint64
}

// Queue is a FIFO of keys where each key holds only its newest object.
type Queue struct {
	notify chan struct{} // capacity 1: "something was pushed"

	mu      sync.Mutex // guards the fields below
	entries map[feed.Key]*Entry
	order   []feed.Key // FIFO of the keys in entries
	last    uint64     // last ticket assigned
}

// New returns an empty queue.
func New() *Queue {
	return &Queue{notify: make(chan struct{}, 1), entries: make(map[feed.Key]*Entry)}
}

// Ready receives a value after a push; the receiver should then Pop until
// the queue is empty.
func (q *Queue) Ready() <-chan struct{} { return q.notify }

// Push queues obj, replacing any entry for the same key (latest wins; a
// delete replaces an apply and vice versa). It reports whether the queue grew.
func (q *Queue) Push(obj *feed.Object) (added bool) {
	return q.push(obj, true)
}

// Offer queues obj only when nothing is queued for its key yet: whatever is
// queued was published later than obj was computed. It reports whether obj
// was queued.
func (q *Queue) Offer(obj *feed.Object) (added bool) {
	return q.push(obj, false)
}

func (q *Queue) push(obj *feed.Object, replace bool) bool {
	now := time.Now()
	q.mu.Lock()
	e, ok := q.entries[obj.Key]
	switch {
	case ok && replace:
		e.Object, e.Queued = obj, now
	case !ok:
		q.last++
		q.entries[obj.Key] = &Entry{Object: obj, Queued: now, Ticket: q.last}
		q.order = append(q.order, obj.Key)
	}
	q.mu.Unlock()
	if ok && !replace {
		return false
	}
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return !ok
}

// Pop removes and returns the oldest entry.
func (q *Queue) Pop() (Entry, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.order) == 0 {
		return Entry{}, false
	}
	key := q.order[0]
	q.order[0] = feed.Key{}
	q.order = q.order[1:]
	if len(q.order) == 0 {
		q.order = nil // let the backing array go
	}
	e := q.entries[key]
	delete(q.entries, key)
	return *e, true
}

// Mark returns the newest ticket assigned so far. Pending(mark) reports
// whether entries queued up to that moment are still waiting.
func (q *Queue) Mark() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.last
}

// Pending reports whether an entry with a ticket at or below mark is still
// queued.
func (q *Queue) Pending(mark uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order) > 0 && q.entries[q.order[0]].Ticket <= mark
}

// Len returns the number of objects queued.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order)
}
