package server

import (
	"github.com/prometheus/client_golang/prometheus"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/frame"
	"github.com/edgesync/edgesync/server/queue"
)

// maxBatchBytes bounds a batch whatever the edge accepts: large enough that
// a batch of the window's events saves most of the per-message cost (the
// gRPC and HTTP/2 framing, a SendMsg, a Recv at the edge), small enough
// that one batch never holds a connection for long.
const maxBatchBytes = 64 << 10

// batchBytes is the largest batch the edge that sent hello accepts, 0
// when it accepts none (it did not set Hello.batches, or set a size too
// small for two events of any use).
func batchBytes(hello *edgesyncv1.Hello) int {
	b := hello.GetBatches()
	if b == nil {
		return 0
	}
	n := min(int(b.GetMaxMessageBytes()), maxBatchBytes)
	if n < frame.BatchOverhead+2*(frame.EventOverhead+64) {
		return 0
	}
	return n
}

// nextObjects numbers and returns the next object events to send, while
// the window has room: one frame alone, or, to an edge that accepts
// batches, every event that waits and fits in one batch (at least two).
// The caller holds mu. It returns nil when nothing waits.
func (s *session) nextObjects() (any, prometheus.Counter) {
	e, ok := s.queue.Pop() // skips versions the edge holds
	if !ok {
		return nil, nil
	}
	first := s.numberObject(e)
	room := s.batchBytes - frame.BatchOverhead - frame.EventOverhead - len(first.Payload)
	if room < frame.EventOverhead || len(s.inflight) >= s.srv.opts.AckWindow {
		return &first, s.srv.metrics.sentObjects.of(e.Object.Key.Kind)
	}
	sent := &batchSent{}
	sent.add(s.srv.metrics.sentObjects.of(e.Object.Key.Kind))
	b := &frame.Batch{Frames: []frame.Frame{first}}
	for len(s.inflight) < s.srv.opts.AckWindow {
		if s.initialQueued && !s.syncComplete && !s.queue.Pending(s.initialMark) {
			break // SyncComplete goes right after the initial sync's last event
		}
		e, ok := s.queue.PopUpTo(room - frame.EventOverhead)
		if !ok {
			break
		}
		f := s.numberObject(e)
		b.Frames = append(b.Frames, f)
		room -= frame.EventOverhead + len(f.Payload)
		sent.add(s.srv.metrics.sentObjects.of(e.Object.Key.Kind))
	}
	if len(b.Frames) == 1 {
		return &first, sent.Counter
	}
	sent.batch = s.srv.metrics
	return b, sent
}

// numberObject gives popped entry e the next sequence and records it in
// flight; the caller holds mu.
func (s *session) numberObject(e queue.Entry) frame.Frame {
	obj := e.Object
	s.lastSent++
	s.messagesSent++
	s.inflight = append(s.inflight, sentObject{sequence: s.lastSent, entry: e})
	if !s.syncComplete {
		if obj.Deleted {
			s.initialDeleted++
		} else {
			s.initialApplied++
		}
	}
	return frame.Frame{Sequence: s.lastSent, Payload: obj.Payload}
}

// batchSent counts a batch's events, each under its kind, when sendAll
// counts the batch as sent (Inc). It is a prometheus.Counter through the
// first kind's counter, which its other methods reach.
type batchSent struct {
	prometheus.Counter
	more  []prometheus.Counter // one per event after the first
	batch *metrics             // counts the batch itself
}

func (b *batchSent) add(c prometheus.Counter) {
	if b.Counter == nil {
		b.Counter = c
		return
	}
	b.more = append(b.more, c)
}

// Inc counts every event of the batch.
func (b *batchSent) Inc() {
	n := 1.0
	for _, c := range b.more {
		if c == b.Counter {
			n++
			continue
		}
		c.Inc()
	}
	b.Counter.Add(n)
	b.batch.batches.Inc()
	b.batch.batchedEvents.Add(float64(1 + len(b.more)))
}
