package queue

import (
	"slices"
	"strconv"
	"testing"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

func obj(name, rv string, deleted bool) *feed.Object {
	return &feed.Object{Key: feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "ns", Name: name}, ResourceVersion: rv, Deleted: deleted}
}

func popAll(q *Queue) []string { return pop(q, false) }

// popAcked pops everything, acknowledging each entry as the edge would.
func popAcked(q *Queue) []string { return pop(q, true) }

func pop(q *Queue, ack bool) []string {
	var got []string
	for {
		e, ok := q.Pop()
		if !ok {
			return got
		}
		if ack {
			q.Acknowledged(e)
		}
		s := e.Object.Key.Name + "@" + e.Object.ResourceVersion
		if e.Object.Deleted {
			s += "(deleted)"
		}
		got = append(got, s)
	}
}

func TestLatestWinsKeepsPosition(t *testing.T) {
	q := New()
	q.Push(obj("a", "1", false))
	q.Push(obj("b", "1", false))
	for i := 2; i <= 21; i++ {
		q.Push(obj("a", strconv.Itoa(i), false))
	}
	if q.Len() != 2 {
		t.Fatalf("Len = %d after 22 pushes of 2 objects, want 2", q.Len())
	}
	got := popAll(q)
	want := []string{"a@21", "b@1"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("popped %v, want %v", got, want)
	}
}

func TestDeleteReplacesQueued(t *testing.T) {
	q := New()
	q.Push(obj("a", "1", false))
	q.Push(obj("a", "2", true))
	if got := popAll(q); len(got) != 1 || got[0] != "a@2(deleted)" {
		t.Fatalf("popped %v, want [a@2(deleted)]", got)
	}
}

func TestOfferDoesNotReplace(t *testing.T) {
	q := New()
	q.Push(obj("a", "5", false))
	if q.Offer(obj("a", "4", false)) {
		t.Fatal("Offer replaced a queued entry")
	}
	if !q.Offer(obj("b", "1", false)) {
		t.Fatal("Offer refused a new key")
	}
	if got := popAll(q); len(got) != 2 || got[0] != "a@5" || got[1] != "b@1" {
		t.Fatalf("popped %v, want [a@5 b@1]", got)
	}
}

func TestPendingMark(t *testing.T) {
	q := New()
	q.Push(obj("a", "1", false))
	q.Push(obj("b", "1", false))
	mark := q.Mark()
	q.Push(obj("c", "1", false))
	q.Push(obj("a", "2", false)) // replaced in place: still before the mark
	for _, want := range []bool{true, true, false} {
		if got := q.Pending(mark); got != want {
			t.Fatalf("Pending = %v, want %v", got, want)
		}
		q.Pop()
	}
	if q.Pending(mark) {
		t.Fatal("Pending on empty queue")
	}
}

// Updates to the same objects reuse their slots, in FIFO order again, and
// an acknowledged delete frees its object's slot: the index holds at most
// the objects the node has or is sent, however many versions pass through.
func TestSlotsAreReusedAndFreedByAcknowledgedDeletes(t *testing.T) {
	q := New()
	for round := range 3 {
		rv := strconv.Itoa(round + 1)
		for _, name := range []string{"a", "b", "c"} {
			q.Push(obj(name, rv, false))
		}
		if got, want := popAcked(q), []string{"a@" + rv, "b@" + rv, "c@" + rv}; !slices.Equal(got, want) {
			t.Fatalf("round %d popped %v, want %v", round, got, want)
		}
	}
	if len(q.slots) != 3 {
		t.Fatalf("%d slots for 3 objects updated 3 times, want 3", len(q.slots))
	}
	q.Push(obj("b", "4", true))
	if got := popAcked(q); !slices.Equal(got, []string{"b@4(deleted)"}) {
		t.Fatalf("popped %v, want b's delete", got)
	}
	if _, ok := q.slots[obj("b", "", false).Key]; ok || len(q.slots) != 2 {
		t.Fatalf("slots after b's delete: %d, b kept: %v; want 2 without b", len(q.slots), ok)
	}
	if !q.Offer(obj("b", "5", false)) || !slices.Equal(popAcked(q), []string{"b@5"}) {
		t.Fatal("a deleted object that comes back is not queued again")
	}
}

