// Package podsync sends edge nodes their pods and the ConfigMaps and Secrets
// those pods use, and writes the pod statuses edges report back.
//
// One set of informer caches serves every node. A pod goes to the edge node
// it is bound to; a ConfigMap or Secret goes to a node while at least one of
// the node's pods references it, and is deleted on the node when the last
// such pod is gone or stops referencing it. Event handlers only enqueue
// keys; workers decide what each node gets and Publish it.
package podsync

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/internal/encodecache"
	"github.com/edgesync/edgesync/controllers/internal/handlers"
	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// NodeIndex names the pod informer index by spec.nodeName that the
// controller needs; AddIndexers adds it.
const NodeIndex = "podsync.spec.nodeName"

// AddIndexers adds the indexes the controller uses to the pod informer. Call
// it before the informer starts.
func AddIndexers(pods cache.SharedIndexInformer) error {
	return pods.AddIndexers(cache.Indexers{NodeIndex: func(obj any) ([]string, error) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return nil, nil
		}
		return []string{pod.Spec.NodeName}, nil
	}})
}

// Config is what the controller needs.
type Config struct {
	// Client writes pod statuses and deletes terminated pods.
	Client kubernetes.Interface
	// Pods, ConfigMaps and Secrets are informers over all namespaces; Pods
	// must have the index AddIndexers adds.
	Pods, ConfigMaps, Secrets cache.SharedIndexInformer
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

// Controller is the pod, ConfigMap and Secret controller.
type Controller struct {
	client       kubernetes.Interface
	log          *zap.Logger
	pub          feed.Publisher
	fieldManager string
	isEdge       func(*corev1.Node) bool

	informers  Config
	podIndexer cache.Indexer
	pods       corelisters.PodLister
	configMaps corelisters.ConfigMapLister
	secrets    corelisters.SecretLister
	nodes      corelisters.NodeLister

	// podQueue and refQueue are shut down by Run.
	podQueue *handlers.Queue[string]
	refQueue *handlers.Queue[feed.Key]
	encoded  *encodecache.Cache
	reports  *reportqueue.Queue

	// mu guards sent and holders, and is held while publishing so that what
	// a node receives for one object is published in the order decided.
	mu sync.Mutex
	// sent is what was published for each pod, by namespace/name.
	sent map[string]sentPod
	// holders counts, per ConfigMap or Secret and node, the node's pods
	// that reference it.
	holders map[feed.Key]map[string]int
}

// sentPod records where a pod was published and what it referenced.
type sentPod struct {
	node string
	uid  types.UID
	refs []feed.Key
}

// New returns a controller; Run is given the publisher it publishes through.
// It starts nothing.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Pods == nil || cfg.ConfigMaps == nil || cfg.Secrets == nil || cfg.Nodes == nil || cfg.IsEdge == nil {
		return nil, errors.New("podsync: Client, Pods, ConfigMaps, Secrets, Nodes, IsEdge are required")
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	c := &Controller{
		client:       cfg.Client,
		log:          log,
		fieldManager: cfg.FieldManager,
		isEdge:       cfg.IsEdge,
		informers:    cfg,
		podIndexer:   cfg.Pods.GetIndexer(),
		pods:         corelisters.NewPodLister(cfg.Pods.GetIndexer()),
		configMaps:   corelisters.NewConfigMapLister(cfg.ConfigMaps.GetIndexer()),
		secrets:      corelisters.NewSecretLister(cfg.Secrets.GetIndexer()),
		nodes:        corelisters.NewNodeLister(cfg.Nodes.GetIndexer()),
		podQueue:     handlers.NewQueue[string]("podsync-pods", nil),
		refQueue:     handlers.NewQueue[feed.Key]("podsync-refs", nil),
		encoded:      encodecache.New(),
		sent:         make(map[string]sentPod),
		holders:      make(map[feed.Key]map[string]int),
	}
	c.reports = reportqueue.New(log.Named("reports"), reportqueue.Guarded(cfg.WriteGuard, c.writePodStatus))
	return c, nil
}

