// Package devicesync sends edge nodes the KubeEdge devices
// (devices.kubeedge.io/v1beta1 Device) bound to them, each with its
// DeviceModel, and writes the twin values, state and last online time edges
// report into the device's DeviceStatus object, where KubeEdge's v1beta1
// schema keeps them.
//
// A device goes to the edge node in its spec.nodeName; moving it to another
// node deletes it on the old node and adds it on the new. A change to the
// model resends every device that uses it.
package devicesync

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/dynamic"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/internal/encodecache"
	"github.com/edgesync/edgesync/controllers/internal/handlers"
	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Group and Version are KubeEdge's device API.
const (
	Group   = "devices.kubeedge.io"
	Version = "v1beta1"
)

// The resources the controller reads and writes.
var (
	Devices        = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "devices"}
	DeviceModels   = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "devicemodels"}
	DeviceStatuses = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "devicestatuses"}
)

// Index names of the device informer; AddIndexers adds them.
const (
	NodeIndex  = "devicesync.spec.nodeName"
	ModelIndex = "devicesync.spec.deviceModelRef"
)

// AddIndexers adds the indexes the controller uses to the device informer.
// Call it before the informer starts.
func AddIndexers(devices cache.SharedIndexInformer) error {
	return devices.AddIndexers(cache.Indexers{
		NodeIndex: func(obj any) ([]string, error) {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok || nodeOf(u) == "" {
				return nil, nil
			}
			return []string{nodeOf(u)}, nil
		},
		ModelIndex: func(obj any) ([]string, error) {
			u, ok := obj.(*unstructured.Unstructured)
			if !ok || modelOf(u) == "" {
				return nil, nil
			}
			return []string{u.GetNamespace() + "/" + modelOf(u)}, nil
		},
	})
}

// Config is what the controller needs.
type Config struct {
	// Dynamic writes DeviceStatus objects.
	Dynamic dynamic.Interface
	// Devices and Models are informers of Devices and DeviceModels over all
	// namespaces; Devices must have the indexes AddIndexers adds.
	Devices, Models cache.SharedIndexInformer
	// Nodes is an informer of the Nodes (other than edge nodes may be
	// cached; IsEdge tells them apart).
	Nodes cache.SharedIndexInformer
	// IsEdge tells whether a Node from Nodes is an edge node.
	IsEdge func(*corev1.Node) bool
	// FieldManager names edgesync's writes.
	FieldManager string
	// WriteGuard, when set, admits each write for a node (with several
	// replicas: only while this replica owns the node).
	WriteGuard reportqueue.Guard
	Logger     *zap.Logger
}

// Controller is the device controller.
type Controller struct {
	dynamic      dynamic.Interface
	log          *zap.Logger
	pub          feed.Publisher
	fieldManager string
	isEdge       func(*corev1.Node) bool

	informers Config
	devices   cache.Indexer
	models    cache.Indexer
	nodes     corelisters.NodeLister

	queue   *handlers.Queue[string] // shut down by Run
	encoded *encodecache.Cache
	reports *reportqueue.Queue

	// mu guards sent and is held while publishing, so that what a node
	// receives for one device is published in the order decided.
	mu sync.Mutex
	// sent is the node and uid each device was published to, by
	// namespace/name.
	sent map[string]sentDevice
}

type sentDevice struct {
	node string
	uid  types.UID
}

// New returns a controller; Run is given the publisher it publishes through.
// It starts nothing.
func New(cfg Config) (*Controller, error) {
	if cfg.Dynamic == nil || cfg.Devices == nil || cfg.Models == nil || cfg.Nodes == nil || cfg.IsEdge == nil {
		return nil, errors.New("devicesync: Dynamic, Devices, Models, Nodes, IsEdge are required")
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	c := &Controller{
		dynamic:      cfg.Dynamic,
		log:          log,
		fieldManager: cfg.FieldManager,
		isEdge:       cfg.IsEdge,
		devices:      cfg.Devices.GetIndexer(),
		models:       cfg.Models.GetIndexer(),
		nodes:        corelisters.NewNodeLister(cfg.Nodes.GetIndexer()),
		informers:    cfg,
		queue:        handlers.NewQueue[string]("devicesync", nil),
		encoded:      encodecache.New(),
		sent:         make(map[string]sentDevice),
	}
	c.reports = reportqueue.New(log.Named("reports"), reportqueue.Guarded(cfg.WriteGuard, c.writeStatus))
	return c, nil
}

// addHandlers makes the informers enqueue device keys; it adds the
// handlers to set.
func (c *Controller) addHandlers(set *handlers.Set) error {
	add := set.Add
	if err := add(c.informers.Devices, cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj any) { c.enqueue(obj) },
		DeleteFunc: c.enqueue,
	}); err != nil {
		return fmt.Errorf("devicesync: device handler: %w", err)
	}
	enqueueIndexed := func(index string) func(obj any) {
		return func(obj any) {
			key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
			if err != nil {
				utilruntime.HandleError(err)
				return
			}
			devices, err := c.devices.ByIndex(index, key)
			if err != nil {
				utilruntime.HandleError(err)
				return
			}
			for _, d := range devices {
				c.enqueue(d)
			}
		}
	}
	byModel := enqueueIndexed(ModelIndex)
	if err := add(c.informers.Models, cache.ResourceEventHandlerFuncs{
		AddFunc:    byModel,
		UpdateFunc: func(_, obj any) { byModel(obj) },
		DeleteFunc: byModel,
	}); err != nil {
		return fmt.Errorf("devicesync: model handler: %w", err)
	}
	byNode := enqueueIndexed(NodeIndex)
	if err := add(c.informers.Nodes, handlers.EdgeRoleChanges(c.isEdge, byNode)); err != nil {
		return fmt.Errorf("devicesync: node handler: %w", err)
	}
	return nil
}

