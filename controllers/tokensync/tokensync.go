// Package tokensync gives the pods of edge nodes their ServiceAccount
// tokens: for every serviceAccountToken projection in the volumes of a pod
// bound to an edge node (the kube-api-access-* volume every pod gets, and
// custom ones), it obtains a token with the TokenRequest API, bound to the
// pod, and publishes it to the pod's node as a TokenEvent keyed by pod and
// volume source.
//
// Tokens are obtained only for nodes that hold a session on this replica
// (from the node's first Desired to SessionEnded), so that every replica
// does not mint a token for every edge pod. A token is refreshed once 80%
// of its lifetime has passed or it is 24 hours old, whichever comes first
// (the kubelet's rule), and requested anew when the pod's uid changes; the
// node receives DELETE when the pod leaves it. The tokens of a node whose
// session ended are kept until they would be refreshed, so that a node
// that reconnects at once gets the same ones back, and then forgotten.
//
// A token's version says when it is due for refresh (and digests of what
// it was asked for and of the token), so that a replica that did not
// obtain it (it restarted, or took the node over from another replica)
// adopts the tokens a connecting node reports holding (Adopt) until they
// are due, instead of requesting every token of the node's pods again and
// sending it as a new version.
//
// Tokens are per-pod values: they are encoded once per token and handed
// only to the node the pod is bound to, never put in a cache another
// node's objects come from. Nothing here logs a token.
package tokensync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/edgesync/edgesync/controllers/internal/handlers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Kubernetes' rules for serviceAccountToken projections.
const (
	// DefaultExpiration is the lifetime asked for when a projection sets
	// none.
	DefaultExpiration = time.Hour
	// MinExpiration is the shortest lifetime the TokenRequest API grants.
	MinExpiration = 10 * time.Minute
	// MaxAge is the age at which a token is refreshed whatever its
	// lifetime.
	MaxAge = 24 * time.Hour
	// minRefresh is the shortest time between two tokens of a projection.
	minRefresh = time.Minute
)

// Config is what the controller needs.
type Config struct {
	// Client requests tokens (serviceaccounts/token create).
	Client kubernetes.Interface
	// Pods is an informer of the pods bound to nodes, with the index
	// NodeIndex by spec.nodeName.
	Pods      cache.SharedIndexInformer
	NodeIndex string
	// Nodes is an informer of the Nodes; IsEdge tells edge nodes apart.
	Nodes  cache.SharedIndexInformer
	IsEdge func(*corev1.Node) bool
	// Registerer registers edgesync_tokens_issued_total and
	// edgesync_token_refresh_failures_total; none when nil.
	Registerer prometheus.Registerer
	// Clock tells the time and schedules refreshes; the real clock when
	// nil.
	Clock  clock.WithTicker
	Logger *zap.Logger
}

// Controller is the ServiceAccount token controller.
type Controller struct {
	client   kubernetes.Interface
	log      *zap.Logger
	pub      feed.Publisher
	clock    clock.WithTicker
	isEdge   func(*corev1.Node) bool
	cfg      Config
	podIndex cache.Indexer
	pods     corelisters.PodLister
	nodes    corelisters.NodeLister
	issued   prometheus.Counter
	adopted  prometheus.Counter
	failures prometheus.Counter
	queue    *handlers.Queue[string] // shut down by Run; Desired may add to it before

	// mu guards active and held, and is held while publishing, so that
	// what Desired answers and what is published agree.
	mu sync.Mutex
	// active holds the nodes with a session on this replica.
	active map[string]bool
	// held is, by pod namespace/name, the tokens obtained for the pod.
	// Only the pod's worker changes a pod's entry.
	held map[string]*podTokens
}

// podTokens are the tokens of one pod, for the node it is bound to.
type podTokens struct {
	node   string
	uid    types.UID
	tokens map[feed.Key]*token
}

// token is one token obtained, encoded for the pod's node only, or one
// the node holds and this replica adopted (obj nil: only the node has it).
type token struct {
	src       source
	obj       *feed.Object
	version   string
	refreshAt time.Time
	adopted   bool
}

// source is one serviceAccountToken projection of a pod.
type source struct {
	volume     string
	path       string
	audience   string
	expiration time.Duration
}

