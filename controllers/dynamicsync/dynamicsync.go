// Package dynamicsync serves the resources edge applications list and watch
// through their edge, what KubeEdge's dynamiccontroller does: an edge
// subscribes to a resource (group, version, resource, namespace, label and
// field selectors) on behalf of a ServiceAccount one of its pods runs as
// (edgesync.v1.Subscription), and receives every object the subscription
// covers as a ResourceEvent in its keyed queue, then each change.
//
// One dynamic informer per resource serves every node: it starts when a
// first subscription to the resource is allowed and stops when none is
// left (after Config.IdleTimeout). Each object version is encoded once and
// the same bytes are published to every node whose subscriptions cover it.
//
// A subscription is allowed while a pod bound to the node runs as its
// ServiceAccount and a SubjectAccessReview allows that ServiceAccount to
// list and watch the resource in the namespace. The decisions are cached
// and asked again when the node's pods change, when any RBAC object changes
// (the package watches Roles, ClusterRoles, RoleBindings and
// ClusterRoleBindings: any change drops every cached decision and re-checks
// every subscription, at once and again two seconds later, when the API
// server's own authorizer has surely seen the change), and every
// Config.RecheckInterval for authorizers other than RBAC. A subscription no
// longer allowed ends with PERMISSION_DENIED, and the objects only it
// covered are deleted from the node; one refused PERMISSION_DENIED is
// decided anew on those same occasions, so access granted again is served
// again without the edge subscribing anew.
//
// The server keeps no subscription between streams: the edge sends them in
// every Hello (feed.Subscriber) and, when they change, in a Subscriptions
// report. What the edge holds from before (Hello.held_objects) stays until
// every subscription is decided; then only the difference is sent.
package dynamicsync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	rbacinformers "k8s.io/client-go/informers/rbac/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/internal/encodecache"
	"github.com/edgesync/edgesync/controllers/internal/handlers"
	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Defaults for Config's zero values.
const (
	DefaultMaxSubscriptions = 64
	DefaultMaxObjects       = 20000
	DefaultRecheckInterval  = 5 * time.Minute
	DefaultSyncTimeout      = 30 * time.Second
	DefaultIdleTimeout      = time.Minute
)

// rbacSettle is how long after an RBAC change subscriptions are checked a
// second time: the API server's authorizer watches RBAC objects too, and
// may see a change a moment after this package does.
const rbacSettle = 2 * time.Second

// Config configures the controller.
type Config struct {
	// Dynamic lists and watches the subscribed resources.
	Dynamic dynamic.Interface
	// Client asks SubjectAccessReviews and discovery, and watches RBAC.
	Client kubernetes.Interface
	// Pods is the shared pod informer, indexed by node under NodeIndex:
	// a subscription's ServiceAccount must be one a pod of the node runs
	// as.
	Pods      cache.SharedIndexInformer
	NodeIndex string
	// MaxSubscriptions and MaxObjects bound each node's subscriptions and
	// the objects they cover; DefaultMaxSubscriptions and
	// DefaultMaxObjects when zero.
	MaxSubscriptions int
	MaxObjects       int
	// RecheckInterval is how often every subscription is authorized again
	// whatever changed; DefaultRecheckInterval when zero.
	RecheckInterval time.Duration
	// SyncTimeout bounds the wait for a new informer's first list;
	// DefaultSyncTimeout when zero.
	SyncTimeout time.Duration
	// IdleTimeout is how long a resource's informer keeps running once no
	// subscription uses it (so that a node reconnecting does not make the
	// server list it again); DefaultIdleTimeout when zero, none when
	// negative.
	IdleTimeout time.Duration
	// RESTConfig, when set, names the API server the writes of edge
	// applications (ResourceWrite) go to, made with the application's own
	// token; its credentials are not used for them. Writes are refused
	// UNIMPLEMENTED when nil.
	RESTConfig *rest.Config
	// Registerer registers edgesync_dynamic_* metrics; none when nil.
	Registerer prometheus.Registerer
	Logger     *zap.Logger
}

// Controller implements the cloud side of subscriptions.
type Controller struct {
	cfg   Config
	log   *zap.Logger
	queue *handlers.Queue[item] // shut down by Run
	rbac  []cache.SharedIndexInformer
	// writer makes the writes of edge applications; nil when off.
	writer *writer

	informersRunning prometheus.Gauge
	encodes          *prometheus.CounterVec
	ended            *prometheus.CounterVec

	wg sync.WaitGroup // resource informers

	mu        sync.Mutex     // guards the fields below
	pub       feed.Publisher // set by Run
	ctx       context.Context
	nodes     map[string]*nodeState
	resources map[schema.GroupVersionResource]*resource
	decisions map[sarKey]decision
	rbacGen   uint64 // bumped on every RBAC change
	apis      map[schema.GroupVersion]map[string]metav1.APIResource
}

// item is one unit of work: a subscription to check (node, id) or an
// object of a resource that changed (gvr, key).
type item struct {
	node, id string
	gvr      schema.GroupVersionResource
	key      string
}

type phase int

const (
	pending phase = iota
	active
	ended
)

type subscription struct {
	spec    *edgesyncv1.Subscription
	gvr     schema.GroupVersionResource
	labels  labels.Selector
	fields  fields.Selector
	phase   phase
	code    codes.Code
	message string
	res     *resource // while the subscription holds a reference to it
	// kind and namespaced describe the resource (discovery).
	kind       string
	namespaced bool
}

