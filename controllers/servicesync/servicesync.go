// Package servicesync sends edge nodes the Services meant for edges and
// their EndpointSlices, so that edge applications can find each other by
// Service name while the node is offline.
//
// A Service is meant for edges when it carries the label OptInLabel with
// the value "true"; then every edge node receives it, and no Service
// reaches an edge otherwise. Its EndpointSlices follow it, filtered for
// each node the way kube-proxy chooses the endpoints a node routes to (see
// filter.go): ready endpoints only (serving terminating ones when none is
// ready), the node's own with internalTrafficPolicy Local, the node's
// zone's when topology hints are in use. Each distinct filtered result of
// a slice is encoded once and shared by every node that receives it, so a
// Service on 10,000 nodes in 10 zones costs at most 10 encodings per slice
// change; a filtered slice's version is a digest of its content, so only
// the nodes whose view changed receive it again.
//
// Event handlers only enqueue Service keys; workers decide what each node
// gets and Publish it. The server's queues skip versions an edge already
// holds, so publishing an unchanged view again costs nothing on the wire.
package servicesync

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/internal/handlers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	discoveryv1pb "github.com/edgesync/edgesync/gen/k8s/api/discovery/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// OptInLabel marks a Service meant for edge nodes (value "true").
const OptInLabel = "edgesync.io/edge-service"

// ServiceIndex names the EndpointSlice informer index by Service
// (namespace/name) that the controller needs; AddIndexers adds it.
const ServiceIndex = "servicesync.service"

// AddIndexers adds the indexes the controller uses to the EndpointSlice
// informer. Call it before the informer starts.
func AddIndexers(slices cache.SharedIndexInformer) error {
	return slices.AddIndexers(cache.Indexers{ServiceIndex: func(obj any) ([]string, error) {
		if key := serviceOf(obj); key != "" {
			return []string{key}, nil
		}
		return nil, nil
	}})
}

// serviceOf returns the namespace/name of the Service an EndpointSlice (or
// its deletion tombstone) belongs to, "" when none.
func serviceOf(obj any) string {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || s.Labels[discoveryv1.LabelServiceName] == "" {
		return ""
	}
	return s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName]
}

// OptedIn tells whether s is meant for edge nodes.
func OptedIn(s *corev1.Service) bool {
	return s != nil && s.Labels[OptInLabel] == "true"
}

// Config is what the controller needs.
type Config struct {
	// Services and EndpointSlices are informers over all namespaces;
	// EndpointSlices must have the index AddIndexers adds.
	Services, EndpointSlices cache.SharedIndexInformer
	// Nodes is an informer of the Nodes (other than edge nodes may be
	// cached; IsEdge tells them apart).
	Nodes cache.SharedIndexInformer
	// IsEdge tells whether a Node from Nodes is an edge node.
	IsEdge func(*corev1.Node) bool
	Logger *zap.Logger
}

// Controller is the Service and EndpointSlice controller.
type Controller struct {
	log      *zap.Logger
	pub      feed.Publisher
	isEdge   func(*corev1.Node) bool
	cfg      Config
	services corelisters.ServiceLister
	slices   cache.Indexer
	nodes    corelisters.NodeLister

	// queue of Service keys (namespace/name) and node names (no slash);
	// shut down by Run.
	queue *handlers.Queue[string]

	// encodings counts every object encoded (Services and filtered
	// slices), for tests and benchmarks.
	encodings atomic.Int64

	// mu guards sent and encoded, and is held while publishing so that
	// what a node receives for one object is published in the order
	// decided.
	mu sync.Mutex
	// sent records, by Service key, what was published for each Service
	// meant for edges.
	sent map[string]*sentService
	// encoded holds the encodings of each object's current version: the
	// Service, or each view of a filtered slice.
	encoded map[feed.Key]*encodings
}

// sentService is what edge nodes were sent of one Service.
type sentService struct {
	uid    types.UID
	slices map[string]types.UID // by slice name
}

// encodings are the shared encodings of one object (of one uid), by
// version: a Service's resourceVersion, or the digest of a filtered
// slice's content.
type encodings struct {
	uid      string
	versions map[string]*feed.Object
}

