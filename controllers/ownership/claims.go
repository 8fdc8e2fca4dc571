package ownership

// This file takes nodes: Claim, and the write guard that lets a node's
// writes run only while this replica owns it.

import (
	"context"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/server/feed"
)

// BeginWrite admits a write for node (its Lease, its status, its pods'
// status) while this replica owns it, and returns the function to call
// once the write is done: a node asked for by another replica is handed
// over only after the writes under way for it finished, so that no write
// of the old owner lands after the new owner's. While this replica holds
// its nodes' writes (its replica Lease is late, or the node awaits its
// confirmation after a late renewal) BeginWrite waits, until the hold
// ends or ctx does. A node this replica does not own (any more) gets
// UNAVAILABLE, as does a write whose ctx ended while held.
func (m *Manager) BeginWrite(ctx context.Context, node string) (done func(), err error) {
	for {
		m.mu.Lock()
		if _, ok := m.claimed[node]; !ok {
			m.mu.Unlock()
			return nil, feed.Errorf(feed.ErrUnavailable, "server %s no longer serves node %q (another replica took it over); connect again", m.cfg.Replica, node)
		}
		if _, held := m.unconfirmed[node]; !held && m.selfValidLocked() {
			break
		}
		wake := m.changed
		m.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, feed.Errorf(feed.ErrUnavailable, "server %s holds the reports of node %q until it renews its ownership with the Kubernetes API server: %v", m.cfg.Replica, node, ctx.Err())
		}
	}
	defer m.mu.Unlock()
	w := m.writing[node]
	if w == nil {
		w = &writes{idle: make(chan struct{})}
		m.writing[node] = w
	}
	w.n++
	return sync.OnceFunc(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if w.n--; w.n == 0 {
			close(w.idle)
			delete(m.writing, node)
		}
	}), nil
}

// awaitWrites waits until no write admitted by BeginWrite is under way for
// node, at most timeout; it reports whether none is.
func (m *Manager) awaitWrites(ctx context.Context, node string, timeout time.Duration) bool {
	m.mu.Lock()
	w := m.writing[node]
	m.mu.Unlock()
	if w == nil {
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.idle:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// Claim makes this replica node's owner, taking the record over from a
// dead holder or asking a live one to hand it over, and returns once the
// record names this replica. Its error is a gRPC status the edge can act
// on (UNAVAILABLE: connect again).
func (m *Manager) Claim(ctx context.Context, node string) error {
	select {
	case <-m.ready:
	default:
		return feed.Errorf(feed.ErrUnavailable, "server %s is not holding its replica Lease yet; connect again shortly", m.cfg.Replica)
	}
	// A live holder has HandoverTimeout to hand the node over; a holder
	// that stopped renewing its Lease is waited for until the Lease
	// expires, and HandoverTimeout beyond.
	deadline := time.NewTimer(m.cfg.HandoverTimeout)
	defer deadline.Stop()
	waitUntil := time.Now().Add(m.cfg.HandoverTimeout)
	name := RecordName(node)
	asked := false
	for {
		if !m.selfValid() {
			return feed.Errorf(feed.ErrUnavailable, "server %s cannot renew its replica Lease; connect again (possibly to another replica)", m.cfg.Replica)
		}
		changed := m.nextEvent(name)
		rec, err := m.leases.Get(name)
		var written *coordinationv1.Lease
		switch {
		case apierrors.IsNotFound(err):
			written, err = m.write(ctx, nil, m.newRecord(node))
		case err != nil:
			return feed.Errorf(feed.ErrUnavailable, "read ownership of node %q: %v", node, err)
		default:
			holder := ptr.Deref(rec.Spec.HolderIdentity, "")
			wanted := rec.Annotations[AnnotationWantedBy]
			switch {
			case holder == m.cfg.Replica && wanted == "":
				m.claim(node, rec)
				m.confirmIfLate(node)
				return nil
			case holder == m.cfg.Replica, holder == "", !m.alive(holder):
				// Ours with a stale request, released, or its holder died.
				written, err = m.write(ctx, rec, m.holdBy(rec, m.cfg.Replica))
			case m.unresponsive(holder):
				// Its holder missed a renewal and has most likely died
				// (its edges are reconnecting everywhere): asking would
				// cost a write per node and be answered by nobody. Wait
				// for its Lease to expire.
				if until := time.Now().Add(m.untilExpiry(rec) + m.cfg.HandoverTimeout); until.After(waitUntil) {
					waitUntil = until
					deadline.Reset(time.Until(until))
				}
			case wanted != m.cfg.Replica:
				req := rec.DeepCopy()
				metav1.SetMetaDataAnnotation(&req.ObjectMeta, AnnotationWantedBy, m.cfg.Replica)
				_, err = m.write(ctx, rec, req)
				asked = asked || err == nil
			default:
				asked = true // asked before; wait for the holder
			}
		}
		switch {
		case err == nil && written != nil:
			m.claim(node, written)
			return nil
		case err != nil && !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err):
			if ctx.Err() != nil {
				return m.timedOut(node, rec, asked)
			}
			return feed.Errorf(feed.ErrUnavailable, "take ownership of node %q: %v", node, err)
		}
		// Conflict, or waiting for a handover: retry on the record's next
		// event (the cache then holds a newer version), or when the
		// holder's Lease expires (a dead holder hands nothing over).
		expiry := time.NewTimer(m.untilExpiry(rec))
		select {
		case <-changed:
		case <-expiry.C:
		case <-deadline.C:
			expiry.Stop()
			// A holder asked while it looked alive that has missed a
			// renewal since will not answer: wait for its Lease instead.
			if holder := holderOf(rec); holder != "" && m.unresponsive(holder) {
				waitUntil = time.Now().Add(m.untilExpiry(rec) + m.cfg.HandoverTimeout)
				deadline.Reset(time.Until(waitUntil))
				continue
			}
			return m.timedOut(node, rec, asked)
		case <-ctx.Done():
			expiry.Stop()
			return m.timedOut(node, rec, asked)
		}
		expiry.Stop()
	}
}

// holderOf is rec's holder; "" for no record.
func holderOf(rec *coordinationv1.Lease) string {
	if rec == nil {
		return ""
	}
	return ptr.Deref(rec.Spec.HolderIdentity, "")
}

// write creates (cur nil) or updates a node record, within HandoverTimeout.
func (m *Manager) write(ctx context.Context, cur, next *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.HandoverTimeout)
	defer cancel()
	leases := m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace)
	if cur == nil {
		return leases.Create(ctx, next, metav1.CreateOptions{})
	}
	return leases.Update(ctx, next, metav1.UpdateOptions{})
}