type nodeState struct {
	subs  map[string]*subscription
	order []string // ids in the order the edge listed them
	// sent holds the KIND_RESOURCE keys the node holds or is being sent,
	// with their resource: what its Hello listed, then what was published.
	sent map[feed.Key]schema.GroupVersionResource
	// heldSubs are the subscription ids the Hello listed as held; nil once
	// settled.
	heldSubs map[string]bool
	// settled is set once every subscription of the Hello was decided and
	// what the node held from before was reconciled.
	settled bool
}

type resource struct {
	gvr      schema.GroupVersionResource
	inf      cache.SharedIndexInformer
	cancel   context.CancelFunc
	refs     int                 // subscriptions holding it (pending activation or active)
	nodes    map[string]struct{} // nodes with an active subscription to it
	idle     time.Time           // when refs dropped to zero
	encoding *encodecache.Cache
}

type sarKey struct {
	saNamespace, saName string
	group, resource     string
	namespace           string
}

type decision struct {
	allowed bool
	reason  string
}

// New builds the controller; Run starts it.
func New(cfg Config) (*Controller, error) {
	if cfg.Dynamic == nil || cfg.Client == nil || cfg.Pods == nil || cfg.NodeIndex == "" {
		return nil, errors.New("dynamicsync: Dynamic, Client, Pods and NodeIndex are required")
	}
	if cfg.MaxSubscriptions <= 0 {
		cfg.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if cfg.MaxObjects <= 0 {
		cfg.MaxObjects = DefaultMaxObjects
	}
	if cfg.RecheckInterval <= 0 {
		cfg.RecheckInterval = DefaultRecheckInterval
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = DefaultSyncTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c := &Controller{
		cfg:   cfg,
		log:   cfg.Logger,
		queue: handlers.NewQueue[item]("dynamicsync", nil),
		informersRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgesync_dynamic_informers",
			Help: "Informers running for resources edges subscribed to (one per resource, however many nodes subscribe).",
		}),
		encodes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_dynamic_encodes_total",
			Help: "Object versions of subscribed resources encoded for edges (once per version, however many nodes receive it), by resource.",
		}, []string{"resource"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_dynamic_subscriptions_ended_total",
			Help: "Subscriptions ended by the server, by gRPC code.",
		}, []string{"code"}),
		nodes:     make(map[string]*nodeState),
		resources: make(map[schema.GroupVersionResource]*resource),
		decisions: make(map[sarKey]decision),
		apis:      make(map[schema.GroupVersion]map[string]metav1.APIResource),
	}
	if cfg.RESTConfig != nil {
		w, err := newWriter(cfg.RESTConfig)
		if err != nil {
			return nil, err
		}
		c.writer = w
	}
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.informersRunning, c.encodes, c.ended} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("dynamicsync: register metrics: %w", err)
			}
		}
	}
	c.rbac = []cache.SharedIndexInformer{
		rbacinformers.NewRoleInformer(cfg.Client, metav1.NamespaceAll, 0, cache.Indexers{}),
		rbacinformers.NewRoleBindingInformer(cfg.Client, metav1.NamespaceAll, 0, cache.Indexers{}),
		rbacinformers.NewClusterRoleInformer(cfg.Client, 0, cache.Indexers{}),
		rbacinformers.NewClusterRoleBindingInformer(cfg.Client, 0, cache.Indexers{}),
	}
	for _, inf := range c.rbac {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { c.rbacChanged() },
			UpdateFunc: func(any, any) { c.rbacChanged() },
			DeleteFunc: func(any) { c.rbacChanged() },
		}); err != nil {
			return nil, fmt.Errorf("dynamicsync: %w", err)
		}
	}
	if _, err := cfg.Pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.podChanged,
		UpdateFunc: func(_, obj any) { c.podChanged(obj) },
		DeleteFunc: c.podChanged,
	}); err != nil {
		return nil, fmt.Errorf("dynamicsync: %w", err)
	}
	return c, nil
}

// Run runs the RBAC informers and workers, publishing to pub, until ctx
// ends, then stops every resource informer and returns once all have
// stopped. The pod informer is the caller's.
func (c *Controller) Run(ctx context.Context, pub feed.Publisher, workers int) error {
	c.mu.Lock()
	c.ctx, c.pub = ctx, pub
	c.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer c.queue.ShutDown()
	for _, inf := range c.rbac {
		wg.Go(func() { inf.Run(ctx.Done()) })
	}
	synced := make([]cache.InformerSynced, 0, len(c.rbac)+1)
	for _, inf := range c.rbac {
		synced = append(synced, inf.HasSynced)
	}
	synced = append(synced, c.cfg.Pods.HasSynced)
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		c.stopAll()
		return nil // ended before the caches synced: nothing was served
	}
	// The RBAC informers' initial list counted as changes; nothing was
	// cached before it anyway.
	for range workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	ticker := time.NewTicker(min(c.cfg.RecheckInterval, 10*time.Second))
	defer ticker.Stop()
	lastRecheck := time.Now()
	for {
		select {
		case <-ctx.Done():
			c.queue.ShutDown()
			c.stopAll()
			return nil
		case now := <-ticker.C:
			c.stopIdle(now)
			if now.Sub(lastRecheck) >= c.cfg.RecheckInterval {
				lastRecheck = now
				c.forgetDecisions()
				c.recheckAll(0)
			}
		}
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	it, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(it)
	var err error
	if it.node != "" {
		err = c.check(ctx, it.node, it.id)
	} else {
		c.objectChanged(it.gvr, it.key)
	}
	if err != nil {
		c.log.Debug("subscription check failed; retrying", zap.String("node", it.node), zap.String("subscription", it.id), zap.Error(err))
		c.queue.AddRateLimited(it)
		return true
	}
	c.queue.Forget(it)
	return true
}

