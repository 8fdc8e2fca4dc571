package ownership

// This file lets nodes go: handing a node to the replica that asks for it,
// an operator's release, and the records of deleted nodes.

import (
	"context"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/server/feed"
)

// handOverNext gives one requested record to the replica asking for it,
// after ending this replica's session of the node.
func (m *Manager) handOverNext(ctx context.Context) bool {
	name, quit := m.handover.Get()
	if quit {
		return false
	}
	defer m.handover.Done(name)
	rec, err := m.leases.Get(name)
	if err != nil {
		m.handover.Forget(name)
		return true
	}
	node, holder, wanted := rec.Annotations[AnnotationNode], ptr.Deref(rec.Spec.HolderIdentity, ""), rec.Annotations[AnnotationWantedBy]
	if holder != m.cfg.Replica || wanted == "" || wanted == m.cfg.Replica {
		m.handover.Forget(name)
		return true
	}
	// Stop serving the node before giving it away, unless this replica
	// claimed it again after the version asking for it (the edge came
	// back): the next event says whether it is still wanted.
	m.mu.Lock()
	if v, ok := m.claimed[node]; ok && v > version(rec) {
		m.mu.Unlock()
		m.handover.Forget(name)
		return true
	}
	m.forgetLocked(node)
	m.mu.Unlock()
	m.sessions.EndSession(node, feed.Errorf(feed.ErrAborted, "node %q connected to server %q; this stream is replaced", node, wanted))
	// No write for the node begins from now on; the new owner's must not
	// be followed by one of ours still under way.
	if !m.awaitWrites(ctx, node, m.cfg.RenewInterval) {
		m.log.Warn("handing a node over with a write for it still under way", zap.String("node", node), zap.String("to", wanted))
	}
	wctx, cancel := context.WithTimeout(ctx, m.cfg.RenewInterval)
	defer cancel()
	if _, err := m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace).Update(wctx, m.holdBy(rec, wanted), metav1.UpdateOptions{}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			m.log.Warn("cannot hand node over", zap.String("node", node), zap.String("to", wanted), zap.Error(err))
		}
		m.handover.AddRateLimited(name)
		return true
	}
	m.handover.Forget(name)
	m.log.Debug("handed node over", zap.String("node", node), zap.String("to", wanted))
	return true
}

// Release clears node's holder (an operator's disconnect): the owner ends
// its session with reason, and the node goes to whichever replica it
// connects to next.
func (m *Manager) Release(ctx context.Context, node, reason string) error {
	rec, err := m.leases.Get(RecordName(node))
	if err != nil {
		return err
	}
	next := rec.DeepCopy()
	next.Spec.HolderIdentity = nil
	delete(next.Annotations, AnnotationWantedBy)
	metav1.SetMetaDataAnnotation(&next.ObjectMeta, AnnotationReleased, reason)
	_, err = m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace).Update(ctx, next, metav1.UpdateOptions{})
	return err
}

// NodeDeleted queues the deletion of node's record, its Node being gone,
// so that records do not outlive their nodes. A node that registers again
// is claimed anew.
func (m *Manager) NodeDeleted(node string) { m.gone.Add(node) }

// forgetNext deletes one queued record of a deleted node: the holder does,
// or any replica when the holder is gone.
func (m *Manager) forgetNext(ctx context.Context) bool {
	node, quit := m.gone.Get()
	if quit {
		return false
	}
	defer m.gone.Done(node)
	rec, err := m.leases.Get(RecordName(node))
	if err != nil {
		// Not in the cache: there is no record, or the cache has not seen
		// its creation yet (a claim just made it); look again a few times.
		if m.gone.NumRequeues(node) < maxForgetRetries {
			m.gone.AddRateLimited(node)
		} else {
			m.gone.Forget(node)
		}
		return true
	}
	if holder := ptr.Deref(rec.Spec.HolderIdentity, ""); holder != m.cfg.Replica && holder != "" && m.alive(holder) {
		m.gone.Forget(node)
		return true // the holder deletes it
	}
	m.mu.Lock()
	m.forgetLocked(node)
	m.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, m.cfg.RenewInterval)
	defer cancel()
	err = m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace).Delete(wctx, rec.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{ResourceVersion: &rec.ResourceVersion},
	})
	switch {
	case err == nil || apierrors.IsNotFound(err):
		m.gone.Forget(node)
	case apierrors.IsConflict(err) && m.gone.NumRequeues(node) < maxForgetRetries:
		// The cache held an older version (a claim just changed it).
		m.gone.AddRateLimited(node)
	default:
		m.gone.Forget(node)
		m.log.Info("cannot delete the ownership record of a deleted node", zap.String("node", node), zap.Error(err))
	}
	return true
}

// maxForgetRetries bounds how often the deletion of a deleted node's record
// is tried again while the cache lags behind the record.
const maxForgetRetries = 8
