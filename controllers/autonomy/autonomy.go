// Package autonomy keeps workloads on edge nodes that go offline, the way
// OpenYurt's node autonomy does, on an unmodified cluster.
//
// Kubernetes evicts the pods of a node that stops renewing its Lease: the
// node lifecycle controller taints it node.kubernetes.io/unreachable (or
// not-ready) with effect NoExecute, and the taint eviction controller deletes
// every pod whose toleration of that taint runs out (the apiserver gives
// every pod 300 s by default). An edge node going offline is normal, not a
// failure, and the edge keeps running its pods; deleting them in the cloud
// would stop them at the edge when it comes back.
//
// The controller therefore sets, on every pod bound to an edge node, the
// tolerationSeconds of its NoExecute tolerations of those two taints:
// absent (tolerate forever) by default, or the number of seconds in the
// node's AnnotationTolerationSeconds annotation, for nodes whose workloads
// should fail over to other nodes after a while. The node still turns
// NotReady honestly, and the NoSchedule taints keep new pods away from it.
// Kubernetes allows changing tolerationSeconds of an existing toleration
// (and adding tolerations) on a running pod; nothing else of the pod is
// touched.
package autonomy

import (
	"context"
	"fmt"
	"strconv"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/internal/handlers"
)

// AnnotationTolerationSeconds on an edge Node bounds how long its pods stay
// bound to it while it is unreachable or not ready, in seconds (a
// non-negative integer). Without it they stay for as long as it is offline.
const AnnotationTolerationSeconds = "edgesync.io/eviction-toleration-seconds"

// evictingTaints are the NoExecute taints the node lifecycle controller puts
// on a node that stops reporting.
var evictingTaints = []string{corev1.TaintNodeUnreachable, corev1.TaintNodeNotReady}

// Config is what the controller needs.
type Config struct {
	// Client updates pods.
	Client kubernetes.Interface
	// Pods is an informer of bound pods with an index of pods by node
	// name, NodeIndex.
	Pods      cache.SharedIndexInformer
	NodeIndex string
	// Nodes is an informer of Nodes; IsEdge tells edge nodes apart.
	Nodes  cache.SharedIndexInformer
	IsEdge func(*corev1.Node) bool
	// FieldManager names the writes.
	FieldManager string
	Logger       *zap.Logger
}

// Controller keeps the eviction tolerations of pods on edge nodes.
type Controller struct {
	cfg   Config
	log   *zap.Logger
	queue *handlers.Queue[cache.ObjectName] // shut down by Run
}

// New returns the controller; Run adds its event handlers and runs it.
func New(cfg Config) (*Controller, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Controller{cfg: cfg, log: cfg.Logger, queue: handlers.NewQueue[cache.ObjectName]("autonomy", nil)}, nil
}

// addHandlers adds the pod handler and the node handler, which enqueue the
// pods of an edge node whose annotation or role changed.
func (c *Controller) addHandlers(set *handlers.Set) error {
	if err := set.Add(c.cfg.Pods, cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueuePod,
		UpdateFunc: func(_, obj any) { c.enqueuePod(obj) },
	}); err != nil {
		return fmt.Errorf("autonomy: %w", err)
	}
	if err := set.Add(c.cfg.Nodes, cache.ResourceEventHandlerFuncs{
		AddFunc: c.enqueueNodePods,
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Node)
			n, ok2 := newObj.(*corev1.Node)
			if ok1 && ok2 && (o.Annotations[AnnotationTolerationSeconds] != n.Annotations[AnnotationTolerationSeconds] || c.cfg.IsEdge(o) != c.cfg.IsEdge(n)) {
				c.enqueueNodePods(n)
			}
		},
	}); err != nil {
		return fmt.Errorf("autonomy: %w", err)
	}
	return nil
}

func (c *Controller) enqueuePod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName == "" || pod.DeletionTimestamp != nil {
		return
	}
	c.queue.Add(cache.MetaObjectToName(pod))
}

func (c *Controller) enqueueNodePods(obj any) {
	node, ok := obj.(*corev1.Node)
	if !ok || !c.cfg.IsEdge(node) {
		return
	}
	pods, err := c.cfg.Pods.GetIndexer().ByIndex(c.cfg.NodeIndex, node.Name)
	if err != nil {
		c.log.Error("list pods of node", zap.String("node", node.Name), zap.Error(err))
		return
	}
	for _, p := range pods {
		c.enqueuePod(p)
	}
}

