package localapi

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
)

func cm(name string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}}
}

// TestCacheWatchWindow: a watch resumes from any version the history
// covers; older ones are too old (the client lists again), newer ones are
// not reached yet.
func TestCacheWatchWindow(t *testing.T) {
	c := newCache(time.Unix(1000, 0))
	start := c.version()
	c.put(objectKey{"/configmaps", "ns", "a"}, cm("a"), nil)
	w, _, _, verr := c.watch("/configmaps", start, false, "", nil)
	if verr != nil {
		t.Fatalf("watch from the start: %+v", verr)
	}
	if ch := <-w.ch; ch.typ != watch.Added || ch.rv != start+1 {
		t.Errorf("replayed %s at %d, want ADDED at %d", ch.typ, ch.rv, start+1)
	}
	c.stopWatch(w)
	if _, _, _, verr := c.watch("/configmaps", c.version()+1, false, "", nil); verr == nil || verr.tooOld {
		t.Errorf("watch from a version not reached: %+v, want too new", verr)
	}
	for i := range historySize {
		c.put(objectKey{"/configmaps", "ns", "a"}, cm(fmt.Sprint("a", i)), nil)
	}
	if _, _, _, verr := c.watch("/configmaps", start, false, "", nil); verr == nil || !verr.tooOld {
		t.Errorf("watch from a version the history no longer covers: %+v, want too old", verr)
	}
	// Covered, but more than a watcher may be behind: too old as well.
	if _, _, _, verr := c.watch("/configmaps", c.version()-watcherBuffer-1, false, "", nil); verr == nil || !verr.tooOld {
		t.Errorf("watch with a backlog beyond the buffer: %+v, want too old", verr)
	}
	w, _, _, verr = c.watch("/configmaps", c.version()-2, false, "", nil)
	if verr != nil {
		t.Fatal(verr)
	}
	if len(w.ch) != 2 {
		t.Errorf("replayed %d changes, want 2", len(w.ch))
	}
	c.stopWatch(w)
}

// TestCacheEndsAWatcherThatFallsBehind: the cache never blocks on a
// watcher; one that does not keep up is ended, and its client resumes.
func TestCacheEndsAWatcherThatFallsBehind(t *testing.T) {
	c := newCache(time.Now())
	w, _, _, verr := c.watch("/configmaps", c.version(), false, "", nil)
	if verr != nil {
		t.Fatal(verr)
	}
	for i := range watcherBuffer + 1 {
		c.put(objectKey{"/configmaps", "ns", fmt.Sprint(i)}, cm(fmt.Sprint(i)), nil)
	}
	n := 0
	for range w.ch {
		n++
	}
	if n != watcherBuffer {
		t.Errorf("the slow watcher got %d changes before it was ended, want %d", n, watcherBuffer)
	}
	c.stopWatch(w) // already ended: no double close
	if _, ok := c.quiet(w); !ok {
		t.Error("an ended watcher is not quiet")
	}
}

// TestFilteredWatchSeesObjectsEnterAndLeave: a change that makes an object
// match a watch's selector is ADDED for it, one that makes it stop is
// DELETED, as in the apiserver's watch cache.
func TestFilteredWatchSeesObjectsEnterAndLeave(t *testing.T) {
	onNode := func(p *corev1.Pod) bool { return p.Spec.NodeName == "n" }
	match := func(o runtime.Object) bool { return onNode(o.(*corev1.Pod)) }
	a := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}}
	b := a.DeepCopy()
	b.Spec.NodeName = "n"
	for _, tc := range []struct {
		old, new *corev1.Pod
		want     watch.EventType
	}{
		{a, b, watch.Added},
		{b, a, watch.Deleted},
		{b, b, watch.Modified},
	} {
		typ, _, ok := filterChange(change{typ: watch.Modified, obj: tc.new, old: tc.old}, "", match)
		if !ok || typ != tc.want {
			t.Errorf("%v -> %v: %s, %v; want %s", tc.old.Spec.NodeName, tc.new.Spec.NodeName, typ, ok, tc.want)
		}
	}
	if _, _, ok := filterChange(change{typ: watch.Modified, obj: a, old: a}, "", match); ok {
		t.Error("a change outside the selector was seen")
	}
	if _, _, ok := filterChange(change{typ: watch.Added, obj: b}, "other", nil); ok {
		t.Error("a change in another namespace was seen")
	}
}
