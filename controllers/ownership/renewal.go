package ownership

// This file keeps the replica Lease: its renewal, and what a replica does
// when it can no longer trust it.

import (
	"context"
	"encoding/json"
	"time"

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/server/feed"
)

// renew writes the replica Lease: a merge patch of renewTime, or a create.
// Nobody but this replica writes its Lease, so the patch carries no
// resourceVersion and never conflicts (an update would, after a renewal
// that timed out here but landed, until the cache caught up).
func (m *Manager) renew(ctx context.Context) error {
	start := m.cfg.Now()
	// A renewal may take until this replica would stop trusting its Lease
	// (a slow API server answers late rather than never); the Lease it
	// writes says start, so a late one never extends the claim past what
	// this replica believes.
	ctx, cancel := context.WithTimeout(ctx, m.renewTimeout(start))
	defer cancel()
	leases := m.cfg.ReplicaClient.CoordinationV1().Leases(m.cfg.Namespace)
	name := ReplicaLeaseName(m.cfg.Replica)
	now := metav1.NewMicroTime(start)
	spec := coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(m.cfg.Replica),
		LeaseDurationSeconds: ptr.To(int32(m.cfg.LeaseDuration / time.Second)),
		RenewTime:            &now,
	}
	meta := metav1.ObjectMeta{Labels: map[string]string{LabelKind: KindReplica}}
	if m.cfg.Address != "" {
		meta.Annotations = map[string]string{AnnotationAddress: m.cfg.Address}
	}
	if m.cfg.RouterAddress != "" {
		if meta.Annotations == nil {
			meta.Annotations = map[string]string{}
		}
		meta.Annotations[AnnotationRouterAddress] = m.cfg.RouterAddress
	}
	metaPatch := map[string]any{"labels": meta.Labels}
	if meta.Annotations != nil {
		metaPatch["annotations"] = meta.Annotations
	}
	patch, err := json.Marshal(map[string]any{"metadata": metaPatch, "spec": spec})
	if err != nil {
		return err
	}
	_, err = leases.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		meta.Name, meta.Namespace = name, m.cfg.Namespace
		spec.AcquireTime = &now
		_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: meta, Spec: spec}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			_, err = leases.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
		}
	}
	if err != nil {
		return err
	}
	end := m.cfg.Now()
	m.mu.Lock()
	prev := m.renewedAt
	m.renewedAt = start
	// A renewal that completed LeaseDuration - RenewInterval or more after
	// the previous one may have let the Lease expire for the others: the
	// nodes held since are released one by one as their records are
	// confirmed (confirm.go). An earlier one releases them all now.
	var confirm []string
	if !prev.IsZero() && end.Sub(prev) >= m.cfg.LeaseDuration-m.cfg.RenewInterval {
		m.lateAt = end
		for node := range m.claimed {
			if _, ok := m.unconfirmed[node]; !ok {
				m.unconfirmed[node] = struct{}{}
				confirm = append(confirm, node)
			}
		}
	}
	wasHolding := m.holding
	m.holding = false
	m.wakeLocked()
	m.mu.Unlock()
	for _, node := range confirm {
		m.confirm.Add(node)
	}
	if wasHolding || len(confirm) > 0 {
		m.log.Info("replica Lease renewed again; releasing the held reports",
			zap.Duration("sinceLastRenewal", end.Sub(prev)), zap.Int("toConfirm", len(confirm)))
	}
	select {
	case <-m.ready:
	default:
		m.log.Info("holding the replica Lease", zap.String("lease", name), zap.Duration("duration", m.cfg.LeaseDuration))
		close(m.ready)
	}
	return nil
}

// renewTimeout is how long a renewal starting at start may take: until
// this replica's Lease stops being surely valid, and at least a
// RenewInterval.
func (m *Manager) renewTimeout(start time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.renewedAt.IsZero() {
		return m.cfg.RenewInterval
	}
	return max(m.renewedAt.Add(m.cfg.LeaseDuration-m.cfg.RenewInterval).Sub(start), m.cfg.RenewInterval)
}