// addHandlers makes the informers enqueue into the controller's queues and
// adds the handlers to set.
func (c *Controller) addHandlers(set *handlers.Set) error {
	add := set.Add
	if err := add(c.informers.Pods, cache.ResourceEventHandlerFuncs{
		AddFunc: c.enqueuePod,
		UpdateFunc: func(oldObj, newObj any) {
			oldPod, ok1 := oldObj.(*corev1.Pod)
			newPod, ok2 := newObj.(*corev1.Pod)
			if ok1 && ok2 && onlyStatusChanged(oldPod, newPod) {
				return // the edge owns the status
			}
			c.enqueuePod(newObj)
		},
		DeleteFunc: c.enqueuePod,
	}); err != nil {
		return fmt.Errorf("podsync: pod handler: %w", err)
	}
	for kind, informer := range map[edgesyncv1.Kind]cache.SharedIndexInformer{
		edgesyncv1.Kind_KIND_CONFIG_MAP: c.informers.ConfigMaps,
		edgesyncv1.Kind_KIND_SECRET:     c.informers.Secrets,
	} {
		enqueue := func(obj any) {
			key, err := cache.DeletionHandlingObjectToName(obj)
			if err != nil {
				utilruntime.HandleError(err)
				return
			}
			c.refQueue.Add(feed.Key{Kind: kind, Namespace: key.Namespace, Name: key.Name})
		}
		if err := add(informer, cache.ResourceEventHandlerFuncs{
			AddFunc:    enqueue,
			UpdateFunc: func(_, obj any) { enqueue(obj) },
			DeleteFunc: enqueue,
		}); err != nil {
			return fmt.Errorf("podsync: %s handler: %w", kind, err)
		}
	}
	// A node becoming (or ceasing to be) an edge node changes what its
	// pods' sync decides.
	enqueueNodePods := func(obj any) {
		key, err := cache.DeletionHandlingObjectToName(obj)
		if err != nil {
			utilruntime.HandleError(err)
			return
		}
		pods, err := c.podIndexer.ByIndex(NodeIndex, key.Name)
		if err != nil {
			utilruntime.HandleError(err)
			return
		}
		for _, p := range pods {
			c.enqueuePod(p)
		}
	}
	if err := add(c.informers.Nodes, handlers.EdgeRoleChanges(c.isEdge, enqueueNodePods)); err != nil {
		return fmt.Errorf("podsync: node handler: %w", err)
	}
	return nil
}

func (c *Controller) enqueuePod(obj any) { handlers.EnqueueKey(c.podQueue, obj) }

// onlyStatusChanged tells whether newPod differs from oldPod only in status
// (and the metadata every write changes).
func onlyStatusChanged(oldPod, newPod *corev1.Pod) bool {
	if !apiequality.Semantic.DeepEqual(oldPod.Spec, newPod.Spec) {
		return false
	}
	oldMeta, newMeta := oldPod.ObjectMeta, newPod.ObjectMeta
	oldMeta.ResourceVersion, newMeta.ResourceVersion = "", ""
	oldMeta.ManagedFields, newMeta.ManagedFields = nil, nil
	return apiequality.Semantic.DeepEqual(oldMeta, newMeta)
}

// Run adds the controller's event handlers to the informers (which the
// caller starts), waits until they have seen the caches' contents, then runs
// workers until ctx ends, and returns once they have all stopped.
func (c *Controller) Run(ctx context.Context, pub feed.Publisher, workers int) error {
	if pub == nil {
		return errors.New("podsync: Run needs a publisher")
	}
	c.pub = pub // before anything that publishes starts
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { c.reports.Run(ctx, workers) })
	defer c.podQueue.ShutDown()
	defer c.refQueue.ShutDown()

	var set handlers.Set
	defer set.RemoveAll()
	if err := c.addHandlers(&set); err != nil {
		return err
	}
	if !set.WaitSynced(ctx) {
		return fmt.Errorf("podsync: caches did not sync: %w", context.Cause(ctx))
	}
	for range workers {
		wg.Go(func() {
			for handlers.ProcessNext(c.podQueue, c.syncPod, c.log) {
			}
		})
		wg.Go(func() {
			for handlers.ProcessNext(c.refQueue, c.syncRef, c.log) {
			}
		})
	}
	<-ctx.Done()
	return nil
}

// edgeNode returns name when it is an edge node, "" otherwise.
func (c *Controller) edgeNode(name string) string { return handlers.EdgeNode(c.nodes, c.isEdge, name) }

