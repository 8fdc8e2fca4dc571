// Package encodecache keeps the one encoding of each object version that
// every node receiving it shares, so that an object changed once is encoded
// once however many nodes hold it.
package encodecache

import (
	"sync"

	"github.com/edgesync/edgesync/server/feed"
)

// Cache holds the latest encoding per object uid.
type Cache struct {
	mu   sync.Mutex // guards objs
	objs map[string]*feed.Object
}

// New returns an empty cache.
func New() *Cache {
	return &Cache{objs: make(map[string]*feed.Object)}
}

// Get returns the encoding of uid at version, calling encode when the cache
// holds none or an older one.
func (c *Cache) Get(uid, version string, encode func() (*feed.Object, error)) (*feed.Object, error) {
	c.mu.Lock()
	obj := c.objs[uid]
	c.mu.Unlock()
	if obj != nil && obj.ResourceVersion == version {
		return obj, nil
	}
	obj, err := encode()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.objs[uid] = obj
	c.mu.Unlock()
	return obj, nil
}

// Forget drops the encoding of uid.
func (c *Cache) Forget(uid string) {
	c.mu.Lock()
	delete(c.objs, uid)
	c.mu.Unlock()
}

// Len returns the number of objects held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.objs)
}
