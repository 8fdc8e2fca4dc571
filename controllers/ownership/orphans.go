package ownership

// This file finds the nodes of replicas that went silent, and which of
// them this replica keeps (package controllers/leasekeeper renews their
// node Leases).

import (
	"hash/fnv"
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/utils/ptr"
)

// holderIndex indexes node records by holder.
const holderIndex = "holder"

func indexByHolder(obj any) ([]string, error) {
	rec, ok := obj.(*coordinationv1.Lease)
	if !ok || rec.Labels[LabelKind] != KindNode {
		return nil, nil
	}
	if h := ptr.Deref(rec.Spec.HolderIdentity, ""); h != "" {
		return []string{h}, nil
	}
	return nil, nil
}

// Orphan is a node whose record names a replica that went silent (it
// missed a renewal, or its Lease expired or was deleted), kept by this
// replica.
type Orphan struct {
	Node string
	// Holder is the silent replica its record names.
	Holder string
	// Since is when Holder went silent: LeaseDuration/2 and
	// unresponsiveSlack after its last renewTime (the same instant for
	// every replica), or when its Lease was seen deleted.
	Since time.Time
}

// observeReplica notes when a replica's Lease is deleted (a clean stop),
// for Orphans' Since, and forgets it when it is back.
func (m *Manager) observeReplica(rec *coordinationv1.Lease, deleted bool) {
	replica := ptr.Deref(rec.Spec.HolderIdentity, "")
	if replica == "" || replica == m.cfg.Replica {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if deleted {
		if _, ok := m.silent[replica]; !ok {
			m.silent[replica] = m.cfg.Now()
		}
		return
	}
	delete(m.silent, replica)
}

// Orphans returns the nodes this replica keeps: those whose records name a
// silent replica and that rendezvous hashing over the replicas still
// renewing gives to this one. A replica that is itself holding keeps
// nothing. It reads the cache only; with no silent replica it costs one
// look at the index of holders.
func (m *Manager) Orphans() []Orphan {
	if !m.selfValid() {
		return nil
	}
	now := m.cfg.Now()
	var out []Orphan
	var live []string
	holders := m.informer.GetIndexer().ListIndexFuncValues(holderIndex)
	defer m.pruneSilent(holders)
	for _, holder := range holders {
		if holder == m.cfg.Replica {
			continue
		}
		since, silent := m.silentSince(holder, now)
		if !silent {
			continue
		}
		if live == nil {
			live = m.liveReplicas(now)
		}
		recs, err := m.informer.GetIndexer().ByIndex(holderIndex, holder)
		if err != nil {
			continue
		}
		for _, obj := range recs {
			rec, ok := obj.(*coordinationv1.Lease)
			if !ok {
				continue
			}
			node := rec.Annotations[AnnotationNode]
			if node != "" && keeper(node, live) == m.cfg.Replica {
				out = append(out, Orphan{Node: node, Holder: holder, Since: since})
			}
		}
	}
	return out
}

// silentSince tells whether replica is silent at now, and since when.
func (m *Manager) silentSince(replica string, now time.Time) (time.Time, bool) {
	l, err := m.leases.Get(ReplicaLeaseName(replica))
	if err == nil && l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil && ptr.Deref(l.Spec.HolderIdentity, "") == replica {
		since := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second/2 + unresponsiveSlack)
		return since, !now.Before(since)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	since, ok := m.silent[replica]
	if !ok {
		// Never seen: its Lease was gone before this replica started.
		since = now
		m.silent[replica] = since
	}
	return since, true
}

// pruneSilent forgets the silent replicas that hold no record any more.
func (m *Manager) pruneSilent(holders []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for r := range m.silent {
		if !slices.Contains(holders, r) {
			delete(m.silent, r)
		}
	}
}

// liveReplicas lists the replicas still renewing their Leases (not
// silent), this one included.
func (m *Manager) liveReplicas(now time.Time) []string {
	live := []string{m.cfg.Replica}
	ls, err := m.leases.List(replicaSelector)
	if err != nil {
		return live
	}
	for _, l := range ls {
		r := ptr.Deref(l.Spec.HolderIdentity, "")
		if r == "" || r == m.cfg.Replica || !m.alive(r) {
			continue
		}
		if _, silent := m.silentSince(r, now); !silent {
			live = append(live, r)
		}
	}
	return live
}

// keeper picks node's keeper among replicas by rendezvous hashing: the
// replica with the highest hash of (replica, node). Each replica computes
// the same answer from the same list, and a replica leaving moves only
// its own share.
func keeper(node string, replicas []string) string {
	var best string
	var bestScore uint64
	for _, r := range replicas {
		h := fnv.New64a()
		h.Write([]byte(r))
		h.Write([]byte{0})
		h.Write([]byte(node))
		score := h.Sum64()
		if best == "" || score > bestScore || (score == bestScore && r < best) {
			best, bestScore = r, score
		}
	}
	return best
}