// A version the edge holds (from its Hello or an acknowledgement) is not
// sent again; a newer one is, and what the edge holds is what it acked.
func TestPopSkipsVersionsTheEdgeHolds(t *testing.T) {
	q := New()
	q.Hold(obj("a", "", false).Key, Held{UID: "ua", ResourceVersion: "1"})
	q.Push(obj("a", "1", false))
	q.Push(obj("b", "1", false))
	if got := popAcked(q); !slices.Equal(got, []string{"b@1"}) {
		t.Fatalf("popped %v, want only b@1 (the edge holds a@1)", got)
	}
	q.Push(obj("b", "1", false)) // republished unchanged (an informer resync)
	q.Push(obj("a", "2", false))
	if got := popAcked(q); !slices.Equal(got, []string{"a@2"}) {
		t.Fatalf("popped %v, want only a@2", got)
	}
	held := q.Held()
	if len(held) != 2 || held[obj("a", "", false).Key].ResourceVersion != "2" || held[obj("b", "", false).Key].ResourceVersion != "1" {
		t.Fatalf("held %v, want a@2 and b@1", held)
	}
	// Popped but not acknowledged: the edge still holds the old version.
	q.Push(obj("a", "3", false))
	if _, ok := q.Pop(); !ok || q.Held()[obj("a", "", false).Key].ResourceVersion != "2" {
		t.Fatalf("held before the ack: %v, want a@2", q.Held())
	}
}

// A delete acknowledged while a newer apply of the same object is in
// flight does not lose the apply's acknowledgement.
func TestDeleteThenApplyInFlight(t *testing.T) {
	q := New()
	key := obj("a", "", false).Key
	q.Hold(key, Held{UID: "ua", ResourceVersion: "1"})
	q.Push(obj("a", "2", true))
	del, _ := q.Pop()
	q.Push(obj("a", "3", false))
	apply, _ := q.Pop()
	q.Acknowledged(del)
	q.Push(obj("other", "1", false)) // the index changes meanwhile
	q.Acknowledged(apply)
	if h, ok := q.Held()[key]; !ok || h.ResourceVersion != "3" {
		t.Fatalf("held %v after the delete and then the apply were acknowledged, want a@3", q.Held())
	}
	q.Push(obj("a", "3", false))
	if got := popAcked(q); !slices.Equal(got, []string{"other@1"}) {
		t.Fatalf("popped %v, want other@1 only (the edge holds a@3)", got)
	}
}

// A version the edge held is sent again when a newer one is on its way:
// the edge will hold that one (a subscription ACTIVE, ENDED, then ACTIVE
// again; an object deleted and then covered again at the same version).
func TestPopSendsAHeldVersionBackWhileANewerIsInFlight(t *testing.T) {
	q := New()
	key := obj("a", "", false).Key
	q.Hold(key, Held{UID: "ua", ResourceVersion: "1"})
	q.Push(obj("a", "2", false))
	ended, _ := q.Pop()
	q.Push(obj("a", "1", false))
	back, ok := q.Pop()
	if !ok || back.Object.ResourceVersion != "1" {
		t.Fatalf("popped %v, %v while a@2 is in flight, want a@1 again", back.Object, ok)
	}
	q.Acknowledged(ended)
	q.Acknowledged(back)
	if h := q.Held()[key]; h.ResourceVersion != "1" {
		t.Fatalf("held %v once both are acknowledged, want a@1", q.Held())
	}
	// An acknowledgement that arrives late (after a later entry's) does
	// not say what the edge holds.
	q.Push(obj("a", "3", false))
	third, _ := q.Pop()
	q.Push(obj("a", "4", false))
	fourth, _ := q.Pop()
	q.Acknowledged(fourth)
	q.Acknowledged(third)
	if h := q.Held()[key]; h.ResourceVersion != "4" {
		t.Fatalf("held %v, want a@4 (the last sent)", q.Held())
	}
}