// New returns a controller; Run is given the publisher it publishes through.
// It starts nothing.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Pods == nil || cfg.NodeIndex == "" || cfg.Nodes == nil || cfg.IsEdge == nil {
		return nil, errors.New("tokensync: Client, Pods, NodeIndex, Nodes, IsEdge are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	c := &Controller{
		client:   cfg.Client,
		log:      cfg.Logger,
		clock:    cfg.Clock,
		isEdge:   cfg.IsEdge,
		cfg:      cfg,
		podIndex: cfg.Pods.GetIndexer(),
		pods:     corelisters.NewPodLister(cfg.Pods.GetIndexer()),
		nodes:    corelisters.NewNodeLister(cfg.Nodes.GetIndexer()),
		issued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_tokens_issued_total",
			Help: "ServiceAccount tokens obtained with the TokenRequest API for pods on edge nodes (first issues and refreshes).",
		}),
		adopted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_tokens_adopted_total",
			Help: "ServiceAccount tokens a connecting edge held that this replica kept until their refresh instead of requesting new ones.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_token_refresh_failures_total",
			Help: "TokenRequest calls for pods on edge nodes that failed (retried with backoff).",
		}),
		queue:  handlers.NewQueue[string]("tokensync", cfg.Clock),
		active: make(map[string]bool),
		held:   make(map[string]*podTokens),
	}
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.issued, c.adopted, c.failures} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("tokensync: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Run adds the controller's event handlers to the informers (which the
// caller starts), waits until they have seen the caches' contents, then runs
// workers until ctx ends, and returns once they have all stopped.
func (c *Controller) Run(ctx context.Context, pub feed.Publisher, workers int) error {
	if pub == nil {
		return errors.New("tokensync: Run needs a publisher")
	}
	c.pub = pub // before anything that publishes starts
	syncKey := func(key string) error { return c.sync(ctx, key) }
	return handlers.Run(ctx, "tokensync", workers, c.queue, c.addHandlers, syncKey, c.log)
}

// addHandlers adds to set the pod handler and the node handler, which
// enqueues a node's pods when it gains or loses the edge role.
func (c *Controller) addHandlers(set *handlers.Set) error {
	enqueue := func(obj any) { handlers.EnqueueKey(c.queue, obj) }
	if err := set.Add(c.cfg.Pods, cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue,
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Pod)
			n, ok2 := newObj.(*corev1.Pod)
			if ok1 && ok2 && o.UID == n.UID && o.Spec.NodeName == n.Spec.NodeName {
				return // volumes cannot change; status changes do not matter
			}
			enqueue(newObj)
		},
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("tokensync: pod handler: %w", err)
	}
	enqueueNodePods := func(obj any) {
		key, err := cache.DeletionHandlingObjectToName(obj)
		if err != nil {
			return
		}
		pods, _ := c.podIndex.ByIndex(c.cfg.NodeIndex, key.Name)
		for _, p := range pods {
			enqueue(p)
		}
	}
	if err := set.Add(c.cfg.Nodes, handlers.EdgeRoleChanges(c.isEdge, enqueueNodePods)); err != nil {
		return fmt.Errorf("tokensync: node handler: %w", err)
	}
	return nil
}

// sources returns the serviceAccountToken projections of pod's volumes.
func sources(pod *corev1.Pod) []source {
	var out []source
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, p := range v.Projected.Sources {
			t := p.ServiceAccountToken
			if t == nil {
				continue
			}
			exp := DefaultExpiration
			if t.ExpirationSeconds != nil {
				exp = time.Duration(*t.ExpirationSeconds) * time.Second
			}
			out = append(out, source{volume: v.Name, path: t.Path, audience: t.Audience, expiration: max(exp, MinExpiration)})
		}
	}
	return out
}

// Key returns the key of the token pod mounts at path in volume.
func Key(namespace, pod, volume, path string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN, Namespace: namespace, Name: pod + "/" + volume + "/" + path}
}

func (s source) key(pod *corev1.Pod) feed.Key { return Key(pod.Namespace, pod.Name, s.volume, s.path) }