// Subscribe replaces node's subscriptions with those of its Hello
// (feed.Subscriber), starting a new session's state: what the Hello listed
// as held (Adopt) is kept until every subscription is decided.
func (c *Controller) Subscribe(node string, subs []*edgesyncv1.Subscription) {
	c.setSubscriptions(node, subs, true)
}

// held records what a connecting node holds of this package's kinds; the
// controllers call it from Adopt, before Subscribe.
func (c *Controller) Adopt(node string, held []*edgesyncv1.ObjectRef) {
	ns := &nodeState{subs: map[string]*subscription{}, sent: map[feed.Key]schema.GroupVersionResource{}, heldSubs: map[string]bool{}}
	for _, ref := range held {
		switch ref.GetKind() {
		case edgesyncv1.Kind_KIND_RESOURCE:
			gv, res, _, ok := feed.SplitResourceName(ref.GetName())
			if !ok {
				continue
			}
			parsed, err := schema.ParseGroupVersion(gv)
			if err != nil {
				continue
			}
			ns.sent[feed.Key{Kind: ref.GetKind(), Namespace: ref.GetNamespace(), Name: ref.GetName()}] = parsed.WithResource(res)
		case edgesyncv1.Kind_KIND_SUBSCRIPTION:
			ns.heldSubs[ref.GetName()] = true
		}
	}
	c.mu.Lock()
	old := c.nodes[node]
	c.nodes[node] = ns
	if old != nil {
		for _, s := range old.subs {
			c.releaseLocked(node, s)
		}
	}
	c.mu.Unlock()
}

// HandleReport takes a Subscriptions report (the node's new set) or a
// ResourceWrite (made in the background with the application's token).
func (c *Controller) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	if req.GetResourceWrite() != nil {
		c.handleWrite(node, req, answer)
		return
	}
	subs := req.GetSubscriptions()
	if subs == nil {
		answer(reportqueue.Result(req.GetRequestId(), fmt.Errorf("dynamicsync: %T is not a Subscriptions report", req.GetMessage())))
		return
	}
	c.setSubscriptions(node, subs.GetSubscriptions(), false)
	answer(reportqueue.Result(req.GetRequestId(), nil))
}

// SessionEnded forgets node's subscriptions.
func (c *Controller) SessionEnded(node string) {
	c.log.Debug("session ended", zap.String("node", node))
	c.mu.Lock()
	defer c.mu.Unlock()
	ns := c.nodes[node]
	if ns == nil {
		return
	}
	for _, s := range ns.subs {
		c.releaseLocked(node, s)
	}
	delete(c.nodes, node)
}

// setSubscriptions makes subs node's set. With hello, the set starts a
// session (after Adopt) and nothing is published: Desired returns what
// can be told at once.
func (c *Controller) setSubscriptions(node string, subs []*edgesyncv1.Subscription, hello bool) {
	c.log.Debug("subscriptions", zap.String("node", node), zap.Int("subscriptions", len(subs)), zap.Bool("hello", hello))
	var out []*feed.Object
	var check []string
	c.mu.Lock()
	ns := c.nodes[node]
	if ns == nil {
		// A Hello without Adopt (tests), or a report after the session
		// state was dropped.
		ns = &nodeState{subs: map[string]*subscription{}, sent: map[feed.Key]schema.GroupVersionResource{}, settled: !hello}
		c.nodes[node] = ns
	}
	want := make(map[string]*edgesyncv1.Subscription, len(subs))
	order := make([]string, 0, len(subs))
	for _, s := range subs {
		if _, dup := want[s.GetId()]; dup {
			continue
		}
		want[s.GetId()] = s
		order = append(order, s.GetId())
	}
	// Subscriptions gone, or changed under the same id, end first.
	for id, s := range ns.subs {
		if w, ok := want[id]; ok && proto.Equal(w, s.spec) {
			continue
		}
		c.releaseLocked(node, s)
		delete(ns.subs, id)
		if !hello {
			if obj, err := feed.Tombstone(feed.Key{Kind: edgesyncv1.Kind_KIND_SUBSCRIPTION, Name: id}, ""); err == nil {
				out = append(out, obj)
			}
		}
	}
	if !hello {
		out = append(out, c.uncoveredLocked(ns)...)
	}
	for i, id := range order {
		if _, ok := ns.subs[id]; ok {
			continue
		}
		s := newSubscription(want[id])
		switch {
		case s.phase == ended:
		case i >= c.cfg.MaxSubscriptions:
			s.end(codes.ResourceExhausted, fmt.Sprintf("node %q may hold at most %d subscriptions; end some before adding more", node, c.cfg.MaxSubscriptions))
		}
		ns.subs[id] = s
		if s.phase == ended {
			c.ended.WithLabelValues(s.code.String()).Inc()
			if !hello {
				out = append(out, c.statusLocked(s))
			}
			continue
		}
		check = append(check, id)
	}
	ns.order = order
	if !hello {
		out = append(out, c.settleLocked(node, ns)...)
	}
	c.mu.Unlock()
	c.publish(node, out)
	for _, id := range check {
		c.queue.Add(item{node: node, id: id})
	}
}

