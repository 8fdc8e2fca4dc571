package ownership

// This file confirms, after a late renewal, that no other replica took the
// nodes whose reports this replica held, before releasing them.

import (
	"context"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/server/feed"
)

// confirmWorkers is how many records are confirmed at once after a late
// renewal; the client's QPS bounds them further.
const confirmWorkers = 8

// maxConfirmRetries bounds how often a record is tried again while this
// replica's cache lags behind it (a conflict) or the API server fails.
const maxConfirmRetries = 8

// confirmNext confirms one held node: a conditional update of its record,
// from the version in this replica's cache, succeeds only if no replica
// wrote the record since; the node's writes are then released. A record
// that names another holder, or keeps conflicting, ends the node's session
// without releasing anything.
func (m *Manager) confirmNext(ctx context.Context) bool {
	node, quit := m.confirm.Get()
	if quit {
		return false
	}
	defer m.confirm.Done(node)
	m.mu.Lock()
	_, held := m.unconfirmed[node]
	m.mu.Unlock()
	if !held {
		m.confirm.Forget(node)
		return true
	}
	rec, err := m.leases.Get(RecordName(node))
	if err == nil && holderOf(rec) != m.cfg.Replica {
		// The cache already shows the record taken: observe ends the
		// session (or has).
		m.confirm.Forget(node)
		m.lose(node, holderOf(rec))
		return true
	}
	if err == nil {
		next := rec.DeepCopy()
		now := metav1.NewMicroTime(m.cfg.Now())
		next.Spec.RenewTime = &now
		var written *coordinationv1.Lease
		written, err = m.write(ctx, rec, next)
		if err == nil {
			m.confirm.Forget(node)
			m.mu.Lock()
			if _, ok := m.claimed[node]; ok {
				m.claimed[node] = version(written)
				delete(m.unconfirmed, node)
				m.wakeLocked()
			}
			m.mu.Unlock()
			return true
		}
	}
	if ctx.Err() != nil {
		return true
	}
	if !apierrors.IsNotFound(err) && m.confirm.NumRequeues(node) < maxConfirmRetries {
		// A conflict: the cache lags behind the record, or another
		// replica wrote it; the next try sees which.
		m.confirm.AddRateLimited(node)
		return true
	}
	m.confirm.Forget(node)
	m.log.Info("cannot confirm the ownership of a held node; ending its session", zap.String("node", node), zap.Error(err))
	m.lose(node, "")
	return true
}

// confirmIfLate holds node, claimed from a record that already named this
// replica (nothing written), until the record is confirmed when the last
// late renewal was less than a LeaseDuration ago: a replica whose cache
// missed that renewal may still take the record.
func (m *Manager) confirmIfLate(node string) {
	m.mu.Lock()
	late := !m.lateAt.IsZero() && m.cfg.Now().Sub(m.lateAt) < m.cfg.LeaseDuration
	if late {
		m.unconfirmed[node] = struct{}{}
	}
	m.mu.Unlock()
	if late {
		m.confirm.Add(node)
	}
}

// lose forgets node, whose record another replica may have taken, and
// ends its session here.
func (m *Manager) lose(node, holder string) {
	m.mu.Lock()
	_, ours := m.claimed[node]
	m.forgetLocked(node)
	m.mu.Unlock()
	if !ours {
		return
	}
	if holder != "" {
		m.sessions.EndSession(node, feed.Errorf(feed.ErrAborted, "node %q is now served by server %q; this stream is replaced", node, holder))
		return
	}
	m.sessions.EndSession(node, feed.Errorf(feed.ErrUnavailable,
		"server %s could not confirm its ownership of node %q after renewing it late; connect again", m.cfg.Replica, node))
}