// syncPod publishes what the pod's node should now hold of the pod and its
// references, and deletes what it should no longer hold.
func (c *Controller) syncPod(key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // a key we never enqueue
	}
	pod, err := c.pods.Pods(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		pod = nil
	} else if err != nil {
		return err
	}
	var node string
	var refs []feed.Key
	if pod != nil {
		node = c.edgeNode(pod.Spec.NodeName)
		refs = references(pod)
	}
	podKey := feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: namespace, Name: name}

	c.mu.Lock()
	defer c.mu.Unlock()
	old, had := c.sent[key]
	if had && (pod == nil || old.node != node || old.uid != pod.UID) {
		// The copy on old.node is gone, moved away or replaced.
		c.publishTombstone(old.node, podKey, string(old.uid))
		c.encoded.Forget(podKey)
		c.release(old.node, old.refs)
		delete(c.sent, key)
		had = false
	}
	if node == "" {
		return nil
	}
	obj, err := c.encodePod(pod)
	if err != nil {
		return err
	}
	var kept []feed.Key
	if had {
		kept = old.refs
	}
	// The node gets what the pod needs before the pod, and loses what it
	// no longer needs after it.
	c.retain(node, minus(refs, kept))
	c.pub.Publish(node, obj)
	c.release(node, minus(kept, refs))
	c.sent[key] = sentPod{node: node, uid: pod.UID, refs: refs}
	return nil
}

// minus returns the keys of a that are not in b.
func minus(a, b []feed.Key) []feed.Key {
	var out []feed.Key
	for _, k := range a {
		found := false
		for _, l := range b {
			if k == l {
				found = true
				break
			}
		}
		if !found {
			out = append(out, k)
		}
	}
	return out
}

// retain counts one more pod on node referencing each of refs, publishing
// the ones node did not hold yet. c.mu must be held.
func (c *Controller) retain(node string, refs []feed.Key) {
	for _, ref := range refs {
		nodes := c.holders[ref]
		if nodes == nil {
			nodes = make(map[string]int)
			c.holders[ref] = nodes
		}
		nodes[node]++
		if nodes[node] > 1 {
			continue
		}
		obj, err := c.encodeRef(ref)
		if err != nil {
			c.log.Error("encode referenced object", zap.Stringer("object", ref), zap.Error(err))
			continue
		}
		if obj != nil {
			c.pub.Publish(node, obj)
		}
	}
}

// release counts one pod fewer on node referencing each of refs, deleting on
// node the ones no pod there references any more. c.mu must be held.
func (c *Controller) release(node string, refs []feed.Key) {
	for _, ref := range refs {
		nodes := c.holders[ref]
		nodes[node]--
		if nodes[node] > 0 {
			continue
		}
		delete(nodes, node)
		c.publishTombstone(node, ref, c.refUID(ref))
		if len(nodes) == 0 {
			delete(c.holders, ref)
			c.encoded.Forget(ref)
		}
	}
}

// syncRef publishes the current version of a ConfigMap or Secret (or its
// deletion) to every node whose pods reference it.
func (c *Controller) syncRef(ref feed.Key) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	nodes := c.holders[ref]
	if len(nodes) == 0 {
		c.encoded.Forget(ref) // encoded for a Desired call, perhaps
		return nil
	}
	obj, err := c.encodeRef(ref)
	if err != nil {
		return err
	}
	if obj == nil {
		for node := range nodes {
			c.publishTombstone(node, ref, "")
		}
		c.encoded.Forget(ref)
		return nil
	}
	for node := range nodes {
		c.pub.Publish(node, obj)
	}
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

// refUID returns the uid of a cached ConfigMap or Secret, "" when absent.
func (c *Controller) refUID(ref feed.Key) string {
	var meta metav1.Object
	switch ref.Kind {
	case edgesyncv1.Kind_KIND_CONFIG_MAP:
		if cm, err := c.configMaps.ConfigMaps(ref.Namespace).Get(ref.Name); err == nil {
			meta = cm
		}
	case edgesyncv1.Kind_KIND_SECRET:
		if s, err := c.secrets.Secrets(ref.Namespace).Get(ref.Name); err == nil {
			meta = s
		}
	}
	if meta == nil {
		return ""
	}
	return string(meta.GetUID())
}