// Run adds the controller's event handlers to the informers (which the
// caller starts), waits until they have seen the caches' contents, runs
// workers until ctx ends and returns once they have stopped (the
// controllers' one lifecycle, package handlers).
func (c *Controller) Run(ctx context.Context, workers int) {
	syncKey := func(key cache.ObjectName) error { return c.sync(ctx, key) }
	err := handlers.Run(ctx, "autonomy", workers, c.queue, c.addHandlers, syncKey, c.log)
	if err != nil && ctx.Err() == nil {
		c.log.Error("autonomy stopped", zap.Error(err))
	}
}

func (c *Controller) sync(ctx context.Context, key cache.ObjectName) error {
	obj, exists, err := c.cfg.Pods.GetIndexer().GetByKey(key.String())
	if err != nil || !exists {
		return err
	}
	pod := obj.(*corev1.Pod)
	if pod.DeletionTimestamp != nil {
		return nil
	}
	nodeObj, exists, err := c.cfg.Nodes.GetIndexer().GetByKey(pod.Spec.NodeName)
	if err != nil || !exists {
		return err
	}
	node := nodeObj.(*corev1.Node)
	if !c.cfg.IsEdge(node) {
		return nil
	}
	seconds, err := TolerationSeconds(node)
	if err != nil {
		// The operator's annotation is wrong: say so, and keep the pods.
		c.log.Warn("ignoring invalid annotation; pods tolerate the node being offline for ever",
			zap.String("node", node.Name), zap.String("annotation", AnnotationTolerationSeconds), zap.Error(err))
		seconds = nil
	}
	tolerations, changed := Tolerations(pod.Spec.Tolerations, seconds)
	if !changed {
		return nil
	}
	updated := pod.DeepCopy()
	updated.Spec.Tolerations = tolerations
	_, err = c.cfg.Client.CoreV1().Pods(pod.Namespace).Update(ctx, updated, metav1.UpdateOptions{FieldManager: c.cfg.FieldManager})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case apierrors.IsConflict(err):
		// The cache will bring the newer pod, which is enqueued again.
		return nil
	case err != nil:
		return fmt.Errorf("update pod %s tolerations: %w", key, err)
	}
	c.log.Debug("set eviction tolerations", zap.String("pod", key.String()), zap.String("node", node.Name))
	return nil
}

// TolerationSeconds reads node's AnnotationTolerationSeconds: nil when it
// is absent (tolerate for ever).
func TolerationSeconds(node *corev1.Node) (*int64, error) {
	value, ok := node.Annotations[AnnotationTolerationSeconds]
	if !ok {
		return nil, nil
	}
	n, err := strconv.ParseInt(value, 10, 64)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("%q is not a non-negative number of seconds", value)
	}
	return &n, nil
}

// Tolerations returns tolerations changed so that a pod tolerates the
// unreachable and not-ready NoExecute taints for seconds (nil: for ever),
// and whether anything changed. The taint eviction controller evicts after
// the shortest tolerationSeconds among the tolerations matching a taint, so
// for ever means no matching NoExecute toleration has seconds; a finite
// time is set on (or added as) the toleration naming the taint.
func Tolerations(tolerations []corev1.Toleration, seconds *int64) ([]corev1.Toleration, bool) {
	out := make([]corev1.Toleration, len(tolerations))
	copy(out, tolerations)
	changed := false
	for _, taint := range evictingTaints {
		matched, named := false, false
		for i := range out {
			t := &out[i]
			if !tolerates(t, taint) {
				continue
			}
			matched = true
			if t.Effect != corev1.TaintEffectNoExecute {
				continue // no seconds allowed: tolerates for ever
			}
			switch {
			case seconds == nil && t.TolerationSeconds != nil:
				t.TolerationSeconds = nil
				changed = true
			case seconds != nil && t.Key == taint:
				named = true
				if !equalSeconds(t.TolerationSeconds, seconds) {
					t.TolerationSeconds = copySeconds(seconds)
					changed = true
				}
			}
		}
		if (seconds == nil && !matched) || (seconds != nil && !named) {
			out = append(out, corev1.Toleration{
				Key: taint, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute,
				TolerationSeconds: copySeconds(seconds),
			})
			changed = true
		}
	}
	return out, changed
}

// tolerates tells whether t matches the NoExecute taint named key (which
// has no value).
func tolerates(t *corev1.Toleration, key string) bool {
	if t.Effect != "" && t.Effect != corev1.TaintEffectNoExecute {
		return false
	}
	switch t.Operator {
	case corev1.TolerationOpExists:
		return t.Key == "" || t.Key == key
	case corev1.TolerationOpEqual, "":
		return t.Key == key && t.Value == ""
	}
	return false
}

func equalSeconds(a, b *int64) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

func copySeconds(s *int64) *int64 {
	if s == nil {
		return nil
	}
	v := *s
	return &v
}