// edgeNode returns the pod's node when it is an edge node, "" otherwise.
func (c *Controller) edgeNode(pod *corev1.Pod) string {
	if pod == nil {
		return ""
	}
	return handlers.EdgeNode(c.nodes, c.isEdge, pod.Spec.NodeName)
}

// sync makes what the pod's node holds of the pod's tokens current:
// DELETE for tokens of a pod that left, was replaced or stopped mounting
// them, a new token for each projection without a fresh one, and a
// refresh scheduled for the earliest one due.
func (c *Controller) sync(ctx context.Context, key string) error {
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
	node := c.edgeNode(pod)
	now := c.clock.Now()

	// Decide under the lock what to request; request without it.
	c.mu.Lock()
	cur := c.held[key]
	if cur != nil && (pod == nil || cur.uid != pod.UID || cur.node != node) {
		c.publishTombstones(cur.node, cur.uid, cur.tokens)
		delete(c.held, key)
		cur = nil
	}
	if pod == nil || node == "" {
		c.mu.Unlock()
		return nil
	}
	if !c.active[node] {
		// No session here: keep what was obtained until it is due, so
		// that a quick reconnect gets it back, then forget it.
		if cur != nil && !cur.earliestRefresh().After(now) {
			delete(c.held, key)
		}
		c.mu.Unlock()
		return nil
	}
	if cur == nil {
		cur = &podTokens{node: node, uid: pod.UID, tokens: make(map[feed.Key]*token)}
		c.held[key] = cur
	}
	want := make(map[feed.Key]source)
	var due []source
	for _, s := range sources(pod) {
		k := s.key(pod)
		want[k] = s
		if t := cur.tokens[k]; t == nil || t.src != s || !t.refreshAt.After(now) {
			due = append(due, s)
		}
	}
	stale := make(map[feed.Key]*token)
	for k, t := range cur.tokens {
		if _, ok := want[k]; !ok {
			stale[k] = t
			delete(cur.tokens, k)
		}
	}
	c.publishTombstones(node, cur.uid, stale)
	c.mu.Unlock()

	var errs []error
	for _, s := range due {
		t, err := c.request(ctx, pod, s)
		if err != nil {
			c.failures.Inc()
			errs = append(errs, err)
			continue
		}
		c.issued.Inc()
		c.log.Debug("token issued", zap.String("pod", key), zap.String("volume", s.volume), zap.String("path", s.path),
			zap.String("version", t.obj.ResourceVersion), zap.Time("refresh_at", t.refreshAt))
		c.mu.Lock()
		if c.held[key] == cur && c.active[node] {
			cur.tokens[t.obj.Key] = t
			c.pub.Publish(node, t.obj)
		}
		c.mu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return err // retried with the queue's backoff
	}
	c.mu.Lock()
	next := cur.earliestRefresh()
	c.mu.Unlock()
	if !next.IsZero() {
		c.queue.AddAfter(key, next.Sub(now))
	}
	return nil
}

// earliestRefresh is when the first of the tokens is due; zero when there
// are none. c.mu must be held.
func (p *podTokens) earliestRefresh() time.Time {
	var first time.Time
	for _, t := range p.tokens {
		if first.IsZero() || t.refreshAt.Before(first) {
			first = t.refreshAt
		}
	}
	return first
}