// idPattern is the form of a subscription id.
var idPattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// newSubscription parses spec: a malformed one is returned ended with
// INVALID_ARGUMENT.
func newSubscription(spec *edgesyncv1.Subscription) *subscription {
	s := &subscription{spec: spec, gvr: schema.GroupVersionResource{Group: spec.GetGroup(), Version: spec.GetVersion(), Resource: spec.GetResource()}}
	var err error
	switch {
	case !idPattern.MatchString(spec.GetId()):
		err = fmt.Errorf("id %q must be 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit", spec.GetId())
	case spec.GetServiceAccountNamespace() == "" || spec.GetServiceAccountName() == "":
		err = errors.New("service_account_namespace and service_account_name are required")
	case spec.GetVersion() == "" || spec.GetResource() == "":
		err = errors.New("version and resource are required (group is empty for the core group)")
	}
	if err == nil {
		if s.labels, err = labels.Parse(spec.GetLabelSelector()); err != nil {
			err = fmt.Errorf("label_selector: %w", err)
		}
	}
	if err == nil {
		if s.fields, err = fields.ParseSelector(spec.GetFieldSelector()); err != nil {
			err = fmt.Errorf("field_selector: %w", err)
		}
	}
	if err != nil {
		s.end(codes.InvalidArgument, fmt.Sprintf("subscription %q: %v", spec.GetId(), err))
	}
	return s
}

// reviveLocked makes a subscription refused PERMISSION_DENIED pending
// again, to be decided anew: RBAC, or the pods of its node, changed. The
// edge keeps its ENDED state until then (ended again with the same code
// and message, the state's version is the same and is not sent again).
func reviveLocked(s *subscription) {
	if s.phase == ended && s.code == codes.PermissionDenied {
		s.phase = pending
	}
}

func (s *subscription) end(code codes.Code, message string) {
	s.phase, s.code, s.message = ended, code, message
}

// Desired returns what node should hold of this package's kinds that can
// be told without asking the API server: the states of subscriptions
// refused at once. Everything else follows as subscriptions are decided.
func (c *Controller) Desired(node string) ([]*feed.Object, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ns := c.nodes[node]
	if ns == nil {
		return nil, nil
	}
	var out []*feed.Object
	for _, id := range ns.order {
		if s := ns.subs[id]; s != nil && s.phase == ended {
			out = append(out, c.statusLocked(s))
		}
	}
	return out, nil
}

// Tombstone is nil for this package's kinds: what a node held from before
// is kept until its subscriptions are decided (see settleLocked).
func (c *Controller) Tombstone(feed.Key, string) (*feed.Object, error) { return nil, nil }

// check decides one subscription: whether a pod of the node runs as its
// ServiceAccount, whether the resource exists and whether the
// ServiceAccount may list and watch it; an allowed pending subscription
// then becomes active. An error is retried.
func (c *Controller) check(ctx context.Context, node, id string) error {
	c.mu.Lock()
	ns := c.nodes[node]
	var s *subscription
	if ns != nil {
		s = ns.subs[id]
	}
	if s == nil || s.phase == ended {
		c.mu.Unlock()
		return nil
	}
	spec, wasActive := s.spec, s.phase == active
	c.mu.Unlock()

	saNs, saName := spec.GetServiceAccountNamespace(), spec.GetServiceAccountName()
	if !c.serviceAccountOnNode(node, saNs, saName) {
		c.endSubscription(node, s, codes.PermissionDenied, fmt.Sprintf(
			"no pod bound to node %q runs as ServiceAccount %s/%s; a node subscribes only for ServiceAccounts its pods run as", node, saNs, saName))
		return nil
	}
	api, err := c.resourceInfo(s.gvr)
	if err != nil {
		if wasActive {
			return nil // keep serving; the next check tries again
		}
		return err
	}
	switch {
	case api == nil:
		c.endSubscription(node, s, codes.InvalidArgument, fmt.Sprintf("the API server serves no resource %q in %s", s.gvr.Resource, s.gvr.GroupVersion()))
		return nil
	case !hasVerbs(api.Verbs, "list", "watch"):
		c.endSubscription(node, s, codes.InvalidArgument, fmt.Sprintf("resource %s cannot be listed and watched", describe(s.gvr)))
		return nil
	case !api.Namespaced && spec.GetNamespace() != "":
		c.endSubscription(node, s, codes.InvalidArgument, fmt.Sprintf("resource %s is cluster-scoped: leave namespace empty", describe(s.gvr)))
		return nil
	}
	d, err := c.authorize(ctx, spec, s.gvr)
	if err != nil {
		if wasActive {
			return nil
		}
		return err
	}
	if !d.allowed {
		where := "in namespace " + spec.GetNamespace()
		if spec.GetNamespace() == "" {
			where = "in all namespaces"
		}
		msg := fmt.Sprintf("ServiceAccount %s/%s may not list and watch %s %s", saNs, saName, describe(s.gvr), where)
		if d.reason != "" {
			msg += " (" + d.reason + ")"
		}
		c.endSubscription(node, s, codes.PermissionDenied, msg)
		return nil
	}
	if wasActive {
		return nil
	}
	if err := c.serverMayWatch(ctx, s.gvr); err != nil {
		var refused *feed.Error
		if errors.As(err, &refused) {
			c.endSubscription(node, s, refused.Kind.Code(), refused.Message)
			return nil
		}
		return err
	}
	c.mu.Lock()
	s.kind, s.namespaced = api.Kind, api.Namespaced
	c.mu.Unlock()
	return c.activate(ctx, node, s)
}