func (c *Controller) enqueue(obj any) { handlers.EnqueueKey(c.queue, obj) }

// Run adds the controller's event handlers to the informers (which the
// caller starts), waits until they have seen the caches' contents, then runs
// workers until ctx ends, and returns once they have all stopped.
func (c *Controller) Run(ctx context.Context, pub feed.Publisher, workers int) error {
	if pub == nil {
		return errors.New("devicesync: Run needs a publisher")
	}
	c.pub = pub // before anything that publishes starts
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { c.reports.Run(ctx, workers) })
	return handlers.Run(ctx, "devicesync", workers, c.queue, c.addHandlers, c.sync, c.log)
}

// edgeNode returns name when it is an edge node, "" otherwise.
func (c *Controller) edgeNode(name string) string { return handlers.EdgeNode(c.nodes, c.isEdge, name) }

// device returns the cached device namespace/name, nil when there is none.
func (c *Controller) device(key string) (*unstructured.Unstructured, error) {
	obj, exists, err := c.devices.GetByKey(key)
	if err != nil || !exists {
		return nil, err
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("device cache holds %T", obj)
	}
	return u, nil
}

// sync publishes the device to the node it is bound to, and deletes it on
// the node it was published to before, if that changed.
func (c *Controller) sync(key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // a key we never enqueue
	}
	dev, err := c.device(key)
	if err != nil {
		return err
	}
	var node string
	if dev != nil {
		node = c.edgeNode(nodeOf(dev))
	}
	devKey := feed.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: namespace, Name: name}

	c.mu.Lock()
	defer c.mu.Unlock()
	old, had := c.sent[key]
	if had && (dev == nil || old.node != node || old.uid != dev.GetUID()) {
		c.publishTombstone(old.node, devKey, string(old.uid))
		c.encoded.Forget(devKey)
		delete(c.sent, key)
	}
	if node == "" {
		return nil
	}
	obj, err := c.encode(dev)
	if err != nil {
		// A malformed spec does not get better by retrying; its next
		// change enqueues the device again.
		c.log.Warn("device cannot be sent to its node", zap.String("device", key), zap.String("node", node), zap.Error(err))
		return nil
	}
	c.pub.Publish(node, obj)
	c.sent[key] = sentDevice{node: node, uid: dev.GetUID()}
	return nil
}

func (c *Controller) publishTombstone(node string, key feed.Key, uid string) {
	obj, err := feed.Tombstone(key, uid)
	if err != nil {
		c.log.Error("encode tombstone", zap.Stringer("object", key), zap.Error(err))
		return
	}
	c.pub.Publish(node, obj)
}

// encode returns the shared APPLY encoding of dev with its current model.
// The version the edge holds covers both: it is the device's
// resourceVersion, followed by "/" and the model's when there is a model.
func (c *Controller) encode(dev *unstructured.Unstructured) (*feed.Object, error) {
	version := dev.GetResourceVersion()
	var model *unstructured.Unstructured
	if name := modelOf(dev); name != "" {
		obj, exists, err := c.models.GetByKey(dev.GetNamespace() + "/" + name)
		if err != nil {
			return nil, err
		}
		if exists {
			model = obj.(*unstructured.Unstructured)
			version += "/" + model.GetResourceVersion()
		}
	}
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: dev.GetNamespace(), Name: dev.GetName()}
	return c.encoded.Get(key, string(dev.GetUID()), version, func() (*feed.Object, error) {
		event := &edgesyncv1.DeviceEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY}
		var err error
		if event.Device, err = toDevice(dev, version); err != nil {
			return nil, err
		}
		if model != nil {
			if event.Model, err = toModel(model); err != nil {
				return nil, err
			}
		}
		return feed.Encode(key, string(dev.GetUID()), version, false,
			&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_DeviceEvent{DeviceEvent: event}})
	})
}

// Desired returns, from the caches, every device bound to node (when it is
// an edge node), each with its model.
func (c *Controller) Desired(node string) ([]*feed.Object, error) {
	if c.edgeNode(node) == "" {
		return nil, nil
	}
	items, err := c.devices.ByIndex(NodeIndex, node)
	if err != nil {
		return nil, fmt.Errorf("devices of node %q: %w", node, err)
	}
	objs := make([]*feed.Object, 0, len(items))
	for _, item := range items {
		dev := item.(*unstructured.Unstructured)
		obj, err := c.encode(dev)
		if err != nil {
			// One malformed device must not keep the node from syncing.
			c.log.Warn("device cannot be sent to its node", zap.String("device", dev.GetNamespace()+"/"+dev.GetName()), zap.String("node", node), zap.Error(err))
			continue
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

// isNotFound tells whether err says an object does not exist.
func isNotFound(err error) bool { return apierrors.IsNotFound(err) }