// request obtains a token for one projection of pod, bound to the pod, and
// encodes its event. Errors name the pod and the projection, never the
// token.
func (c *Controller) request(ctx context.Context, pod *corev1.Pod, s source) (*token, error) {
	sa := serviceAccount(pod)
	seconds := int64(s.expiration / time.Second)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &seconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if s.audience != "" {
		req.Spec.Audiences = []string{s.audience}
	}
	issued := c.clock.Now()
	resp, err := c.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("request token of ServiceAccount %s/%s for pod %s volume %q path %q: %w", pod.Namespace, sa, pod.Name, s.volume, s.path, err)
	}
	expires := resp.Status.ExpirationTimestamp.Time
	// A clock skewed against the API server's must not make every token
	// due at once: refresh no sooner than minRefresh.
	refreshAt := issued.Add(max(min(expires.Sub(issued)*8/10, MaxAge), minRefresh))
	key := s.key(pod)
	// The version is new with every token and tells nothing about it;
	// another replica reads from it when the token is due (Adopt).
	sum := sha256.Sum256([]byte(resp.Status.Token))
	version := tokenVersion(refreshAt, s.digest(sa), hex.EncodeToString(sum[:8]))
	msg := &edgesyncv1.ServiceAccountToken{
		Metadata: &metav1pb.ObjectMeta{
			Namespace:         proto.String(pod.Namespace),
			Name:              proto.String(key.Name),
			Uid:               proto.String(string(pod.UID)),
			ResourceVersion:   proto.String(version),
			CreationTimestamp: &metav1pb.Time{Seconds: proto.Int64(issued.Unix())},
		},
		PodName:            pod.Name,
		VolumeName:         s.volume,
		Path:               s.path,
		ServiceAccountName: sa,
		Audience:           s.audience,
		Token:              resp.Status.Token,
		ExpirationTime:     timestamppb.New(expires),
	}
	obj, err := feed.Encode(key, string(pod.UID), version, false, &edgesyncv1.SyncResponse{
		Message: &edgesyncv1.SyncResponse_TokenEvent{TokenEvent: &edgesyncv1.TokenEvent{Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Token: msg}},
	})
	if err != nil {
		return nil, err
	}
	return &token{src: s, obj: obj, version: version, refreshAt: refreshAt}, nil
}

// serviceAccount is the ServiceAccount pod runs as.
func serviceAccount(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// digest identifies what a token of s for ServiceAccount sa is asked for:
// a token adopted from an edge must have been asked for the same.
func (s source) digest(sa string) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%d", sa, s.audience, int64(s.expiration/time.Second)))
	return hex.EncodeToString(sum[:4])
}

// tokenVersion is a token's version: when it is due for refresh (Unix
// seconds), the digest of what it was asked for, and a digest of the token.
func tokenVersion(refreshAt time.Time, spec, token string) string {
	return strconv.FormatInt(refreshAt.Unix(), 10) + "." + spec + "." + token
}

// parseTokenVersion returns when the token of version is due and the
// digest of what it was asked for; false for a version in another form
// (from an older server, or made up).
func parseTokenVersion(version string) (refreshAt time.Time, spec string, ok bool) {
	due, rest, ok1 := strings.Cut(version, ".")
	spec, _, ok2 := strings.Cut(rest, ".")
	secs, err := strconv.ParseInt(due, 10, 64)
	if !ok1 || !ok2 || err != nil || spec == "" {
		return time.Time{}, "", false
	}
	return time.Unix(secs, 0), spec, true
}

// Adopt keeps the tokens node reports holding (its Hello) that this
// replica did not obtain: a token of a pod still bound to node (same uid),
// for a projection the pod still mounts with the same audience, lifetime
// and ServiceAccount, and not yet due, is kept until it is due (no
// TokenRequest, nothing sent), then refreshed as usual. A token adopted at
// an earlier session that node no longer reports is requested again. It
// never calls the API server.
func (c *Controller) Adopt(node string, held []*edgesyncv1.ObjectRef) {
	reported := make(map[feed.Key]*edgesyncv1.ObjectRef)
	for _, ref := range held {
		if ref.GetKind() == edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN {
			reported[feed.Key{Kind: ref.GetKind(), Namespace: ref.GetNamespace(), Name: ref.GetName()}] = ref
		}
	}
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if handlers.EdgeNode(c.nodes, c.isEdge, node) == "" {
		return
	}
	items, err := c.podIndex.ByIndex(c.cfg.NodeIndex, node)
	if err != nil {
		return
	}
	for _, item := range items {
		pod := item.(*corev1.Pod)
		podKey := pod.Namespace + "/" + pod.Name
		cur := c.held[podKey]
		if cur != nil && (cur.uid != pod.UID || cur.node != node) {
			continue // the worker replaces them
		}
		for _, s := range sources(pod) {
			k := s.key(pod)
			ref := reported[k]
			if t := cur.token(k); t != nil {
				if t.adopted && (ref == nil || ref.GetResourceVersion() != t.version) {
					delete(cur.tokens, k) // the node lost it: Desired queues a new one
				}
				continue
			}
			if ref == nil || ref.GetUid() != string(pod.UID) {
				continue
			}
			refreshAt, spec, ok := parseTokenVersion(ref.GetResourceVersion())
			if !ok || spec != s.digest(serviceAccount(pod)) || !refreshAt.After(now) {
				continue
			}
			// No later than a token obtained now would be due.
			if limit := now.Add(max(min(s.expiration*8/10, MaxAge), minRefresh)); refreshAt.After(limit) {
				refreshAt = limit
			}
			if cur == nil {
				cur = &podTokens{node: node, uid: pod.UID, tokens: make(map[feed.Key]*token)}
				c.held[podKey] = cur
			}
			cur.tokens[k] = &token{src: s, version: ref.GetResourceVersion(), refreshAt: refreshAt, adopted: true}
			c.adopted.Inc()
			c.queue.AddAfter(podKey, refreshAt.Sub(now))
		}
	}
}

