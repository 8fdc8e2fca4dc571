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
//
// A key's slot stays in the index after its entry is popped and is reused
// when the key is pushed again (deletes free it), so a stream of updates
// to the objects a node holds costs one index lookup per push and none per
// pop: with thousands of sessions the index is rarely in the CPU cache, and
// every lookup is a cache miss, so the queue makes as few as it can.
type Queue struct {
	notify chan struct{} // capacity 1: "something was pushed"

	mu    sync.Mutex // guards the fields below
	slots map[feed.Key]*slot
	order []*slot // FIFO of the queued slots
	last  uint64  // last ticket assigned
}

// slot is a key's place in the queue; entry.Object is nil while the key
// is not queued.
type slot struct {
	key   feed.Key
	entry Entry
}

// New returns an empty queue.
func New() *Queue {
	return &Queue{notify: make(chan struct{}, 1), slots: make(map[feed.Key]*slot)}
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
	sl := q.slots[obj.Key]
	if sl == nil {
		sl = &slot{key: obj.Key}
		q.slots[obj.Key] = sl
	}
	queued := sl.entry.Object != nil
	switch {
	case queued && replace:
		sl.entry.Object, sl.entry.Queued = obj, now
	case !queued:
		q.last++
		sl.entry = Entry{Object: obj, Queued: now, Ticket: q.last}
		q.order = append(q.order, sl)
	}
	q.mu.Unlock()
	if queued && !replace {
		return false
	}
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return !queued
}

// Pop removes and returns the oldest entry.
func (q *Queue) Pop() (Entry, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.order) == 0 {
		return Entry{}, false
	}
	sl := q.order[0]
	q.order[0] = nil
	q.order = q.order[1:]
	if len(q.order) == 0 {
		q.order = nil // let the backing array go
	}
	e := sl.entry
	sl.entry = Entry{} // the slot no longer holds the object
	if e.Object.Deleted {
		delete(q.slots, sl.key) // the node no longer has the object
	}
	return e, true
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
	return len(q.order) > 0 && q.order[0].entry.Ticket <= mark
}

// Len returns the number of objects queued.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order)
}
