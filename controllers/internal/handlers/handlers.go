// Package handlers holds what every edgesync controller does around shared
// informers: add its event handlers, wait until they have seen the caches'
// contents, remove them on the way out, and drain a rate-limited work queue
// (Forget on success, AddRateLimited on error); Run does all of it for a
// controller with one work queue.
//
// One lifecycle for every controller's work queue (Queue): the controller
// makes it with NewQueue in New; the client-go queue behind it, which
// runs goroutines of its own, is made on first use, so work added before
// Run (reports, Desired, handlers of informers that start first) is kept
// and a controller built and never used starts no goroutine. The
// controller's Run shuts it down on every way out (Run here does) and
// waits for its workers, which end when Get reports the shutdown
// (ProcessNext). So whoever uses a controller runs it, with an ended ctx
// if need be, to stop what the use started. Its event handlers are added
// through a Set in Run and removed on the way out.
package handlers

import (
	"context"
	"fmt"
	"sync"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	corelisters "k8s.io/client-go/listers/core/v1"
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

// Run is the life of a controller with one work queue: add adds its event
// handlers (which fill queue) to the shared informers, Run waits until
// they have seen the caches' contents, then runs workers goroutines that
// sync keys from queue with syncKey until ctx ends. On every way out it
// removes the handlers, shuts queue down and waits for the workers. name
// (the controller's package) prefixes the error when the caches did not
// sync.
func Run[T comparable](ctx context.Context, name string, workers int, queue *Queue[T],
	add func(*Set) error, syncKey func(T) error, log *zap.Logger) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer queue.ShutDown()

	var set Set
	defer set.RemoveAll()
	if err := add(&set); err != nil {
		return err
	}
	if !set.WaitSynced(ctx) {
		return fmt.Errorf("%s: caches did not sync: %w", name, context.Cause(ctx))
	}
	for range workers {
		wg.Go(func() {
			for ProcessNext(queue, syncKey, log) {
			}
		})
	}
	<-ctx.Done()
	return nil
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

// EdgeRoleChanges returns node event handlers that call enqueue when an
// edge node is added or deleted, or when a node gains or loses the edge
// role; other Nodes and other node updates (status, heartbeats) are
// ignored.
func EdgeRoleChanges(isEdge func(*corev1.Node) bool, enqueue func(obj any)) cache.ResourceEventHandlerFuncs {
	edgeOnly := func(obj any) {
		n, ok := obj.(*corev1.Node)
		if d, tomb := obj.(cache.DeletedFinalStateUnknown); tomb {
			n, ok = d.Obj.(*corev1.Node)
		}
		if ok && !isEdge(n) {
			return
		}
		enqueue(obj)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: edgeOnly,
		UpdateFunc: func(oldObj, newObj any) {
			oldNode, ok1 := oldObj.(*corev1.Node)
			newNode, ok2 := newObj.(*corev1.Node)
			if ok1 && ok2 && isEdge(oldNode) == isEdge(newNode) {
				return
			}
			enqueue(newObj)
		},
		DeleteFunc: edgeOnly,
	}
}

// EnqueueKey adds the namespace/name key of obj (or of the object a
// deletion tombstone stands for) to queue.
func EnqueueKey(queue workqueue.TypedInterface[string], obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	queue.Add(key)
}

// EdgeNode returns name when the node cache holds it as an edge node, ""
// otherwise (no name, unknown node, or not an edge node).
func EdgeNode(nodes corelisters.NodeLister, isEdge func(*corev1.Node) bool, name string) string {
	if name == "" {
		return ""
	}
	node, err := nodes.Get(name)
	if err != nil || !isEdge(node) {
		return ""
	}
	return name
}