// token returns the token held under k; nil when p is nil or has none.
func (p *podTokens) token(k feed.Key) *token {
	if p == nil {
		return nil
	}
	return p.tokens[k]
}

// publishTombstones publishes DELETE for tokens of the pod with uid to
// node. c.mu must be held.
func (c *Controller) publishTombstones(node string, uid types.UID, tokens map[feed.Key]*token) {
	for k := range tokens {
		obj, err := feed.Tombstone(k, string(uid))
		if err != nil {
			c.log.Error("encode tombstone", zap.Stringer("object", k), zap.Error(err))
			continue
		}
		c.pub.Publish(node, obj)
	}
}

// Desired returns the tokens obtained for node's pods, and marks node as
// holding a session here: the pods whose tokens are missing or due are
// queued, and their tokens are published as they arrive. It never calls
// the API server.
func (c *Controller) Desired(node string) ([]*feed.Object, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A node may connect before its Node exists: its pods are queued when
	// it becomes an edge node.
	c.active[node] = true
	if handlers.EdgeNode(c.nodes, c.isEdge, node) == "" {
		return nil, nil
	}
	items, err := c.podIndex.ByIndex(c.cfg.NodeIndex, node)
	if err != nil {
		return nil, fmt.Errorf("pods of node %q: %w", node, err)
	}
	now := c.clock.Now()
	var objs []*feed.Object
	for _, item := range items {
		pod := item.(*corev1.Pod)
		srcs := sources(pod)
		if len(srcs) == 0 {
			continue
		}
		key := pod.Namespace + "/" + pod.Name
		cur := c.held[key]
		if cur != nil && (cur.uid != pod.UID || cur.node != node) {
			cur = nil // the worker deletes it
		}
		complete := cur != nil
		for _, s := range srcs {
			var t *token
			if cur != nil {
				t = cur.tokens[s.key(pod)]
			}
			if t == nil || t.src != s {
				complete = false
				continue
			}
			if !t.adopted {
				// An adopted token is not returned: the node holds it,
				// and Tombstone keeps it there.
				objs = append(objs, t.obj)
			}
			if !t.refreshAt.After(now) {
				complete = false
			}
		}
		if !complete {
			c.queue.Add(key)
		}
	}
	return objs, nil
}

// SessionEnded stops obtaining tokens for node; those held are forgotten
// when they would be refreshed.
func (c *Controller) SessionEnded(node string) {
	c.mu.Lock()
	delete(c.active, node)
	c.mu.Unlock()
}

// Tombstone returns the DELETE event for a token a connecting node holds
// and Desired did not return, or nil while the token is still to be
// obtained: the pod with that uid is still bound to an edge node and still
// mounts it, so the node keeps its token until the new one arrives.
func (c *Controller) Tombstone(key feed.Key, uid string) (*feed.Object, error) {
	podName, rest, _ := strings.Cut(key.Name, "/")
	volume, path, _ := strings.Cut(rest, "/")
	if pod, err := c.pods.Pods(key.Namespace).Get(podName); err == nil && uid != "" && string(pod.UID) == uid && c.edgeNode(pod) != "" {
		for _, s := range sources(pod) {
			if s.volume == volume && s.path == path {
				return nil, nil
			}
		}
	}
	return feed.Tombstone(key, uid)
}
