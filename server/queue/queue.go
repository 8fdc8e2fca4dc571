// Package queue holds the outbound objects of one edge session: a
// latest-wins queue keyed by object (feed.Key). A newer version of an object
// replaces the one waiting to be sent, in place, and a delete replaces
// anything queued for its object, so the queue never holds more entries than
// the node has objects, however many events arrive.
//
// The queue also keeps, per object, the version the edge holds (as its
// Hello listed it or as it acknowledged it), next to the queued version:
// Pop skips versions the edge already holds, and an acknowledgement updates
// the held version through its Entry, so a message costs one index lookup
// (at Push) however it travels.
//
// A Queue is safe for concurrent use: controllers push from their workers
// while the session's sender pops.
package queue

import (
	"math"
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

	slot *slot  // where Acknowledged records the edge's new version
	sent uint64 // the slot's sent count when this entry was popped
}

// Held is the version of an object the edge holds.
type Held struct {
	UID, ResourceVersion string
}

// Queue is a FIFO of keys where each key holds only its newest object.
//
// A key's slot stays in the index while the key is queued or held by the
// edge, and is reused when the key is pushed again, so a stream of updates
// to the objects a node holds costs one index lookup per message: with
// thousands of sessions the index is rarely in the CPU cache, and every
// lookup is a cache miss, so the queue makes as few as it can.
//
// The queue notifies no one: its owner (the session) is told of a push by
// the publisher and starts a sender when needed.
type Queue struct {
	mu    sync.Mutex // guards the fields below and every slot
	slots map[feed.Key]*slot
	order []*slot // FIFO of the queued slots
	last  uint64  // last ticket assigned
}

// slot is a key's state: entry.Object is nil while nothing is queued, and
// holds is false while the edge does not hold the object.
type slot struct {
	key     feed.Key
	entry   Entry
	held    Held
	holds   bool
	indexed bool // in slots; a forgotten slot is only referenced by entries in flight
	// sent counts the entries popped and acked is the count of the last
	// one acknowledged: while they differ an entry is in flight, and what
	// the edge will hold is not known. Only the acknowledgement of the
	// last one sent says what the edge holds (an older one, acknowledged
	// late, would make a later push of its version look held).
	sent, acked uint64
}

// New returns an empty queue.
func New() *Queue {
	return &Queue{slots: make(map[feed.Key]*slot)}
}

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
	sl := q.slot(obj.Key)
	queued := sl.entry.Object != nil
	switch {
	case queued && replace:
		sl.entry.Object, sl.entry.Queued = obj, now
	case !queued:
		q.last++
		sl.entry = Entry{Object: obj, Queued: now, Ticket: q.last, slot: sl}
		q.order = append(q.order, sl)
	}
	q.mu.Unlock()
	if queued && !replace {
		return false
	}
	return !queued
}

// slot returns key's slot, making it; the caller holds mu.
func (q *Queue) slot(key feed.Key) *slot {
	sl := q.slots[key]
	if sl == nil {
		sl = &slot{key: key, indexed: true}
		q.slots[key] = sl
	}
	return sl
}

// Pop removes and returns the oldest entry, skipping versions the edge
// already holds.
func (q *Queue) Pop() (Entry, bool) {
	return q.PopUpTo(math.MaxInt)
}

// PopUpTo is Pop for an entry whose payload is at most maxPayload bytes:
// when the oldest entry to send is larger, it stays queued and PopUpTo
// returns false (a batch that has no room for it).
func (q *Queue) PopUpTo(maxPayload int) (Entry, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) > 0 {
		sl := q.order[0]
		if len(sl.entry.Object.Payload) > maxPayload && !q.skips(sl) {
			return Entry{}, false
		}
		q.order[0] = nil
		q.order = q.order[1:]
		if len(q.order) == 0 {
			q.order = nil // let the backing array go
		}
		e := sl.entry
		skip := q.skips(sl)
		sl.entry = Entry{} // the slot no longer holds the object
		if skip {
			continue // the edge already holds this version, and nothing else is on its way
		}
		sl.sent++
		e.sent = sl.sent
		return e, true
	}
	return Entry{}, false
}

// skips reports whether the entry queued in sl is a version the edge
// already holds with nothing else on its way; the caller holds mu.
func (q *Queue) skips(sl *slot) bool {
	obj := sl.entry.Object
	return !obj.Deleted && sl.holds && sl.acked == sl.sent && sl.held.ResourceVersion == obj.ResourceVersion
}

// Hold records that the edge holds key at the given version (as its Hello
// said).
func (q *Queue) Hold(key feed.Key, held Held) {
	q.mu.Lock()
	defer q.mu.Unlock()
	sl := q.slot(key)
	sl.held, sl.holds = held, true
}

// Acknowledged records that the edge applied e, a popped entry: it now
// holds that version, or no longer holds the object if e was a delete.
func (q *Queue) Acknowledged(e Entry) {
	if e.slot == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	sl := e.slot
	if !sl.indexed || e.sent != sl.sent {
		// Sent before the slot was forgotten (when a later delete was
		// acknowledged), or before a later entry: that one's
		// acknowledgement says what the edge holds.
		return
	}
	sl.acked = e.sent
	if e.Object.Deleted {
		sl.held, sl.holds = Held{}, false
		q.forgetIfUnused(sl)
		return
	}
	sl.held, sl.holds = Held{UID: e.Object.UID, ResourceVersion: e.Object.ResourceVersion}, true
}

// Held returns what the edge holds, by key.
func (q *Queue) Held() map[feed.Key]Held {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make(map[feed.Key]Held, len(q.slots))
	for key, sl := range q.slots {
		if sl.holds {
			out[key] = sl.held
		}
	}
	return out
}

// forgetIfUnused drops sl from the index when it is neither queued nor
// held; the caller holds mu.
func (q *Queue) forgetIfUnused(sl *slot) {
	if sl.entry.Object == nil && !sl.holds && sl.indexed {
		delete(q.slots, sl.key)
		sl.indexed = false
	}
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