// unresponsive reports whether replica's Lease, still valid, was last
// renewed more than half its duration ago: a live replica renews it at
// least twice per duration (New enforces it), so this one missed a
// renewal and has most likely died.
func (m *Manager) unresponsive(replica string) bool {
	l, err := m.leases.Get(ReplicaLeaseName(replica))
	if err != nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	late := time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second / 2
	return m.cfg.Now().Sub(l.Spec.RenewTime.Time) > late+unresponsiveSlack
}

// unresponsiveSlack allows for a slow renewal write and for clocks that
// differ between replicas.
const unresponsiveSlack = time.Second

func (m *Manager) timedOut(node string, rec *coordinationv1.Lease, asked bool) error {
	holder := ""
	if rec != nil {
		holder = ptr.Deref(rec.Spec.HolderIdentity, "")
	}
	if asked && holder != "" {
		return feed.Errorf(feed.ErrUnavailable, "node %q is held by server %s, which did not hand it over within %s; connect again", node, holder, m.cfg.HandoverTimeout)
	}
	return feed.Errorf(feed.ErrUnavailable, "could not take ownership of node %q within %s; connect again", node, m.cfg.HandoverTimeout)
}

func (m *Manager) newRecord(node string) *coordinationv1.Lease {
	now := metav1.NewMicroTime(m.cfg.Now())
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name: RecordName(node), Namespace: m.cfg.Namespace,
			Labels:      map[string]string{LabelKind: KindNode},
			Annotations: map[string]string{AnnotationNode: node},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(m.cfg.Replica), AcquireTime: &now, LeaseTransitions: ptr.To(int32(0))},
	}
}

// holdBy returns rec with holder as its holder and no request pending.
func (m *Manager) holdBy(rec *coordinationv1.Lease, holder string) *coordinationv1.Lease {
	next := rec.DeepCopy()
	delete(next.Annotations, AnnotationWantedBy)
	delete(next.Annotations, AnnotationReleased)
	if ptr.Deref(next.Spec.HolderIdentity, "") != holder {
		now := metav1.NewMicroTime(m.cfg.Now())
		next.Spec.HolderIdentity = ptr.To(holder)
		next.Spec.AcquireTime = &now
		next.Spec.LeaseTransitions = ptr.To(ptr.Deref(next.Spec.LeaseTransitions, 0) + 1)
	}
	return next
}

// claim records that this replica owns node as of rec's version.
func (m *Manager) claim(node string, rec *coordinationv1.Lease) {
	m.mu.Lock()
	m.claimed[node] = version(rec)
	m.mu.Unlock()
}