// New returns a controller; Run is given the publisher it publishes through.
// It starts nothing.
func New(cfg Config) (*Controller, error) {
	if cfg.Services == nil || cfg.EndpointSlices == nil || cfg.Nodes == nil || cfg.IsEdge == nil {
		return nil, errors.New("servicesync: Services, EndpointSlices, Nodes, IsEdge are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Controller{
		log:      cfg.Logger,
		isEdge:   cfg.IsEdge,
		cfg:      cfg,
		services: corelisters.NewServiceLister(cfg.Services.GetIndexer()),
		slices:   cfg.EndpointSlices.GetIndexer(),
		nodes:    corelisters.NewNodeLister(cfg.Nodes.GetIndexer()),
		queue:    handlers.NewQueue[string]("servicesync", nil),
		sent:     make(map[string]*sentService),
		encoded:  make(map[feed.Key]*encodings),
	}, nil
}

// Encodings returns how many objects the controller has encoded: one per
// Service version and one per distinct filtered content of a slice.
func (c *Controller) Encodings() int64 { return c.encodings.Load() }

// Run adds the controller's event handlers to the informers (which the
// caller starts), waits until they have seen the caches' contents, then
// runs workers until ctx ends, and returns once they have all stopped.
func (c *Controller) Run(ctx context.Context, pub feed.Publisher, workers int) error {
	if pub == nil {
		return errors.New("servicesync: Run needs a publisher")
	}
	c.pub = pub // before anything that publishes starts
	return handlers.Run(ctx, "servicesync", workers, c.queue, c.addHandlers, c.sync, c.log)
}

func (c *Controller) addHandlers(set *handlers.Set) error {
	enqueueService := func(obj any) { handlers.EnqueueKey(c.queue, obj) }
	if err := set.Add(c.cfg.Services, cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if s, ok := obj.(*corev1.Service); !ok || OptedIn(s) {
				enqueueService(obj)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Service)
			n, ok2 := newObj.(*corev1.Service)
			if ok1 && ok2 && !OptedIn(o) && !OptedIn(n) {
				return
			}
			enqueueService(newObj)
		},
		DeleteFunc: enqueueService,
	}); err != nil {
		return fmt.Errorf("servicesync: service handler: %w", err)
	}
	enqueueSlice := func(obj any) {
		if key := serviceOf(obj); key != "" {
			c.queue.Add(key)
		}
	}
	if err := set.Add(c.cfg.EndpointSlices, cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueSlice,
		UpdateFunc: func(oldObj, newObj any) {
			if a, b := serviceOf(oldObj), serviceOf(newObj); a != b {
				enqueueSlice(oldObj)
			}
			enqueueSlice(newObj)
		},
		DeleteFunc: enqueueSlice,
	}); err != nil {
		return fmt.Errorf("servicesync: endpointslice handler: %w", err)
	}
	// A node that registers while connected, becomes an edge node or
	// changes zone gets what it should hold now.
	if err := set.Add(c.cfg.Nodes, cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok && c.isEdge(n) {
				c.queue.Add(n.Name)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if !ok1 || !ok2 || !c.isEdge(n) || (c.isEdge(o) && o.Labels[corev1.LabelTopologyZone] == n.Labels[corev1.LabelTopologyZone]) {
				return
			}
			c.queue.Add(n.Name)
		},
	}); err != nil {
		return fmt.Errorf("servicesync: node handler: %w", err)
	}
	return nil
}

// edgeNodes returns the edge nodes in the cache.
func (c *Controller) edgeNodes() ([]*corev1.Node, error) {
	all, err := c.nodes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := all[:0:0]
	for _, n := range all {
		if c.isEdge(n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// service returns the cached Service of key when it is meant for edges,
// nil otherwise.
func (c *Controller) service(key string) (*corev1.Service, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil, err
	}
	s, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if !OptedIn(s) {
		return nil, nil
	}
	return s, nil
}

// slicesOf returns the cached EndpointSlices of the Service key.
func (c *Controller) slicesOf(key string) ([]*discoveryv1.EndpointSlice, error) {
	objs, err := c.slices.ByIndex(ServiceIndex, key)
	if err != nil {
		return nil, err
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, s)
		}
	}
	return out, nil
}

