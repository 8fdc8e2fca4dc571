package nodestatus

import (
	"context"
	"errors"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/server/feed"
)

// cacheWait bounds how long a registration waits for the Node it wrote to
// reach the cache, which it normally does within milliseconds.
const cacheWait = 10 * time.Second

// edgeNode returns node's Node from the cache when it is an edge node, and
// otherwise the status that refuses a report for it: NOT_FOUND when there
// is no Node (never registered, or deleted), PERMISSION_DENIED when the
// Node is not an edge node (a cloud kubelet's), whose status and Lease an
// edge certificate may never write.
func edgeNode(cfg *Config, node string) (*corev1.Node, error) {
	n, err := cfg.Nodes.Get(node)
	if apierrors.IsNotFound(err) {
		return nil, feed.Errorf(feed.ErrNotFound,
			"Node %q does not exist (never registered, or deleted): send NodeRegistration to register it", node)
	}
	if err != nil {
		return nil, feed.Errorf(feed.ErrUnavailable, "read Node %q from the cache: %v", node, err)
	}
	if !isEdge(cfg, n) {
		return nil, notEdge(cfg, node)
	}
	return n, nil
}

func isEdge(cfg *Config, n *corev1.Node) bool {
	_, ok := n.Labels[cfg.EdgeLabel]
	return ok
}

// notEdge is the refusal of anything an edge asks for a Node that is not
// an edge node.
func notEdge(cfg *Config, node string) error {
	return feed.Errorf(feed.ErrPermissionDenied,
		"Node %q is not an edge node (it has no %q label): an edge certificate may not connect as it, report its status or renew its Lease; label the Node as an edge node, or use a certificate for another node name",
		node, cfg.EdgeLabel)
}

// Admit tells whether node may hold a session, from the cache: an edge
// node may, and so may a node with no Node yet (it registers); a Node
// without the edge label may not.
func (c *Controller) Admit(node string) error {
	n, err := c.cfg.Nodes.Get(node)
	if err != nil || isEdge(&c.cfg, n) {
		return nil
	}
	return notEdge(&c.cfg, node)
}

// NotEdge is the status that refuses node a session because its Node is
// not an edge node.
func (c *Controller) NotEdge(node string) error { return notEdge(&c.cfg, node) }

// NodeChanged tells that the cache now holds node's Node at a new version,
// waking registrations that wait for it.
func (c *Controller) NodeChanged(node string) {
	c.cached.notify(node)
}

// waitCached waits until the cache holds node's Node with uid as an edge
// node, so that reports answered after the registration are checked
// against it, or returns the status that says why it does not.
func (c *Controller) waitCached(ctx context.Context, node string, uid types.UID) error {
	ctx, cancel := context.WithTimeout(ctx, cacheWait)
	defer cancel()
	for {
		changed, done := c.cached.wait(node) // before the look, so no change is missed
		n, err := c.cfg.Nodes.Get(node)
		if err == nil && n.UID == uid {
			done()
			if !isEdge(&c.cfg, n) {
				return notEdge(&c.cfg, node)
			}
			return nil
		}
		select {
		case <-changed:
			done()
		case <-ctx.Done():
			done()
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return feed.Errorf(feed.ErrUnavailable,
					"Node %q is registered but this server has not seen it within %s; send NodeRegistration again", node, cacheWait)
			}
			return ctx.Err()
		}
	}
}

// waiters wakes goroutines waiting for a node's Node to change in the cache.
type waiters struct {
	mu sync.Mutex // guards m
	m  map[string]*waiter
}

// waiter is the channel closed at a node's next change, shared by everyone
// waiting for it.
type waiter struct {
	ch chan struct{}
	n  int // goroutines waiting on ch
}

// wait returns a channel closed at node's next change, and done, which the
// caller must call once it stops waiting.
func (w *waiters) wait(node string) (<-chan struct{}, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = make(map[string]*waiter)
	}
	e := w.m[node]
	if e == nil {
		e = &waiter{ch: make(chan struct{})}
		w.m[node] = e
	}
	e.n++
	return e.ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		e.n--
		if e.n == 0 && w.m[node] == e {
			delete(w.m, node)
		}
	}
}

func (w *waiters) notify(node string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.m[node]; e != nil {
		close(e.ch)
		delete(w.m, node)
	}
}
