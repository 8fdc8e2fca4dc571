// Package ownershiptest records the history of node ownership (package
// controllers/ownership) from a watch of its Leases, so that tests can check
// that no two replicas ever owned a node at once.
package ownershiptest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers/ownership"
)

// History is every holder transition of the node records in a namespace,
// as a watch saw them.
type History struct {
	mu          sync.Mutex // guards the fields below
	replicas    map[string]replicaState
	holders     map[string]*coordinationv1.Lease // last version of each node record
	transitions int
	handovers   int
	takeovers   int
	violations  []string
	done        chan struct{}
}

type replicaState struct {
	renewed  time.Time
	duration time.Duration
	deleted  bool
}

// Watch records the ownership history of namespace ns until the test ends.
func Watch(t testing.TB, client kubernetes.Interface, ns string) *History {
	t.Helper()
	h := &History{replicas: map[string]replicaState{}, holders: map[string]*coordinationv1.Lease{}, done: make(chan struct{})}
	w, err := client.CoordinationV1().Leases(ns).Watch(context.Background(), metav1.ListOptions{LabelSelector: ownership.LabelKind})
	if err != nil {
		t.Fatalf("watch ownership: %v", err)
	}
	go func() {
		defer close(h.done)
		for ev := range w.ResultChan() {
			if lease, ok := ev.Object.(*coordinationv1.Lease); ok {
				h.observe(ev.Type, lease)
			}
		}
	}()
	t.Cleanup(func() { w.Stop(); <-h.done })
	return h
}

func (h *History) observe(typ watch.EventType, l *coordinationv1.Lease) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if l.Labels[ownership.LabelKind] == ownership.KindReplica {
		st := replicaState{deleted: typ == watch.Deleted}
		if l.Spec.RenewTime != nil {
			st.renewed = l.Spec.RenewTime.Time
		}
		st.duration = time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 0)) * time.Second
		h.replicas[ptr.Deref(l.Spec.HolderIdentity, "")] = st
		return
	}
	prev := h.holders[l.Name]
	h.holders[l.Name] = l
	if prev == nil || typ == watch.Deleted {
		return
	}
	from, to := ptr.Deref(prev.Spec.HolderIdentity, ""), ptr.Deref(l.Spec.HolderIdentity, "")
	if from == to || to == "" {
		return
	}
	h.transitions++
	if from == "" {
		return // released before
	}
	st, known := h.replicas[from]
	at := time.Now()
	if l.Spec.AcquireTime != nil {
		at = l.Spec.AcquireTime.Time
	}
	if !known || st.deleted || !at.Before(st.renewed.Add(st.duration)) {
		h.takeovers++ // its holder was gone
		return
	}
	if prev.Annotations[ownership.AnnotationWantedBy] == to {
		h.handovers++ // the live holder gave it, after ending its session
		return
	}
	h.violations = append(h.violations, fmt.Sprintf("node record %s went from live replica %s (Lease valid until %s) to %s at %s without a handover",
		l.Name, from, st.renewed.Add(st.duration).Format(time.RFC3339Nano), to, at.Format(time.RFC3339Nano)))
}

// Check fails the test if a live replica ever lost a node it did not hand
// over, and logs the counts.
func (h *History) Check(t testing.TB) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	t.Logf("ownership history: %d transitions (%d handovers, %d takeovers from gone replicas), %d records",
		h.transitions, h.handovers, h.takeovers, len(h.holders))
	for _, v := range h.violations {
		t.Errorf("two owners at once: %s", v)
	}
}

// Transitions returns how many times a node record changed holder.
func (h *History) Transitions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.transitions
}
