package localapi

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
)

// Sizes of the watch machinery.
const (
	// historySize is how many changes the cache remembers, so that a
	// watch resumed from a recent resourceVersion misses nothing; older
	// ones are answered 410 Gone, and the client lists again.
	historySize = 1024
	// watcherBuffer is how many changes a watcher may fall behind before
	// it is ended (the client watches again from its last version).
	watcherBuffer = 256
)

// objectKey names one served object.
type objectKey struct {
	resource  string // resource.id()
	namespace string
	name      string
}

// change is one event in the cache's history.
type change struct {
	typ      watch.EventType
	resource string
	rv       uint64
	obj      runtime.Object // the new version; for DELETED the last one, at rv
	old      runtime.Object // the version before, for MODIFIED and DELETED
}

// objectCache holds every object the local API serves, each at a local
// resourceVersion, and the recent changes to them. Versions are one
// counter for every resource, as etcd revisions are; it starts from the
// time the cache was made (microseconds since the epoch), so that versions
// a client saw before an agent restart are older than every version after
// it, and are answered 410 Gone rather than mistaken for future ones.
// Objects stored are never modified: readers share them.
type objectCache struct {
	mu       sync.Mutex // guards the fields below
	rv       uint64     // the latest version
	oldest   uint64     // history covers every change after this version
	objects  map[string]map[objectKey]runtime.Object
	history  []change // ring of the latest changes, oldest first
	watchers map[*watcher]struct{}
	changed  chan struct{} // closed and replaced on every change
}

func newCache(now time.Time) *objectCache {
	rv := uint64(now.UnixMicro())
	return &objectCache{rv: rv, oldest: rv, objects: map[string]map[objectKey]runtime.Object{},
		watchers: map[*watcher]struct{}{}, changed: make(chan struct{})}
}

// version is the latest resourceVersion.
func (c *objectCache) version() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rv
}

// get returns the object under key, or nil.
func (c *objectCache) get(key objectKey) runtime.Object {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.objects[key.resource][key]
}

// list returns the objects of resource in namespace (all namespaces when
// empty) that match, and the version they are current at.
func (c *objectCache) list(resource, namespace string, match func(runtime.Object) bool) ([]runtime.Object, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []runtime.Object
	for k, obj := range c.objects[resource] {
		if (namespace == "" || k.namespace == namespace) && (match == nil || match(obj)) {
			out = append(out, obj)
		}
	}
	sortObjects(out)
	return out, c.rv
}

// put stores obj (which the cache owns from now on) under key at the next
// version and returns it; unchanged reports an object semantically equal
// to the one held, which is then kept and returned instead.
func (c *objectCache) put(key objectKey, obj runtime.Object, same func(a, b runtime.Object) bool) runtime.Object {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.objects[key.resource][key]
	if old != nil && same != nil && same(old, obj) {
		return old
	}
	c.rv++
	setVersion(obj, c.rv)
	if c.objects[key.resource] == nil {
		c.objects[key.resource] = map[objectKey]runtime.Object{}
	}
	c.objects[key.resource][key] = obj
	ch := change{typ: watch.Added, resource: key.resource, rv: c.rv, obj: obj}
	if old != nil {
		ch.typ, ch.old = watch.Modified, old
	}
	c.record(ch)
	return obj
}

// remove forgets the object under key, if held, and returns it.
func (c *objectCache) remove(key objectKey) runtime.Object {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.objects[key.resource][key]
	if old == nil {
		return nil
	}
	delete(c.objects[key.resource], key)
	c.rv++
	// The DELETED event carries the last state at the deletion's version,
	// as the apiserver's does.
	gone := old.DeepCopyObject()
	setVersion(gone, c.rv)
	c.record(change{typ: watch.Deleted, resource: key.resource, rv: c.rv, obj: gone, old: old})
	return old
}

// record appends ch to the history and hands it to the watchers. Called
// with c.mu held.
func (c *objectCache) record(ch change) {
	if len(c.history) == historySize {
		c.oldest = c.history[0].rv
		c.history = append(c.history[:0], c.history[1:]...)
	}
	c.history = append(c.history, ch)
	for w := range c.watchers {
		if w.resource != ch.resource {
			continue
		}
		select {
		case w.ch <- ch:
		default:
			// Too far behind: end the watch; the client resumes from
			// the last version it saw.
			delete(c.watchers, w)
			close(w.ch)
		}
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// waitChange returns a channel closed at the next change.
func (c *objectCache) waitChange() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// watcher receives the changes to one resource after a version.
type watcher struct {
	resource string
	ch       chan change // closed by the cache when the watcher falls behind
}

// errTooOld and errTooNew say a watch cannot start at the version asked.
type versionError struct {
	tooOld  bool
	current uint64
}

// watch starts a watcher of resource at version from: the changes after it
// that the history holds come first. With initial set, from is ignored and
// the watcher starts at the current version, with the objects that match
// returned as its initial state.
func (c *objectCache) watch(resource string, from uint64, initial bool, namespace string, match func(runtime.Object) bool) (*watcher, []runtime.Object, uint64, *versionError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &watcher{resource: resource, ch: make(chan change, watcherBuffer)}
	var state []runtime.Object
	switch {
	case initial:
		for k, obj := range c.objects[resource] {
			if (namespace == "" || k.namespace == namespace) && (match == nil || match(obj)) {
				state = append(state, obj)
			}
		}
		sortObjects(state)
		from = c.rv
	case from > c.rv:
		return nil, nil, 0, &versionError{current: c.rv}
	case from < c.oldest:
		return nil, nil, 0, &versionError{tooOld: true, current: c.rv}
	default:
		backlog := 0
		for _, ch := range c.history {
			if ch.rv > from && ch.resource == resource {
				backlog++
			}
		}
		if backlog > watcherBuffer {
			return nil, nil, 0, &versionError{tooOld: true, current: c.rv}
		}
		for _, ch := range c.history {
			if ch.rv > from && ch.resource == resource {
				w.ch <- ch
			}
		}
	}
	c.watchers[w] = struct{}{}
	return w, state, from, nil
}

// quiet returns the latest version when w has received every change so
// far, for a bookmark: a bookmark at a version whose changes are still on
// their way to the client would let it resume past them.
func (c *objectCache) quiet(w *watcher) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rv, len(w.ch) == 0
}

// stopWatch removes w, if the cache has not already ended it.
func (c *objectCache) stopWatch(w *watcher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.watchers[w]; ok {
		delete(c.watchers, w)
		close(w.ch)
	}
}

func setVersion(obj runtime.Object, rv uint64) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetResourceVersion(strconv.FormatUint(rv, 10))
	}
}

// sortObjects orders objects by namespace and name, as the apiserver
// lists them.
func sortObjects(objs []runtime.Object) {
	key := func(o runtime.Object) string {
		m, err := meta.Accessor(o)
		if err != nil {
			return ""
		}
		return m.GetNamespace() + "/" + m.GetName()
	}
	slices.SortFunc(objs, func(a, b runtime.Object) int { return strings.Compare(key(a), key(b)) })
}