// sync publishes what changed for key: a Service (namespace/name) or a
// node (a name).
func (c *Controller) sync(key string) error {
	if !strings.Contains(key, "/") {
		return c.syncNode(key)
	}
	return c.syncService(key)
}

// syncNode publishes to node everything it should hold.
func (c *Controller) syncNode(node string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	objs, err := c.desired(node)
	for _, obj := range objs {
		c.pub.Publish(node, obj)
	}
	return err
}

// syncService publishes the Service of key and its filtered slices to
// every edge node, or their deletion when the Service is gone or no longer
// meant for edges.
func (c *Controller) syncService(key string) error {
	svc, err := c.service(key)
	if err != nil {
		return err
	}
	nodes, err := c.edgeNodes()
	if err != nil {
		return err
	}
	var slices []*discoveryv1.EndpointSlice
	if svc != nil {
		if slices, err = c.slicesOf(key); err != nil {
			return err
		}
	}
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	svcKey := feed.Key{Kind: edgesyncv1.Kind_KIND_SERVICE, Namespace: ns, Name: name}

	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.sent[key]
	if svc == nil {
		if old != nil {
			for slice, uid := range old.slices {
				c.publishTombstone(nodes, sliceKey(ns, slice), string(uid))
			}
			c.publishTombstone(nodes, svcKey, string(old.uid))
			delete(c.sent, key)
		}
		return nil
	}
	obj, err := c.encodeService(svc)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		c.pub.Publish(n.Name, obj)
	}
	next := &sentService{uid: svc.UID, slices: make(map[string]types.UID, len(slices))}
	p := newPlan(svc, slices)
	for _, s := range slices {
		byView := map[string]*feed.Object{}
		for _, n := range nodes {
			v := p.view(n)
			obj := byView[v.name]
			if obj == nil {
				if obj, err = c.encodeSlice(s, v); err != nil {
					return err
				}
				byView[v.name] = obj
			}
			c.pub.Publish(n.Name, obj)
		}
		c.forgetOthers(sliceKey(s.Namespace, s.Name), byView)
		next.slices[s.Name] = s.UID
	}
	if old != nil {
		for slice, uid := range old.slices {
			if _, ok := next.slices[slice]; !ok {
				c.publishTombstone(nodes, sliceKey(ns, slice), string(uid))
			}
		}
	}
	c.sent[key] = next
	return nil
}

func sliceKey(namespace, name string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_ENDPOINT_SLICE, Namespace: namespace, Name: name}
}

// publishTombstone publishes the deletion of key to every node and drops
// its encodings. c.mu is held.
func (c *Controller) publishTombstone(nodes []*corev1.Node, key feed.Key, uid string) {
	delete(c.encoded, key)
	obj, err := feed.Tombstone(key, uid)
	if err != nil {
		c.log.Error("encode tombstone", zap.Stringer("object", key), zap.Error(err))
		return
	}
	for _, n := range nodes {
		c.pub.Publish(n.Name, obj)
	}
}

// forgetOthers keeps, of the encodings of key, only those in use (by
// view). c.mu is held.
func (c *Controller) forgetOthers(key feed.Key, inUse map[string]*feed.Object) {
	e := c.encoded[key]
	if e == nil {
		return
	}
	keep := make(map[string]bool, len(inUse))
	for _, obj := range inUse {
		keep[obj.ResourceVersion] = true
	}
	for version := range e.versions {
		if !keep[version] {
			delete(e.versions, version)
		}
	}
}

// cached returns the encoding of key at uid and version, calling encode
// when there is none. With only, the key's other versions are forgotten.
// c.mu is held.
func (c *Controller) cached(key feed.Key, uid, version string, only bool, encode func() (*feed.Object, error)) (*feed.Object, error) {
	e := c.encoded[key]
	if e == nil || e.uid != uid {
		e = &encodings{uid: uid, versions: map[string]*feed.Object{}}
		c.encoded[key] = e
	}
	if obj := e.versions[version]; obj != nil {
		return obj, nil
	}
	obj, err := encode()
	if err != nil {
		return nil, err
	}
	c.encodings.Add(1)
	if only {
		clear(e.versions)
	}
	e.versions[version] = obj
	return obj, nil
}

