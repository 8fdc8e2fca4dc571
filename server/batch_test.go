package server_test

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
)

// connectBatching is connect for an edge that accepts batches of up to
// maxBytes.
func connectBatching(t testing.TB, env *servertest.Env, node string, maxBytes uint32) *edge {
	t.Helper()
	e := openStream(t, env.DialNode(t, node), node)
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{
		NodeName: node, AgentVersion: "test-edge/0", Batches: &edgesyncv1.Batches{MaxMessageBytes: maxBytes},
	}}})
	if w := e.recv().GetWelcome(); w == nil {
		t.Fatalf("%s: first message is not Welcome", node)
	}
	return e
}

// received is what a batching edge got: the events in order, and per
// message how many events it carried and its encoded size.
type received struct {
	events []event
	counts []int
	sizes  []int
	last   uint64 // the last message's sequence
}

func (r received) batches() int {
	n := 0
	for _, c := range r.counts {
		if c > 1 {
			n++
		}
	}
	return n
}

// recvEvents receives messages until n object events arrived, unpacking
// batches, and checks what the protocol promises of each batch: object
// events only, consecutive sequences in order, the batch's sequence its
// last event's, and each message's sequence right after the one before.
func (e *edge) recvEvents(n int, prev uint64) received {
	e.t.Helper()
	var r received
	for len(r.events) < n {
		msg := e.recv()
		r.sizes = append(r.sizes, proto.Size(msg))
		events := []*edgesyncv1.SyncResponse{msg}
		if b := msg.GetEventBatch(); b != nil {
			events = b.GetEvents()
			if len(events) < 2 {
				e.t.Fatalf("%s: a batch of %d events", e.node, len(events))
			}
		}
		for _, m := range events {
			ev, ok := toEvent(m)
			if !ok {
				e.t.Fatalf("%s: want an object event, got %v", e.node, m)
			}
			if ev.seq != prev+1 {
				e.t.Fatalf("%s: event %s has sequence %d, want %d", e.node, names([]event{ev})[0], ev.seq, prev+1)
			}
			prev = ev.seq
			r.events = append(r.events, ev)
		}
		if msg.GetSequence() != prev {
			e.t.Fatalf("%s: message sequence %d, want its last event's, %d", e.node, msg.GetSequence(), prev)
		}
		r.counts = append(r.counts, len(events))
	}
	r.last = prev
	return r
}

// A batching edge and an older one on the same server, with the same
// events waiting for a full window: once acknowledged, the older gets
// one event per message (recvObjects fails on anything else), the
// batching one all of the window's worth in one message, in the same order
// and with the same sequences.
func TestBatchesOnlyForEdgesThatAcceptThem(t *testing.T) {
	const window, objects = 10, 25
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = window })

	older := connect(t, env, "older")
	batching := connectBatching(t, env, "batching", 1<<20)
	_, _, olderSeq := older.recvInitial()
	_, _, seq := batching.recvInitial()
	put := func(prefix string, n int) {
		for i := range n {
			obj := cm(fmt.Sprintf("%s-%02d", prefix, i), "1")
			ctrls.Put("older", obj)
			ctrls.Put("batching", obj)
		}
	}
	// The window fills; what is put next waits for an acknowledgement.
	put("block", window)
	olderBlock := older.recvObjects(window)
	block := batching.recvEvents(window, seq)
	put("cm", objects)
	older.ack(olderBlock[window-1].seq)
	batching.ack(block.last)

	olderLive := older.recvObjects(window)
	if olderLive[0].seq != olderSeq+window+1 {
		t.Fatalf("older edge: first event after the ack has sequence %d, want %d", olderLive[0].seq, olderSeq+window+1)
	}
	live := batching.recvEvents(window, block.last)
	if len(live.counts) != 1 {
		t.Fatalf("batching edge: %d events waiting for the window came in %d messages (%v), want one batch", window, len(live.counts), live.counts)
	}
	if strings.Join(names(live.events), " ") != strings.Join(names(olderLive), " ") {
		t.Fatalf("batching edge got %v, older edge %v: want the same events in the same order", names(live.events), names(olderLive))
	}
}