// serverMayWatch checks, before a resource's informer starts, that the
// server itself may list it: its ClusterRole names the resources edge
// applications may read (deploy/rbac), and a resource it does not name
// ends the subscription at once with a message saying so, rather than an
// informer that never syncs.
func (c *Controller) serverMayWatch(ctx context.Context, gvr schema.GroupVersionResource) error {
	c.mu.Lock()
	_, running := c.resources[gvr]
	c.mu.Unlock()
	if running {
		return nil
	}
	_, err := c.cfg.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
	switch {
	case err == nil:
		return nil
	case apierrors.IsForbidden(err):
		return feed.Errorf(feed.ErrPermissionDenied,
			"the edgesync server may not list and watch %s: an administrator grants it in the ClusterRole edgesync-server-subscriptions (deploy/rbac)", describe(gvr))
	case apierrors.IsNotFound(err):
		return feed.Errorf(feed.ErrInvalid, "the API server serves no resource %s", describe(gvr))
	}
	return fmt.Errorf("list %s: %w", describe(gvr), err)
}

// activate starts serving an allowed subscription: its resource's
// informer (shared), every object it covers, then its ACTIVE state.
func (c *Controller) activate(ctx context.Context, node string, s *subscription) error {
	c.mu.Lock()
	if c.nodes[node] == nil || c.nodes[node].subs[s.spec.GetId()] != s || s.phase != pending {
		c.mu.Unlock()
		return nil
	}
	res, err := c.acquireLocked(s)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	wait, cancel := context.WithTimeout(ctx, c.cfg.SyncTimeout)
	synced := cache.WaitForCacheSync(wait.Done(), res.inf.HasSynced)
	cancel()

	var out []*feed.Object
	c.mu.Lock()
	ns := c.nodes[node]
	switch {
	case ns == nil || ns.subs[s.spec.GetId()] != s || s.phase != pending:
		c.mu.Unlock()
		return nil // replaced or ended meanwhile (which released it)
	case !synced:
		c.mu.Unlock()
		c.endSubscription(node, s, codes.Unavailable, fmt.Sprintf("the server could not list %s within %s; subscribe again later", describe(s.gvr), c.cfg.SyncTimeout))
		return nil
	}
	var objs []*unstructured.Unstructured
	fresh := 0
	for _, o := range res.inf.GetStore().List() {
		u, ok := o.(*unstructured.Unstructured)
		if !ok || !s.matches(u) {
			continue
		}
		objs = append(objs, u)
		if _, held := ns.sent[keyOf(s.gvr, u)]; !held {
			fresh++
		}
	}
	if len(ns.sent)+fresh > c.cfg.MaxObjects {
		c.mu.Unlock()
		c.endSubscription(node, s, codes.ResourceExhausted, fmt.Sprintf(
			"subscription %q covers %d objects; with what node %q holds that is beyond its limit of %d objects: narrow it with a namespace or selectors",
			s.spec.GetId(), len(objs), node, c.cfg.MaxObjects))
		return nil
	}
	sort.Slice(objs, func(i, j int) bool {
		return objs[i].GetNamespace() < objs[j].GetNamespace() ||
			objs[i].GetNamespace() == objs[j].GetNamespace() && objs[i].GetName() < objs[j].GetName()
	})
	for _, u := range objs {
		obj, err := c.encode(res, u)
		if err != nil {
			c.log.Warn("cannot encode object", zap.String("resource", describe(s.gvr)), zap.String("namespace", u.GetNamespace()), zap.String("name", u.GetName()), zap.Error(err))
			continue
		}
		ns.sent[obj.Key] = s.gvr
		out = append(out, obj)
	}
	s.phase = active
	res.nodes[node] = struct{}{}
	out = append(out, c.statusLocked(s))
	out = append(out, c.settleLocked(node, ns)...)
	c.mu.Unlock()
	c.publish(node, out)
	return nil
}

// endSubscription ends s with code and message: its state is published
// after DELETE events for the objects only it covered.
func (c *Controller) endSubscription(node string, s *subscription, code codes.Code, message string) {
	c.mu.Lock()
	ns := c.nodes[node]
	if ns == nil || ns.subs[s.spec.GetId()] != s || s.phase == ended {
		c.mu.Unlock()
		return
	}
	c.releaseLocked(node, s)
	if s.code != code || s.message != message { // not a revived one refused again
		c.ended.WithLabelValues(code.String()).Inc()
	}
	s.end(code, message)
	out := c.uncoveredLocked(ns)
	out = append(out, c.statusLocked(s))
	out = append(out, c.settleLocked(node, ns)...)
	c.mu.Unlock()
	c.log.Info("subscription ended", zap.String("node", node), zap.String("subscription", s.spec.GetId()),
		zap.String("code", code.String()), zap.String("reason", message))
	c.publish(node, out)
}

// uncoveredLocked drops from ns.sent, and returns DELETE events for, the
// objects no active subscription of the node covers any more. Until the
// node's subscriptions are settled, objects of pending subscriptions'
// resources are kept.
func (c *Controller) uncoveredLocked(ns *nodeState) []*feed.Object {
	var out []*feed.Object
	for key, gvr := range ns.sent {
		if !ns.settled && ns.pendingFor(gvr) {
			continue
		}
		if c.coveredLocked(ns, key, gvr) {
			continue
		}
		delete(ns.sent, key)
		if obj, err := feed.Tombstone(key, ""); err == nil {
			out = append(out, obj)
		}
	}
	return out
}

func (ns *nodeState) pendingFor(gvr schema.GroupVersionResource) bool {
	for _, s := range ns.subs {
		if s.phase == pending && s.gvr == gvr {
			return true
		}
	}
	return false
}

