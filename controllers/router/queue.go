package router

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Outcomes of a delivery that did not get an answer from the edge.
var (
	// ErrBufferFull: the node's buffer holds its limit; nothing was queued.
	ErrBufferFull = errors.New("buffer full")
	// ErrOffline: the node has no session on this replica and no buffer.
	ErrOffline = errors.New("node offline")
	// ErrExpired: the message's time to live ran out before the edge
	// answered.
	ErrExpired = errors.New("expired")
	// ErrMoved: the node moved to another replica before the message was
	// delivered.
	ErrMoved = errors.New("node moved to another replica")
)

// outcome is what became of one delivery.
type outcome struct {
	res *edgesyncv1.RouteResult // the edge's answer, nil with err
	err error
}

// message is one delivery waiting in a node's queue or unanswered.
type message struct {
	d       *edgesyncv1.RouteDelivery // ttl set when sent
	rule    ruleKey
	queued  time.Time
	expires time.Time
	size    int
	// done receives the outcome once (capacity 1); nobody need read it.
	done chan outcome
}

func (m *message) finish(o outcome) {
	select {
	case m.done <- o:
	default:
	}
}

// nodeQueue holds a node's eventbus deliveries in the order they were
// accepted: pending (not sent on the current stream) and inflight (sent,
// unanswered, oldest first). Deliveries of one node are therefore sent,
// and sent again after a reconnect, in order. Guarded by its mutex, which
// is also held while sending so that two senders never interleave.
type nodeQueue struct {
	node      string
	pending   []*message
	inflight  []*message
	bytes     int
	connected bool
	// idleSince is when the node last had a session here or a message
	// queued; a queue idle longer than the time to live is forgotten.
	idleSince time.Time
	// requests are the servicebus requests sent and unanswered, by id.
	requests map[string]*message
}

func (q *nodeQueue) len() int { return len(q.pending) + len(q.inflight) }

// add queues m, or refuses it when the queue is at its limits.
func (q *nodeQueue) add(m *message, maxMessages, maxBytes int) error {
	if q.len() >= maxMessages || (q.len() > 0 && q.bytes+m.size > maxBytes) {
		return fmt.Errorf("node %q has %d messages (%d bytes) waiting, its limit: %w", q.node, q.len(), q.bytes, ErrBufferFull)
	}
	q.pending = append(q.pending, m)
	q.bytes += m.size
	return nil
}

// requeue puts the unanswered deliveries back in front of the pending
// ones, in order, to be sent again on the next stream.
func (q *nodeQueue) requeue() {
	if len(q.inflight) == 0 {
		return
	}
	q.pending = append(q.inflight, q.pending...)
	q.inflight = nil
}

// next takes the pending messages the window has room for, dropping the
// expired ones (returned apart), and marks them in flight.
func (q *nodeQueue) next(window int, now time.Time) (send, expired []*message) {
	for len(q.pending) > 0 && len(q.inflight) < window {
		m := q.pending[0]
		q.pending[0] = nil
		q.pending = q.pending[1:]
		if !now.Before(m.expires) {
			q.bytes -= m.size
			expired = append(expired, m)
			continue
		}
		m.d.Ttl = durationpb.New(m.expires.Sub(now))
		q.inflight = append(q.inflight, m)
		send = append(send, m)
	}
	return send, expired
}

// answered removes the delivery id answers, wherever it is.
func (q *nodeQueue) answered(id string) *message {
	for _, list := range []*[]*message{&q.inflight, &q.pending} {
		for i, m := range *list {
			if m.d.GetId() == id {
				*list = append((*list)[:i], (*list)[i+1:]...)
				q.bytes -= m.size
				return m
			}
		}
	}
	return nil
}

// expire removes the messages whose time to live ran out.
func (q *nodeQueue) expire(now time.Time) []*message {
	var gone []*message
	for _, list := range []*[]*message{&q.inflight, &q.pending} {
		kept := (*list)[:0]
		for _, m := range *list {
			if now.Before(m.expires) {
				kept = append(kept, m)
				continue
			}
			q.bytes -= m.size
			gone = append(gone, m)
		}
		clear((*list)[len(kept):])
		*list = kept
	}
	return gone
}

// drain removes every message.
func (q *nodeQueue) drain() []*message {
	all := append(q.inflight, q.pending...)
	q.inflight, q.pending, q.bytes = nil, nil, 0
	return all
}