// encodeService returns the shared APPLY encoding of s. c.mu is held.
func (c *Controller) encodeService(s *corev1.Service) (*feed.Object, error) {
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_SERVICE, Namespace: s.Namespace, Name: s.Name}
	return c.cached(key, string(s.UID), s.ResourceVersion, true, func() (*feed.Object, error) {
		msg := &corev1pb.Service{}
		if err := convert(s, msg); err != nil {
			return nil, fmt.Errorf("encode service %s/%s: %w", s.Namespace, s.Name, err)
		}
		msg.Metadata.ManagedFields = nil
		return feed.Encode(key, string(s.UID), s.ResourceVersion, false, &edgesyncv1.SyncResponse{
			Message: &edgesyncv1.SyncResponse_ServiceEvent{ServiceEvent: &edgesyncv1.ServiceEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Service: msg}},
		})
	})
}

// encodeSlice returns the shared APPLY encoding of s filtered by v. Its
// resourceVersion is a digest of what the node receives (without the
// slice's resourceVersion, generation and managed fields): nodes whose
// views have the same content share one encoding, and a node is sent the
// slice again only when its content changed. c.mu is held.
func (c *Controller) encodeSlice(s *discoveryv1.EndpointSlice, v view) (*feed.Object, error) {
	key := sliceKey(s.Namespace, s.Name)
	filtered := *s // the cache's object is not changed
	filtered.ManagedFields = nil
	filtered.ResourceVersion, filtered.Generation = "", 0
	filtered.Endpoints = v.filter(s.Endpoints)
	b, err := filtered.Marshal()
	if err != nil {
		return nil, fmt.Errorf("encode endpointslice %s/%s: %w", s.Namespace, s.Name, err)
	}
	digest := fnv.New64a()
	_, _ = digest.Write(b)
	version := strconv.FormatUint(digest.Sum64(), 36)
	return c.cached(key, string(s.UID), version, false, func() (*feed.Object, error) {
		msg := &discoveryv1pb.EndpointSlice{}
		if err := proto.Unmarshal(b, msg); err != nil {
			return nil, fmt.Errorf("convert endpointslice %s/%s: %w", s.Namespace, s.Name, err)
		}
		msg.Metadata.ResourceVersion = &version
		return feed.Encode(key, string(s.UID), version, false, &edgesyncv1.SyncResponse{
			Message: &edgesyncv1.SyncResponse_EndpointSliceEvent{EndpointSliceEvent: &edgesyncv1.EndpointSliceEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, EndpointSlice: msg}},
		})
	})
}

// convert turns a k8s.io/api value into its gen/k8s counterpart (the same
// protobuf bytes).
func convert(src interface{ Marshal() ([]byte, error) }, dst proto.Message) error {
	b, err := src.Marshal()
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, dst)
}

// Desired returns, from the caches, the Services meant for edges and their
// slices filtered for node, when node is an edge node.
func (c *Controller) Desired(node string) ([]*feed.Object, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.desired(node)
}

// desired is Desired with c.mu held.
func (c *Controller) desired(node string) ([]*feed.Object, error) {
	n, err := c.nodes.Get(node)
	if apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if !c.isEdge(n) {
		return nil, nil
	}
	services, err := c.services.List(labels.SelectorFromSet(labels.Set{OptInLabel: "true"}))
	if err != nil {
		return nil, err
	}
	var out []*feed.Object
	for _, svc := range services {
		obj, err := c.encodeService(svc)
		if err != nil {
			return nil, err
		}
		out = append(out, obj)
		slices, err := c.slicesOf(svc.Namespace + "/" + svc.Name)
		if err != nil {
			return nil, err
		}
		v := newPlan(svc, slices).view(n)
		for _, s := range slices {
			obj, err := c.encodeSlice(s, v)
			if err != nil {
				return nil, err
			}
			out = append(out, obj)
		}
	}
	return out, nil
}