// coveredLocked reports whether an active subscription of the node covers
// the object under key (as its resource's informer holds it).
func (c *Controller) coveredLocked(ns *nodeState, key feed.Key, gvr schema.GroupVersionResource) bool {
	res := c.resources[gvr]
	if res == nil {
		return false
	}
	_, _, name, _ := feed.SplitResourceName(key.Name)
	storeKey := name
	if key.Namespace != "" {
		storeKey = key.Namespace + "/" + name
	}
	o, exists, err := res.inf.GetStore().GetByKey(storeKey)
	if err != nil || !exists {
		return false
	}
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return false
	}
	for _, s := range ns.subs {
		if s.phase == active && s.gvr == gvr && s.matches(u) {
			return true
		}
	}
	return false
}

// settleLocked reconciles, once every subscription of the Hello is
// decided, what the node held from before with what it should hold:
// DELETE for objects and subscription states nothing covers any more.
func (c *Controller) settleLocked(_ string, ns *nodeState) []*feed.Object {
	if ns.settled {
		return nil
	}
	for _, s := range ns.subs {
		if s.phase == pending {
			return nil
		}
	}
	ns.settled = true
	out := c.uncoveredLocked(ns)
	for id := range ns.heldSubs {
		if _, ok := ns.subs[id]; ok {
			continue
		}
		if obj, err := feed.Tombstone(feed.Key{Kind: edgesyncv1.Kind_KIND_SUBSCRIPTION, Name: id}, ""); err == nil {
			out = append(out, obj)
		}
	}
	ns.heldSubs = nil
	return out
}

// statusLocked encodes s's state as its SubscriptionEvent.
func (c *Controller) statusLocked(s *subscription) *feed.Object {
	state := edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ACTIVE
	code, message := codes.OK, "serving "+describe(s.gvr)
	if s.phase == ended {
		state, code, message = edgesyncv1.SubscriptionState_SUBSCRIPTION_STATE_ENDED, s.code, s.message
	}
	spec, _ := proto.MarshalOptions{Deterministic: true}.Marshal(s.spec)
	sum := sha256.New()
	sum.Write(spec)
	fmt.Fprintf(sum, "\x00%d\x00%d\x00%s\x00%s\x00%v", state, code, message, s.kind, s.namespaced)
	version := hex.EncodeToString(sum.Sum(nil)[:8])
	id := s.spec.GetId()
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_SUBSCRIPTION, Name: id}
	obj, err := feed.Encode(key, "", version, false, &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_SubscriptionEvent{SubscriptionEvent: &edgesyncv1.SubscriptionEvent{
		Type:         edgesyncv1.EventType_EVENT_TYPE_APPLY,
		Metadata:     &metav1pb.ObjectMeta{Name: proto.String(id), ResourceVersion: proto.String(version)},
		Subscription: s.spec,
		State:        state,
		Code:         int32(code),
		Message:      message,
		Kind:         s.kind,
		Namespaced:   s.namespaced,
	}}})
	if err != nil {
		// Encoding a message built here does not fail; a tombstone keeps
		// the edge from waiting on a state it will never get.
		obj, _ = feed.Tombstone(key, "")
	}
	return obj
}

// matches reports whether the subscription covers u.
func (s *subscription) matches(u *unstructured.Unstructured) bool {
	if ns := s.spec.GetNamespace(); ns != "" && u.GetNamespace() != ns {
		return false
	}
	if !s.labels.Empty() && !s.labels.Matches(labels.Set(u.GetLabels())) {
		return false
	}
	if s.fields.Empty() {
		return true
	}
	set := fields.Set{}
	for _, r := range s.fields.Requirements() {
		set[r.Field] = fieldValue(u, r.Field)
	}
	return s.fields.Matches(set)
}

// fieldValue is the value at a dotted field path of u, as a string ("" when
// absent or not a scalar).
func fieldValue(u *unstructured.Unstructured, path string) string {
	var parts []string
	start := 0
	for i := 0; i <= len(path); i++ {
		if i == len(path) || path[i] == '.' {
			parts = append(parts, path[start:i])
			start = i + 1
		}
	}
	v, found, err := unstructured.NestedFieldNoCopy(u.Object, parts...)
	if err != nil || !found {
		return ""
	}
	switch v := v.(type) {
	case string:
		return v
	case bool, int64, float64:
		return fmt.Sprint(v)
	}
	return ""
}

// serviceAccountOnNode reports whether a pod bound to node, not finished,
// runs as the ServiceAccount.
func (c *Controller) serviceAccountOnNode(node, namespace, name string) bool {
	pods, err := c.cfg.Pods.GetIndexer().ByIndex(c.cfg.NodeIndex, node)
	if err != nil {
		return false
	}
	for _, o := range pods {
		p, ok := o.(*corev1.Pod)
		if !ok || p.Namespace != namespace {
			continue
		}
		sa := p.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		if sa == name && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return true
		}
	}
	return false
}

// resourceInfo returns the API server's description of gvr, nil when it
// serves no such resource; discovery answers are cached, and asked again
// when a resource is not found.
func (c *Controller) resourceInfo(gvr schema.GroupVersionResource) (*metav1.APIResource, error) {
	gv := gvr.GroupVersion()
	c.mu.Lock()
	known := c.apis[gv]
	c.mu.Unlock()
	if r, ok := known[gvr.Resource]; ok {
		return &r, nil
	}
	list, err := c.cfg.Client.Discovery().ServerResourcesForGroupVersion(gv.String())
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("discover %s: %w", gv, err)
	}
	byName := make(map[string]metav1.APIResource, len(list.APIResources))
	for _, r := range list.APIResources {
		byName[r.Name] = r
	}
	c.mu.Lock()
	c.apis[gv] = byName
	c.mu.Unlock()
	if r, ok := byName[gvr.Resource]; ok {
		return &r, nil
	}
	return nil, nil
}