// With the window full, events wait; one acknowledgement of a batch's
// sequence releases the window, and what waited comes in batches no
// larger than the window and the edge's size.
func TestBatchesRespectWindowSizeAndAcks(t *testing.T) {
	const window, objects = 8, 30
	const maxBytes = 2048 // two or three of the ~600-byte objects below
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = window })
	e := connectBatching(t, env, "node-a", maxBytes)
	_, _, seq := e.recvInitial()

	block := cm("block", "1")
	ctrls.Put("node-a", block)
	first := e.recvEvents(1, seq)
	// The window has room for window-1 more; all objects wait for it.
	value := strings.Repeat("x", 500)
	for i := range objects {
		ctrls.Put("node-a", feedtest.ConfigMap("default", fmt.Sprintf("cm-%02d", i), "1", map[string]string{"v": value}))
	}
	big := feedtest.ConfigMap("default", "big", "1", map[string]string{"v": strings.Repeat("y", 3*maxBytes)})
	ctrls.Put("node-a", big)

	var all []event
	last := first.last
	for len(all) < objects+1 {
		want := min(window-1, objects+1-len(all))
		if len(all) > 0 {
			want = min(window, objects+1-len(all))
		}
		r := e.recvEvents(want, last)
		for i, size := range r.sizes {
			if r.counts[i] > 1 && size > maxBytes {
				t.Fatalf("a batch of %d events is %d bytes; the edge accepts %d", r.counts[i], size, maxBytes)
			}
		}
		all = append(all, r.events...)
		last = r.last
		if len(all) < objects+1 {
			// The window is full: the server says so, and waits.
			admin := edgesyncv1.NewAdminServiceClient(env.DialAdmin(t))
			resp, err := admin.GetSession(t.Context(), &edgesyncv1.GetSessionRequest{NodeName: "node-a"})
			if err != nil {
				t.Fatal(err)
			}
			if s := resp.GetSession(); s.GetUnacknowledged() != window {
				t.Fatalf("%d unacknowledged, want the window, %d", s.GetUnacknowledged(), window)
			}
			e.ack(last) // the batch's own sequence acknowledges every event in it
		}
	}
	wantNames := make([]string, 0, objects+1)
	for i := range objects {
		wantNames = append(wantNames, fmt.Sprintf("cm-%02d@1", i))
	}
	wantNames = append(wantNames, "big@1")
	if strings.Join(names(all), " ") != strings.Join(wantNames, " ") {
		t.Fatalf("events %v, want %v", names(all), wantNames)
	}
}

// An event larger than the edge's batch size comes alone, in a message of
// its own, as before batches.
func TestEventLargerThanABatchComesAlone(t *testing.T) {
	const maxBytes = 1024
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = 1 })
	e := connectBatching(t, env, "node-a", maxBytes)
	_, _, seq := e.recvInitial()
	ctrls.Put("node-a", cm("block", "1"))
	first := e.recvEvents(1, seq)
	ctrls.Put("node-a", feedtest.ConfigMap("default", "big", "1", map[string]string{"v": strings.Repeat("y", 4*maxBytes)}))
	ctrls.Put("node-a", cm("small", "1"))
	e.ack(first.last)
	r := e.recvEvents(1, first.last)
	if names(r.events)[0] != "big@1" || r.counts[0] != 1 || r.sizes[0] <= maxBytes {
		t.Fatalf("got %v in messages of %v events, %v bytes; want big@1 alone", names(r.events), r.counts, r.sizes)
	}
	e.ack(r.last)
	if r := e.recvEvents(1, r.last); names(r.events)[0] != "small@1" {
		t.Fatalf("then %v, want small@1", names(r.events))
	}
}