// selfValid reports whether this replica may write for the nodes it owns:
// its Lease was renewed less than LeaseDuration/2 ago, before any other
// replica sees it as missed (unresponsive: LeaseDuration/2 and
// unresponsiveSlack after its renewTime). From then on it holds.
func (m *Manager) selfValid() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.selfValidLocked()
}

// selfValidLocked is selfValid with m.mu held.
func (m *Manager) selfValidLocked() bool {
	return !m.renewedAt.IsZero() && m.cfg.Now().Sub(m.renewedAt) < m.cfg.LeaseDuration/2
}

// checkOwnLease notes when this replica starts holding its nodes' reports
// (its Lease is too old to write for them), and ends every session once a
// hold has lasted HoldLimit: other replicas may take its nodes long since,
// and its edges are better served by a replica that reaches the API server.
func (m *Manager) checkOwnLease() {
	m.mu.Lock()
	if m.renewedAt.IsZero() || m.selfValidLocked() {
		m.mu.Unlock()
		return
	}
	since := m.cfg.Now().Sub(m.renewedAt)
	if since < m.cfg.HoldLimit {
		started := !m.holding
		m.holding = true
		n := len(m.claimed)
		m.mu.Unlock()
		if started {
			m.log.Warn("replica Lease not renewed in time; holding the nodes' reports until it is",
				zap.Int("sessions", n), zap.Duration("sinceLastRenewal", since), zap.Duration("holdLimit", m.cfg.HoldLimit))
		}
		return
	}
	lapsed := m.claimed
	m.claimed = make(map[string]int64)
	m.unconfirmed = make(map[string]struct{})
	m.wakeLocked()
	m.mu.Unlock()
	if len(lapsed) == 0 {
		return
	}
	m.log.Warn("replica Lease not renewed within the hold limit; ending every session so that the edges reconnect to a replica that reaches the API server",
		zap.Int("sessions", len(lapsed)), zap.Duration("sinceLastRenewal", since))
	for node := range lapsed {
		m.sessions.EndSession(node, feed.Errorf(feed.ErrUnavailable,
			"server %s cannot renew its ownership of nodes with the Kubernetes API server; connect again (possibly to another replica)", m.cfg.Replica))
	}
}

// resign deletes the replica Lease after a clean stop.
func (m *Manager) resign() {
	m.mu.Lock()
	m.renewedAt = time.Time{} // owns nothing from now on
	m.claimed = make(map[string]int64)
	m.unconfirmed = make(map[string]struct{})
	m.wakeLocked()
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := m.cfg.ReplicaClient.CoordinationV1().Leases(m.cfg.Namespace).Delete(ctx, ReplicaLeaseName(m.cfg.Replica), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		m.log.Warn("cannot delete the replica Lease; its nodes move when it expires", zap.Error(err))
	}
}

// alive reports whether replica's Lease is valid now, from the cache (this
// replica's own from its last renewal).
func (m *Manager) alive(replica string) bool {
	if replica == m.cfg.Replica {
		return m.selfValid()
	}
	l, err := m.leases.Get(ReplicaLeaseName(replica))
	if err != nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil || ptr.Deref(l.Spec.HolderIdentity, "") != replica {
		return false
	}
	expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	return m.cfg.Now().Before(expires)
}

// untilExpiry is how long until the Lease of rec's holder expires (a
// moment after, for clocks' sake); an hour when there is nothing to wait
// for.
func (m *Manager) untilExpiry(rec *coordinationv1.Lease) time.Duration {
	if rec == nil {
		return time.Hour
	}
	holder := ptr.Deref(rec.Spec.HolderIdentity, "")
	l, err := m.leases.Get(ReplicaLeaseName(holder))
	if holder == "" || holder == m.cfg.Replica || err != nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return time.Hour
	}
	expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second + 100*time.Millisecond)
	return max(expires.Sub(m.cfg.Now()), 10*time.Millisecond)
}