func hasVerbs(have metav1.Verbs, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// authorize asks (or recalls) whether spec's ServiceAccount may list and
// watch gvr in spec's namespace.
func (c *Controller) authorize(ctx context.Context, spec *edgesyncv1.Subscription, gvr schema.GroupVersionResource) (decision, error) {
	key := sarKey{spec.GetServiceAccountNamespace(), spec.GetServiceAccountName(), gvr.Group, gvr.Resource, spec.GetNamespace()}
	c.mu.Lock()
	d, ok := c.decisions[key]
	gen := c.rbacGen
	c.mu.Unlock()
	if ok {
		return d, nil
	}
	d = decision{allowed: true}
	user := "system:serviceaccount:" + key.saNamespace + ":" + key.saName
	for _, verb := range []string{"list", "watch"} {
		review, err := c.cfg.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:   user,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + key.saNamespace, "system:authenticated"},
				ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: key.namespace, Verb: verb, Group: gvr.Group, Version: gvr.Version, Resource: gvr.Resource,
				},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return decision{}, fmt.Errorf("SubjectAccessReview for %s: %w", user, err)
		}
		if !review.Status.Allowed || review.Status.Denied {
			d = decision{reason: review.Status.Reason}
			if d.reason == "" {
				d.reason = "no RBAC rule allows " + verb
			}
			break
		}
	}
	c.mu.Lock()
	if c.rbacGen == gen {
		c.decisions[key] = d
	}
	c.mu.Unlock()
	return d, nil
}

// rbacChanged drops every cached decision and checks every subscription
// again, now and once the API server's authorizer has surely caught up.
func (c *Controller) rbacChanged() {
	c.forgetDecisions()
	c.recheckAll(0)
	c.recheckAll(rbacSettle)
}

func (c *Controller) forgetDecisions() {
	c.mu.Lock()
	c.rbacGen++
	clear(c.decisions)
	c.mu.Unlock()
}

func (c *Controller) recheckAll(after time.Duration) {
	c.mu.Lock()
	var items []item
	for node, ns := range c.nodes {
		for id, s := range ns.subs {
			reviveLocked(s)
			if s.phase != ended {
				items = append(items, item{node: node, id: id})
			}
		}
	}
	c.mu.Unlock()
	for _, it := range items {
		if after > 0 {
			c.queue.AddAfter(it, after)
		} else {
			c.queue.Add(it)
		}
	}
}

// podChanged checks again the subscriptions of the pod's node for its
// namespace's ServiceAccounts.
func (c *Controller) podChanged(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" {
		return
	}
	c.mu.Lock()
	var items []item
	if ns := c.nodes[p.Spec.NodeName]; ns != nil {
		for id, s := range ns.subs {
			if s.spec.GetServiceAccountNamespace() != p.Namespace {
				continue
			}
			if reviveLocked(s); s.phase != ended {
				items = append(items, item{node: p.Spec.NodeName, id: id})
			}
		}
	}
	c.mu.Unlock()
	for _, it := range items {
		c.queue.Add(it)
	}
}

// acquireLocked takes a reference on s's resource, starting its informer
// when none runs.
func (c *Controller) acquireLocked(s *subscription) (*resource, error) {
	if s.res != nil {
		return s.res, nil
	}
	if c.ctx == nil || c.ctx.Err() != nil {
		return nil, errors.New("dynamicsync is not running")
	}
	res := c.resources[s.gvr]
	if res == nil {
		inf := dynamicinformer.NewFilteredDynamicInformer(c.cfg.Dynamic, s.gvr, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer()
		if err := inf.SetTransform(dropManagedFields); err != nil {
			return nil, err
		}
		gvr := s.gvr
		enqueue := func(obj any) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				c.queue.Add(item{gvr: gvr, key: key})
			}
		}
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    enqueue,
			UpdateFunc: func(_, obj any) { enqueue(obj) },
			DeleteFunc: enqueue,
		}); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithCancel(c.ctx)
		res = &resource{gvr: gvr, inf: inf, cancel: cancel, nodes: map[string]struct{}{}, encoding: encodecache.New()}
		c.resources[gvr] = res
		c.informersRunning.Inc()
		c.wg.Go(func() { inf.Run(ctx.Done()) })
		c.log.Info("watching resource for edges", zap.String("resource", describe(gvr)))
	}
	res.refs++
	s.res = res
	return res, nil
}

// releaseLocked drops s's reference on its resource.
func (c *Controller) releaseLocked(node string, s *subscription) {
	res := s.res
	if res == nil {
		return
	}
	s.res = nil
	res.refs--
	if s.phase == active {
		still := false
		if ns := c.nodes[node]; ns != nil {
			for _, o := range ns.subs {
				if o != s && o.phase == active && o.res == res {
					still = true
				}
			}
		}
		if !still {
			delete(res.nodes, node)
		}
	}
	if res.refs == 0 {
		res.idle = time.Now()
		if c.cfg.IdleTimeout < 0 {
			c.stopLocked(res)
		}
	}
}

