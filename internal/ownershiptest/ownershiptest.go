// Package ownershiptest records the history of node ownership (package
// controllers/ownership) from a watch of its Leases, so that tests and
// edgesync-bench can check that no two replicas ever owned a node at once.
package ownershiptest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
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
	watchErr    error
	done        chan struct{}
	stop        func()
}

type replicaState struct {
	renewed  time.Time
	duration time.Duration
	deleted  bool
}

// Watch records the ownership history of namespace ns until the test ends.
func Watch(t testing.TB, client kubernetes.Interface, ns string) *History {
	t.Helper()
	h, err := Start(context.Background(), client, ns)
	if err != nil {
		t.Fatalf("watch ownership: %v", err)
	}
	t.Cleanup(h.Stop)
	return h
}

// Start records the ownership history of namespace ns until Stop is called
// or ctx ends. The records that exist already are seen as added first; the
// watch resumes where it was when the apiserver closes it.
func Start(ctx context.Context, client kubernetes.Interface, ns string) (*History, error) {
	leases := client.CoordinationV1().Leases(ns)
	list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: ownership.LabelKind})
	if err != nil {
		return nil, fmt.Errorf("list ownership records in %s: %w", ns, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.LabelSelector = ownership.LabelKind
			return leases.Watch(ctx, opts)
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch ownership records in %s: %w", ns, err)
	}
	h := &History{replicas: map[string]replicaState{}, holders: map[string]*coordinationv1.Lease{}, done: make(chan struct{}),
		stop: func() { cancel(); w.Stop() }}
	for i := range list.Items {
		h.observe(watch.Added, &list.Items[i])
	}
	go func() {
		defer close(h.done)
		for ev := range w.ResultChan() {
			switch obj := ev.Object.(type) {
			case *coordinationv1.Lease:
				h.observe(ev.Type, obj)
			case *metav1.Status:
				h.mu.Lock()
				h.watchErr = fmt.Errorf("watch ownership records in %s: %s", ns, obj.Message)
				h.mu.Unlock()
			}
		}
	}()
	return h, nil
}

// Err says why the history is incomplete: the watch failed and could not
// resume.
func (h *History) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.watchErr
}

// Stop ends the watch and waits for it.
func (h *History) Stop() {
	h.stop()
	<-h.done
}

// Ended is closed when the watch has ended (Stop, ctx, or the apiserver
// closed it): the history is complete only up to then.
func (h *History) Ended() <-chan struct{} { return h.done }

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
	if typ == watch.Deleted {
		delete(h.holders, l.Name)
	} else {
		h.holders[l.Name] = l
	}
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

// Violations describes every time a node record went from a live replica
// to another without a handover: two owners at once.
func (h *History) Violations() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.violations)
}

// Counts are the transitions a history saw.
type Counts struct {
	Transitions, Handovers, Takeovers int
}

// Counts returns the transitions seen so far.
func (h *History) Counts() Counts {
	h.mu.Lock()
	defer h.mu.Unlock()
	return Counts{Transitions: h.transitions, Handovers: h.handovers, Takeovers: h.takeovers}
}

// HeldBy returns how many node records each replica holds now ("" for
// released ones).
func (h *History) HeldBy() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for _, l := range h.holders {
		out[ptr.Deref(l.Spec.HolderIdentity, "")]++
	}
	return out
}
