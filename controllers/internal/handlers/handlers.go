// Package handlers holds what every edgesync controller does around shared
// informers: add its event handlers, wait until they have seen the caches'
// contents, remove them on the way out, and drain a rate-limited work queue
// (Forget on success, AddRateLimited on error).
package handlers

import (
	"context"

	"go.uber.org/zap"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Set is the event handlers one controller added to shared informers. The
// informers are shared with other controllers, so a controller that stops
// removes only its own handlers.
type Set struct {
	regs []registration
}

type registration struct {
	informer cache.SharedIndexInformer
	handle   cache.ResourceEventHandlerRegistration
}

// Add adds h to informer.
func (s *Set) Add(informer cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
	handle, err := informer.AddEventHandler(h)
	if err != nil {
		return err
	}
	s.regs = append(s.regs, registration{informer, handle})
	return nil
}

// WaitSynced waits until every handler has seen its informer's initial
// contents; false when ctx ended first.
func (s *Set) WaitSynced(ctx context.Context) bool {
	synced := make([]cache.InformerSynced, 0, len(s.regs))
	for _, r := range s.regs {
		synced = append(synced, r.handle.HasSynced)
	}
	return cache.WaitForCacheSync(ctx.Done(), synced...)
}

// RemoveAll removes every handler added through the set.
func (s *Set) RemoveAll() {
	for _, r := range s.regs {
		_ = r.informer.RemoveEventHandler(r.handle)
	}
	s.regs = nil
}

// ProcessNext syncs one key from queue and reports whether the queue is
// still open: Forget on success, AddRateLimited (and a warning) on error.
func ProcessNext[T comparable](queue workqueue.TypedRateLimitingInterface[T], sync func(T) error, log *zap.Logger) bool {
	key, quit := queue.Get()
	if quit {
		return false
	}
	defer queue.Done(key)
	if err := sync(key); err != nil {
		log.Warn("sync failed, retrying", zap.Any("key", key), zap.Error(err))
		queue.AddRateLimited(key)
		return true
	}
	queue.Forget(key)
	return true
}