func (c *Controller) stopLocked(res *resource) {
	res.cancel()
	delete(c.resources, res.gvr)
	c.informersRunning.Dec()
	c.log.Info("stopped watching resource: no edge subscribes to it", zap.String("resource", describe(res.gvr)))
}

// stopIdle stops the informers unused for IdleTimeout.
func (c *Controller) stopIdle(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, res := range c.resources {
		if res.refs == 0 && now.Sub(res.idle) >= c.cfg.IdleTimeout {
			c.stopLocked(res)
		}
	}
}

func (c *Controller) stopAll() {
	c.mu.Lock()
	for _, res := range c.resources {
		c.stopLocked(res)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// Informers returns the resources watched now, for tests and operators.
func (c *Controller) Informers() []schema.GroupVersionResource {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]schema.GroupVersionResource, 0, len(c.resources))
	for gvr := range c.resources {
		out = append(out, gvr)
	}
	return out
}

// objectChanged publishes one object's new version (or its deletion) to
// every node whose subscriptions cover it, and DELETE to those whose
// subscriptions stopped covering it.
func (c *Controller) objectChanged(gvr schema.GroupVersionResource, storeKey string) {
	c.mu.Lock()
	res := c.resources[gvr]
	if res == nil {
		c.mu.Unlock()
		return
	}
	namespace, name, err := cache.SplitMetaNamespaceKey(storeKey)
	if err != nil {
		c.mu.Unlock()
		return
	}
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_RESOURCE, Namespace: namespace, Name: feed.ResourceName(gvr.Group, gvr.Version, gvr.Resource, name)}
	o, exists, _ := res.inf.GetStore().GetByKey(storeKey)
	u, _ := o.(*unstructured.Unstructured)
	var (
		enc      *feed.Object
		gone     *feed.Object
		sends    = map[string]*feed.Object{}
		overflow []struct {
			node string
			sub  *subscription
		}
	)
	for node := range res.nodes {
		ns := c.nodes[node]
		if ns == nil {
			continue
		}
		var cover *subscription
		if exists && u != nil {
			for _, s := range ns.subs {
				if s.phase == active && s.gvr == gvr && s.matches(u) {
					cover = s
					break
				}
			}
		}
		_, held := ns.sent[key]
		switch {
		case cover != nil:
			if !held && len(ns.sent) >= c.cfg.MaxObjects {
				overflow = append(overflow, struct {
					node string
					sub  *subscription
				}{node, cover})
				continue
			}
			if enc == nil {
				if enc, err = c.encode(res, u); err != nil {
					c.log.Warn("cannot encode object", zap.String("resource", describe(gvr)), zap.String("key", storeKey), zap.Error(err))
					c.mu.Unlock()
					return
				}
			}
			ns.sent[key] = gvr
			sends[node] = enc
		case held:
			if gone == nil {
				if gone, err = feed.Tombstone(key, ""); err != nil {
					continue
				}
			}
			delete(ns.sent, key)
			sends[node] = gone
		}
	}
	if !exists {
		res.encoding.Forget(key)
	}
	pub := c.pub
	c.mu.Unlock()
	for node, obj := range sends {
		if pub != nil {
			pub.Publish(node, obj)
		}
	}
	for _, o := range overflow {
		c.endSubscription(o.node, o.sub, codes.ResourceExhausted, fmt.Sprintf(
			"node %q holds its limit of %d objects; subscription %q would hold more: narrow it with a namespace or selectors",
			o.node, c.cfg.MaxObjects, o.sub.spec.GetId()))
	}
}

// encode returns the one encoding of u's version.
func (c *Controller) encode(res *resource, u *unstructured.Unstructured) (*feed.Object, error) {
	gvr := res.gvr
	key := keyOf(gvr, u)
	return res.encoding.Get(key, string(u.GetUID()), u.GetResourceVersion(), func() (*feed.Object, error) {
		data, err := json.Marshal(u.Object)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", key, err)
		}
		c.encodes.WithLabelValues(gvr.GroupResource().String()).Inc()
		meta := &metav1pb.ObjectMeta{
			Name: proto.String(u.GetName()), Uid: proto.String(string(u.GetUID())), ResourceVersion: proto.String(u.GetResourceVersion()),
		}
		if u.GetNamespace() != "" {
			meta.Namespace = proto.String(u.GetNamespace())
		}
		return feed.Encode(key, string(u.GetUID()), u.GetResourceVersion(), false, &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_ResourceEvent{ResourceEvent: &edgesyncv1.ResourceEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Metadata: meta, Group: gvr.Group, Version: gvr.Version, Resource: gvr.Resource, Object: data,
		}}})
	})
}

func keyOf(gvr schema.GroupVersionResource, u *unstructured.Unstructured) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_RESOURCE, Namespace: u.GetNamespace(), Name: feed.ResourceName(gvr.Group, gvr.Version, gvr.Resource, u.GetName())}
}

// publish sends objs to node in order. Nothing is published before Run
// (no node can be connected then: the server admits nodes once the
// controllers' caches synced).
func (c *Controller) publish(node string, objs []*feed.Object) {
	c.mu.Lock()
	pub := c.pub
	c.mu.Unlock()
	if pub == nil {
		return
	}
	for _, o := range objs {
		if o != nil {
			pub.Publish(node, o)
		}
	}
}

func describe(gvr schema.GroupVersionResource) string {
	if gvr.Group == "" {
		return gvr.Resource + " (" + gvr.Version + ")"
	}
	return gvr.Resource + "." + gvr.Group + " (" + gvr.Version + ")"
}

func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
