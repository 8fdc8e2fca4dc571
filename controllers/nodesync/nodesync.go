// Package nodesync sends each edge node its own Node object, so that its
// agent can act on what the cloud decides about it: labels, annotations,
// taints and spec.unschedulable (kubectl label, annotate, taint, cordon).
// A node receives its own Node and never another node's.
//
// The edge owns the Node's status (it reports it), so the status is not
// sent, and a change that touches only the status is not sent at all:
// otherwise every status report would come back down the stream. What a
// node was sent is the Node's metadata and spec at the resourceVersion of
// the last change to either that this replica saw; Desired answers that
// same version while nothing but the status has changed since, so a
// reconnecting edge is sent nothing new.
package nodesync

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
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/internal/encodecache"
	"github.com/edgesync/edgesync/controllers/internal/handlers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Config is what the controller needs.
type Config struct {
	// Nodes is an informer of the edge nodes.
	Nodes cache.SharedIndexInformer
	// IsEdge tells whether a Node from Nodes is an edge node.
	IsEdge func(*corev1.Node) bool
	Logger *zap.Logger
}

// Controller is the Node controller.
type Controller struct {
	log      *zap.Logger
	pub      feed.Publisher
	isEdge   func(*corev1.Node) bool
	informer cache.SharedIndexInformer
	nodes    corelisters.NodeLister

	queue   *handlers.Queue[string] // shut down by Run
	encoded *encodecache.Cache

	// mu guards sent and is held while publishing, so that what a node
	// receives of its Node is published in the order decided.
	mu sync.Mutex
	// sent is, by node name, the Node as it was sent (status and managed
	// fields stripped, at the version sent) to the node, or as Desired
	// answered it.
	sent map[string]*corev1.Node
}

// New returns a controller; Run is given the publisher it publishes through.
// It starts nothing.
func New(cfg Config) (*Controller, error) {
	if cfg.Nodes == nil || cfg.IsEdge == nil {
		return nil, errors.New("nodesync: Nodes, IsEdge are required")
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Controller{
		log:      log,
		isEdge:   cfg.IsEdge,
		informer: cfg.Nodes,
		nodes:    corelisters.NewNodeLister(cfg.Nodes.GetIndexer()),
		queue:    handlers.NewQueue[string]("nodesync", nil),
		encoded:  encodecache.New(),
		sent:     make(map[string]*corev1.Node),
	}, nil
}

// Run adds the controller's event handler to the node informer (which the
// caller starts), waits until it has seen the cache's contents, then runs
// workers until ctx ends, and returns once they have all stopped.
func (c *Controller) Run(ctx context.Context, pub feed.Publisher, workers int) error {
	if pub == nil {
		return errors.New("nodesync: Run needs a publisher")
	}
	c.pub = pub // before anything that publishes starts
	return handlers.Run(ctx, "nodesync", workers, c.queue, c.addHandlers, c.sync, c.log)
}

// addHandlers adds the node handler to set. Nodes that are not edge nodes
// (cloud kubelets' Nodes, which the informer may hold too) are never
// enqueued unless they were one.
func (c *Controller) addHandlers(set *handlers.Set) error {
	enqueue := func(obj any) { handlers.EnqueueKey(c.queue, obj) }
	if err := set.Add(c.informer, cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); !ok || c.isEdge(n) {
				enqueue(obj)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			oldNode, ok1 := oldObj.(*corev1.Node)
			newNode, ok2 := newObj.(*corev1.Node)
			switch {
			case !ok1 || !ok2:
				enqueue(newObj)
			case !c.isEdge(oldNode) && !c.isEdge(newNode):
			case sameContent(oldNode, newNode):
				// Status only: the edge owns it.
			default:
				enqueue(newObj)
			}
		},
		DeleteFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); !ok || c.isEdge(n) {
				enqueue(obj) // a tombstone of the cache is not a Node
			}
		},
	}); err != nil {
		return fmt.Errorf("nodesync: node handler: %w", err)
	}
	return nil
}

// sameContent tells whether a and b have the same metadata and spec, apart
// from the resourceVersion and managed fields every write changes: whether
// the edge would receive the same Node.
func sameContent(a, b *corev1.Node) bool {
	if !apiequality.Semantic.DeepEqual(a.Spec, b.Spec) {
		return false
	}
	am, bm := a.ObjectMeta, b.ObjectMeta
	am.ResourceVersion, bm.ResourceVersion = "", ""
	am.ManagedFields, bm.ManagedFields = nil, nil
	return apiequality.Semantic.DeepEqual(am, bm)
}

// stripped returns n as the edge receives it: without status and managed
// fields. It copies only the top level; n, from the cache, is not changed.
func stripped(n *corev1.Node) *corev1.Node {
	out := *n
	out.ManagedFields = nil
	out.Status = corev1.NodeStatus{}
	return &out
}

// edgeNode returns the cached Node name when it is an edge node, nil
// otherwise.
func (c *Controller) edgeNode(name string) (*corev1.Node, error) {
	n, err := c.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	if !c.isEdge(n) {
		return nil, nil
	}
	return n, nil
}

// sync publishes the node's Node to it when its metadata or spec changed
// since it was last sent, or its deletion when it is gone (or no longer an
// edge node).
func (c *Controller) sync(name string) error {
	n, err := c.edgeNode(name)
	if err != nil {
		return err
	}
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: name}

	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.sent[name]
	if n == nil {
		if old != nil {
			// A node connected elsewhere ignores it; one that connects
			// here later and still holds its Node gets a DELETE from
			// the difference with Desired.
			c.publishTombstone(name, key, string(old.UID))
			c.encoded.Forget(key)
			delete(c.sent, name)
		}
		return nil
	}
	if old != nil && old.UID == n.UID && sameContent(old, n) {
		return nil // what the node was sent is current
	}
	next := stripped(n)
	obj, err := c.encode(next)
	if err != nil {
		return err
	}
	c.pub.Publish(name, obj)
	c.sent[name] = next
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

// encode returns the shared APPLY encoding of n, a stripped Node.
func (c *Controller) encode(n *corev1.Node) (*feed.Object, error) {
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: n.Name}
	return c.encoded.Get(key, string(n.UID), n.ResourceVersion, func() (*feed.Object, error) {
		b, err := n.Marshal()
		if err != nil {
			return nil, fmt.Errorf("encode node %s: %w", n.Name, err)
		}
		msg := &corev1pb.Node{}
		if err := proto.Unmarshal(b, msg); err != nil {
			return nil, fmt.Errorf("convert node %s: %w", n.Name, err)
		}
		msg.Status = nil // Marshal writes an empty status; the edge reports it
		return feed.Encode(key, string(n.UID), n.ResourceVersion, false, &edgesyncv1.SyncResponse{
			Message: &edgesyncv1.SyncResponse_NodeEvent{NodeEvent: &edgesyncv1.NodeEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Node: msg}},
		})
	})
}

// Desired returns, from the cache, the node's own Node when it is an edge
// node: at the version last sent to it while only the status has changed
// since, so that an edge holding that version is sent nothing.
func (c *Controller) Desired(node string) ([]*feed.Object, error) {
	n, err := c.edgeNode(node)
	if err != nil || n == nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.sent[node]
	if next == nil || next.UID != n.UID || !sameContent(next, n) {
		// The worker has not seen this version yet and will publish it
		// (it is queued); it finds it sent.
		next = stripped(n)
		c.sent[node] = next
	}
	obj, err := c.encode(next)
	if err != nil {
		return nil, err
	}
	return []*feed.Object{obj}, nil
}
