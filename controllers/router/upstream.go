package router

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// upJob is one message from an edge application, for the rules whose
// source it is.
type upJob struct {
	node   string
	req    *edgesyncv1.SyncRequest
	rules  []*rule
	answer feed.Answer
}

// HandleReport takes a RouteMessage report from node (feed.Reporter's
// contract: it never blocks, and answers once). Only rules whose eventbus
// source names node and the message's topic route it.
func (r *Router) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	msg := req.GetRouteMessage()
	id := req.GetRequestId()
	if msg.GetId() == "" {
		answer(feed.Result(id, feed.NewError(feed.ErrInvalid, "route_message has no id; give every message a unique id")))
		return
	}
	rules := r.ix.Load().topics[node][msg.GetTopic()]
	if len(rules) == 0 {
		r.metrics.upward.WithLabelValues("no_rule").Inc()
		answer(feed.Result(id, feed.NewError(feed.ErrNotFound, fmt.Sprintf("no Rule routes MQTT topic %q from node %q", msg.GetTopic(), node))))
		return
	}
	if r.seen.has(node, msg.GetId()) {
		r.metrics.upward.WithLabelValues("duplicate").Inc()
		answer(feed.Result(id, nil))
		return
	}
	select {
	case r.up <- upJob{node: node, req: req, rules: rules, answer: answer}:
	default:
		answer(feed.Result(id, feed.NewError(feed.ErrResourceExhausted, "the server has too many messages from edges to deliver; send it again shortly")))
	}
}

func (r *Router) upWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-r.up:
			r.deliverUp(ctx, job)
		}
	}
}

// deliverUp POSTs the message to every rule's rest target, each with
// bounded retries, and answers the edge.
func (r *Router) deliverUp(ctx context.Context, job upJob) {
	msg := job.req.GetRouteMessage()
	var failed []string
	for _, rl := range job.rules {
		url := rl.targetResource["resource"]
		if err := r.post(ctx, url, msg.GetBody()); err != nil {
			r.count(rl.key, false, fmt.Sprintf("message %s from node %s to %s: %v", msg.GetId(), job.node, url, err))
			failed = append(failed, fmt.Sprintf("rule %s: %v", rl.key, err))
			r.log.Info("message from edge not delivered", zap.String("node", job.node), zap.Stringer("rule", rl.key), zap.Error(err))
			continue
		}
		r.count(rl.key, true, "")
	}
	if len(failed) > 0 {
		r.metrics.upward.WithLabelValues("failed").Inc()
		job.answer(feed.Result(job.req.GetRequestId(), feed.NewError(feed.ErrUnavailable, fmt.Sprint(failed))))
		return
	}
	r.seen.add(job.node, msg.GetId())
	r.metrics.upward.WithLabelValues("delivered").Inc()
	job.answer(feed.Result(job.req.GetRequestId(), nil))
}

// post sends body to url, trying TargetRetries times with a growing pause
// while the target fails (a connection error or a 5xx answer; a 4xx is
// final).
func (r *Router) post(ctx context.Context, url string, body []byte) error {
	var err error
	pause := 200 * time.Millisecond
	for try := range r.cfg.TargetRetries {
		if try > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
			pause *= 2
		}
		var retry bool
		if retry, err = r.postOnce(ctx, url, body); err == nil || !retry {
			return err
		}
	}
	return fmt.Errorf("%w (after %d tries)", err, r.cfg.TargetRetries)
}

func (r *Router) postOnce(ctx context.Context, url string, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.TargetTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("target %q: %w", url, err)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return resp.StatusCode >= 500, fmt.Errorf("target answered %s", resp.Status)
	}
	return false, nil
}

// seenIDs remembers the latest ids delivered upward, so that a message an
// edge sends again (its answer was lost with its stream) is not delivered
// twice by this replica.
type seenIDs struct {
	mu    sync.Mutex // guards the fields below
	ids   map[string]struct{}
	order []string
	next  int
}

func newSeenIDs(n int) *seenIDs {
	return &seenIDs{ids: make(map[string]struct{}, n), order: make([]string, n)}
}

func (s *seenIDs) has(node, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[node+"/"+id]
	return ok
}

func (s *seenIDs) add(node, id string) {
	k := node + "/" + id
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ids[k]; ok {
		return
	}
	if old := s.order[s.next]; old != "" {
		delete(s.ids, old)
	}
	s.order[s.next] = k
	s.ids[k] = struct{}{}
	s.next = (s.next + 1) % len(s.order)
}
