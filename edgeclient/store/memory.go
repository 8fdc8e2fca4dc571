package store

import (
	"cmp"
	"slices"
	"sync"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Memory is a Store in memory. It forgets everything when the process
// ends; simulators use it to run many edges in one process.
type Memory struct {
	mu      sync.RWMutex // guards objects and closed
	objects map[Key]*Record
	closed  bool
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{objects: make(map[Key]*Record)}
}

// Get implements Store.
func (m *Memory) Get(key Key) (*Record, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, ErrClosed
	}
	r, ok := m.objects[key]
	if !ok {
		return nil, nil
	}
	c := *r
	return &c, nil
}

// List implements Store.
func (m *Memory) List(kind edgesyncv1.Kind) ([]*Record, error) {
	m.mu.RLock()
	if m.closed {
		m.mu.RUnlock()
		return nil, ErrClosed
	}
	var out []*Record
	for k, r := range m.objects {
		if kind == edgesyncv1.Kind_KIND_UNSPECIFIED || k.Kind == kind {
			c := *r
			out = append(out, &c)
		}
	}
	m.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Record) int { return compareKeys(a.Key, b.Key) })
	return out, nil
}

// Refs implements Store.
func (m *Memory) Refs() ([]*edgesyncv1.ObjectRef, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, ErrClosed
	}
	out := make([]*edgesyncv1.ObjectRef, 0, len(m.objects))
	for _, r := range m.objects {
		out = append(out, r.Ref())
	}
	return out, nil
}

// Apply implements Store.
func (m *Memory) Apply(changes []Change) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	for _, c := range changes {
		if c.Record == nil {
			delete(m.objects, c.Key)
			continue
		}
		r := *c.Record
		r.Key = c.Key
		m.objects[c.Key] = &r
	}
	return nil
}

// Len implements Store.
func (m *Memory) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.objects)
}

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.objects = nil
	return nil
}

func compareKeys(a, b Key) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}
