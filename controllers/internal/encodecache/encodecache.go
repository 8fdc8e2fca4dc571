// Package encodecache keeps the one encoding of each object version that
// every node receiving it shares, so that an object changed once is encoded
// once however many nodes hold it.
package encodecache

import (
	"sync"

	"github.com/edgesync/edgesync/server/feed"
)

// Cache holds the latest encoding per object key.
type Cache struct {
	mu   sync.Mutex // guards objs
	objs map[feed.Key]*feed.Object
}

// New returns an empty cache.
func New() *Cache {
	return &Cache{objs: make(map[feed.Key]*feed.Object)}
}

// Get returns the encoding of key at uid and version, calling encode when
// the cache holds none or another version. Concurrent callers may both
// encode a new version; either result is kept.
func (c *Cache) Get(key feed.Key, uid, version string, encode func() (*feed.Object, error)) (*feed.Object, error) {
	c.mu.Lock()
	obj := c.objs[key]
	c.mu.Unlock()
	if obj != nil && obj.UID == uid && obj.ResourceVersion == version {
		return obj, nil
	}
	obj, err := encode()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.objs[key] = obj
	c.mu.Unlock()
	return obj, nil
}

// Forget drops the encoding of key.
func (c *Cache) Forget(key feed.Key) {
	c.mu.Lock()
	delete(c.objs, key)
	c.mu.Unlock()
}

// Len returns the number of objects held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.objs)
}