// Desired returns, from the caches, every pod bound to node (when it is an
// edge node) and every ConfigMap and Secret they reference.
func (c *Controller) Desired(node string) ([]*feed.Object, error) {
	if c.edgeNode(node) == "" {
		return nil, nil
	}
	items, err := c.podIndexer.ByIndex(NodeIndex, node)
	if err != nil {
		return nil, fmt.Errorf("pods of node %q: %w", node, err)
	}
	var refs, pods []*feed.Object
	seen := make(map[feed.Key]bool)
	for _, item := range items {
		pod := item.(*corev1.Pod)
		for _, ref := range references(pod) {
			if seen[ref] {
				continue
			}
			seen[ref] = true
			obj, err := c.encodeRef(ref)
			if err != nil {
				return nil, err
			}
			if obj != nil {
				refs = append(refs, obj)
			}
		}
		obj, err := c.encodePod(pod)
		if err != nil {
			return nil, err
		}
		pods = append(pods, obj)
	}
	return append(refs, pods...), nil
}

// encodePod returns the shared APPLY encoding of pod's current version.
func (c *Controller) encodePod(pod *corev1.Pod) (*feed.Object, error) {
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: pod.Namespace, Name: pod.Name}
	return c.encoded.Get(key, string(pod.UID), pod.ResourceVersion, func() (*feed.Object, error) {
		stripped := pod
		if len(pod.ManagedFields) > 0 {
			stripped = pod.DeepCopy()
			stripped.ManagedFields = nil
		}
		msg := &corev1pb.Pod{}
		if err := convert(stripped, msg); err != nil {
			return nil, fmt.Errorf("convert pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		return feed.Encode(key, string(pod.UID), pod.ResourceVersion, false, &edgesyncv1.SyncResponse{
			Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Pod: msg}},
		})
	})
}

// encodeRef returns the shared APPLY encoding of a cached ConfigMap or
// Secret, or nil when the cache does not hold it.
func (c *Controller) encodeRef(ref feed.Key) (*feed.Object, error) {
	switch ref.Kind {
	case edgesyncv1.Kind_KIND_CONFIG_MAP:
		cm, err := c.configMaps.ConfigMaps(ref.Namespace).Get(ref.Name)
		if apierrors.IsNotFound(err) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		return c.encoded.Get(ref, string(cm.UID), cm.ResourceVersion, func() (*feed.Object, error) {
			stripped := cm
			if len(cm.ManagedFields) > 0 {
				stripped = cm.DeepCopy()
				stripped.ManagedFields = nil
			}
			msg := &corev1pb.ConfigMap{}
			if err := convert(stripped, msg); err != nil {
				return nil, fmt.Errorf("convert configmap %s/%s: %w", cm.Namespace, cm.Name, err)
			}
			return feed.Encode(ref, string(cm.UID), cm.ResourceVersion, false, &edgesyncv1.SyncResponse{
				Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, ConfigMap: msg}},
			})
		})
	case edgesyncv1.Kind_KIND_SECRET:
		s, err := c.secrets.Secrets(ref.Namespace).Get(ref.Name)
		if apierrors.IsNotFound(err) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		return c.encoded.Get(ref, string(s.UID), s.ResourceVersion, func() (*feed.Object, error) {
			stripped := s
			if len(s.ManagedFields) > 0 {
				stripped = s.DeepCopy()
				stripped.ManagedFields = nil
			}
			msg := &corev1pb.Secret{}
			if err := convert(stripped, msg); err != nil {
				return nil, fmt.Errorf("convert secret %s/%s: %w", s.Namespace, s.Name, err)
			}
			return feed.Encode(ref, string(s.UID), s.ResourceVersion, false, &edgesyncv1.SyncResponse{
				Message: &edgesyncv1.SyncResponse_SecretEvent{SecretEvent: &edgesyncv1.SecretEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Secret: msg}},
			})
		})
	}
	return nil, fmt.Errorf("podsync does not handle %s", ref.Kind)
}

// marshaler is a Kubernetes type with its generated protobuf encoding.
type marshaler interface{ Marshal() ([]byte, error) }

// convert turns a Kubernetes object into the generated protobuf message of
// the same type: both share one wire encoding.
func convert(obj marshaler, msg proto.Message) error {
	b, err := obj.Marshal()
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, msg)
}
