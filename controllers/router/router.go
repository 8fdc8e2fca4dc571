// Package router rebuilds KubeEdge's router: Rules and RuleEndpoints
// (rules.kubeedge.io/v1) route application messages between the cloud and
// applications on edge nodes.
//
//   - rest -> eventbus: an HTTP call to the REST port (Handler) is
//     published on an MQTT topic of an edge node;
//   - rest -> servicebus: an HTTP call is sent to an HTTP application on an
//     edge node, and its answer goes back to the caller;
//   - eventbus -> rest: what an edge application publishes on a rule's
//     topic is POSTed to a URL in the cloud.
//
// The Router owns the Kubernetes side (informers of Rules and
// RuleEndpoints, the Rules' status counters, authentication and
// authorization of callers) and each node's ordered buffer of deliveries;
// the sync server only carries its messages (feed.Messenger,
// feed.RouteResulter; sync.proto "Routed messages"). Deliveries are not
// latest-wins: a node's are sent in the order accepted, at most Window
// unanswered, sent again on the node's next stream until answered (the
// edge drops duplicates by id), dropped when their time to live runs out;
// while the node is offline they wait in a buffer of at most NodeBuffer
// messages, and a call that finds it full is refused (503, Retry-After)
// rather than dropping what was accepted. With several replicas, the
// replica holding the node's session (its ownership record) keeps its
// buffer, and a call reaching another replica is forwarded there.
package router

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Defaults of Options.
const (
	DefaultMessageTTL     = 5 * time.Minute
	DefaultNodeBuffer     = 1000
	DefaultNodeBytes      = 16 << 20
	DefaultWindow         = 64
	DefaultDeliveryWait   = 5 * time.Second
	DefaultRequestTimeout = 60 * time.Second // KubeEdge's restTimeout
	DefaultMaxBodyBytes   = 12 << 20         // KubeEdge's router limit
	DefaultTargetRetries  = 3
	DefaultTargetTimeout  = 10 * time.Second
	DefaultStatusInterval = time.Second
	// DefaultPort is KubeEdge's router port.
	DefaultPort = 9443
	// maxErrors is how many errors a Rule's status keeps.
	maxErrors = 10
	// maxRequests bounds a node's unanswered servicebus requests.
	maxRequests = 256
)

// Options are the router's settings; zero values take the defaults.
type Options struct {
	// MessageTTL is how long a delivery may wait for its node.
	MessageTTL time.Duration
	// NodeBuffer and NodeBytes bound the deliveries waiting for (or
	// unanswered by) one node.
	NodeBuffer int
	NodeBytes  int
	// Window is how many deliveries a node may leave unanswered.
	Window int
	// DeliveryWait is how long a rest -> eventbus call waits for the edge
	// to publish before it is answered 202 Accepted (queued).
	DeliveryWait time.Duration
	// RequestTimeout is how long a rest -> servicebus call waits for the
	// edge application's answer (then 504).
	RequestTimeout time.Duration
	// MaxBodyBytes bounds a call's body (413 beyond).
	MaxBodyBytes int64
	// TargetRetries and TargetTimeout bound the POSTs to a rest target.
	TargetRetries int
	TargetTimeout time.Duration
	// StatusInterval is how often Rules' counters are written.
	StatusInterval time.Duration
	// PeerTLS is the client TLS configuration for forwarding calls to the
	// replica that holds a node (its REST port); nil forwards nothing.
	PeerTLS *tls.Config
}

func (o *Options) defaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MessageTTL, DefaultMessageTTL)
	def(&o.DeliveryWait, DefaultDeliveryWait)
	def(&o.RequestTimeout, DefaultRequestTimeout)
	def(&o.TargetTimeout, DefaultTargetTimeout)
	def(&o.StatusInterval, DefaultStatusInterval)
	defInt(&o.NodeBuffer, DefaultNodeBuffer)
	defInt(&o.NodeBytes, DefaultNodeBytes)
	defInt(&o.Window, DefaultWindow)
	defInt(&o.TargetRetries, DefaultTargetRetries)
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxBodyBytes
	}
}

// Owners says which replica holds each node, and where its REST port is
// (the ownership records); nil with one replica.
type Owners interface {
	Owner(node string) (replica string, ok bool)
	RouterAddress(replica string) (string, bool)
}

// Config configures a Router.
type Config struct {
	Options
	// Dynamic writes the Rules' status.
	Dynamic dynamic.Interface
	// Client creates TokenReviews and SubjectAccessReviews.
	Client kubernetes.Interface
	// Rules and Endpoints are informers of Rules and RuleEndpoints.
	Rules, Endpoints cache.SharedIndexInformer
	// Messenger carries deliveries to the nodes' sessions.
	Messenger feed.Messenger
	// Owners and Replica: with several replicas, who holds each node and
	// this replica's name.
	Owners  Owners
	Replica string
	// HTTPClient POSTs to rest targets; default a client with
	// TargetTimeout.
	HTTPClient *http.Client
	Registerer prometheus.Registerer
	Logger     *zap.Logger
}

// Router routes the messages of Rules. Its methods may be called
// concurrently.
type Router struct {
	cfg     Config
	log     *zap.Logger
	metrics *metrics
	auth    *authCache
	client  *http.Client
	peers   *http.Client // nil: no forwarding

	ix      atomic.Pointer[index]
	rebuild chan struct{} // capacity 1: rules changed

	mu     sync.RWMutex // guards queues (the map; each queue has its own lock)
	queues map[string]*lockedQueue

	statusMu sync.Mutex // guards counts
	counts   map[ruleKey]*counter

	subsMu sync.Mutex          // guards subs
	subs   map[string][]string // topics last sent to each connected node

	up   chan upJob // upward messages for the workers
	seen *seenIDs   // upward ids already delivered
}

type lockedQueue struct {
	mu sync.Mutex
	nodeQueue
}

type counter struct {
	success, fail int64
	errors        []string
}

// New builds a Router; nothing runs before Run.
func New(cfg Config) (*Router, error) {
	if cfg.Dynamic == nil || cfg.Client == nil || cfg.Rules == nil || cfg.Endpoints == nil || cfg.Messenger == nil {
		return nil, errors.New("router: Dynamic, Client, Rules, Endpoints and Messenger are required")
	}
	cfg.defaults()
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	r := &Router{
		cfg:     cfg,
		log:     cfg.Logger,
		client:  cfg.HTTPClient,
		rebuild: make(chan struct{}, 1),
		queues:  map[string]*lockedQueue{},
		counts:  map[ruleKey]*counter{},
		subs:    map[string][]string{},
		up:      make(chan upJob, 1024),
		seen:    newSeenIDs(1 << 16),
	}
	if r.client == nil {
		r.client = &http.Client{Timeout: cfg.TargetTimeout}
	}
	if cfg.PeerTLS != nil {
		r.peers = &http.Client{Transport: &http.Transport{TLSClientConfig: cfg.PeerTLS, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 16}}
	}
	var err error
	if r.metrics, err = newMetrics(cfg.Registerer, r); err != nil {
		return nil, err
	}
	r.auth = newAuthCache(cfg.Client)
	r.ix.Store(buildIndex(nil))
	changed := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { r.changed() },
		UpdateFunc: func(o, n any) { r.changedSpec(o, n) },
		DeleteFunc: func(any) { r.changed() },
	}
	if _, err := cfg.Rules.AddEventHandler(changed); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	if _, err := cfg.Endpoints.AddEventHandler(changed); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	return r, nil
}

func (r *Router) changed() {
	select {
	case r.rebuild <- struct{}{}:
	default:
	}
}

// changedSpec ignores updates that changed only a Rule's status (the
// router's own counters).
func (r *Router) changedSpec(o, n any) {
	ou, ok1 := o.(*unstructured.Unstructured)
	nu, ok2 := n.(*unstructured.Unstructured)
	if ok1 && ok2 && ou.GetGeneration() == nu.GetGeneration() && ou.GetGeneration() != 0 {
		os, _, _ := unstructured.NestedMap(ou.Object, "spec")
		ns, _, _ := unstructured.NestedMap(nu.Object, "spec")
		if fmt.Sprint(os) == fmt.Sprint(ns) {
			return
		}
	}
	r.changed()
}

// Run rebuilds the rule index on changes, writes status, expires
// messages and POSTs upward messages, until ctx ends. Call it once the
// informers run.
func (r *Router) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for range 16 {
		wg.Go(func() { r.upWorker(ctx) })
	}
	wg.Go(func() { r.statusLoop(ctx) })
	if !cache.WaitForCacheSync(ctx.Done(), r.cfg.Rules.HasSynced, r.cfg.Endpoints.HasSynced) {
		return
	}
	r.reindex()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.shutdown()
			return
		case <-r.rebuild:
			r.reindex()
		case now := <-tick.C:
			r.sweep(now)
		}
	}
}

// reindex rebuilds the index from the caches and sends every connected
// node whose topics changed its new subscriptions.
func (r *Router) reindex() {
	eps := map[string]map[string]endpoint{}
	for _, obj := range r.cfg.Endpoints.GetStore().List() {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		if eps[u.GetNamespace()] == nil {
			eps[u.GetNamespace()] = map[string]endpoint{}
		}
		eps[u.GetNamespace()][u.GetName()] = parseEndpoint(u)
	}
	var rules []*rule
	for _, obj := range r.cfg.Rules.GetStore().List() {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			rules = append(rules, resolve(u, eps[u.GetNamespace()]))
		}
	}
	ix := buildIndex(rules)
	r.ix.Store(ix)
	r.mu.RLock()
	var connected []string
	for node, q := range r.queues {
		q.mu.Lock()
		if q.connected {
			connected = append(connected, node)
		}
		q.mu.Unlock()
	}
	r.mu.RUnlock()
	for _, node := range connected {
		r.sendSubscriptions(node, false)
	}
}

// sendSubscriptions sends node its topics when they changed (or always).
func (r *Router) sendSubscriptions(node string, always bool) {
	topics := r.ix.Load().topicsOf(node)
	r.subsMu.Lock()
	old, had := r.subs[node]
	same := had && fmt.Sprint(old) == fmt.Sprint(topics)
	if !always && same {
		r.subsMu.Unlock()
		return
	}
	r.subs[node] = topics
	r.subsMu.Unlock()
	if !had && len(topics) == 0 && !always {
		return
	}
	msg := &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_RouteSubscriptions{RouteSubscriptions: &edgesyncv1.RouteSubscriptions{Topics: topics}}}
	if err := r.cfg.Messenger.SendMessage(node, msg); err != nil {
		r.log.Debug("subscriptions not sent", zap.String("node", node), zap.Error(err))
	}
}

// newID returns a random message id.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// queue returns node's queue, creating it when create is set.
func (r *Router) queue(node string, create bool) *lockedQueue {
	r.mu.RLock()
	q := r.queues[node]
	r.mu.RUnlock()
	if q != nil || !create {
		return q
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if q = r.queues[node]; q == nil {
		q = &lockedQueue{nodeQueue: nodeQueue{node: node, idleSince: time.Now(), requests: map[string]*message{}}}
		r.queues[node] = q
	}
	return q
}

// SessionStarted tells that node's session here is ready for deliveries
// (its ownership claimed): what it left unanswered on an earlier stream is
// sent again, in order, and its subscriptions are sent.
func (r *Router) SessionStarted(node string) {
	q := r.queue(node, true)
	q.mu.Lock()
	q.connected = true
	q.requeue()
	q.mu.Unlock()
	r.sendSubscriptions(node, true)
	r.pump(q)
}

// SessionEnded tells that node has no session here any more: its
// unanswered deliveries wait for the next stream, its servicebus requests
// fail.
func (r *Router) SessionEnded(node string) {
	q := r.queue(node, false)
	if q == nil {
		return
	}
	q.mu.Lock()
	q.connected = false
	q.idleSince = time.Now()
	q.requeue()
	reqs := q.requests
	q.requests = map[string]*message{}
	q.mu.Unlock()
	for _, m := range reqs {
		m.finish(outcome{err: fmt.Errorf("node %q disconnected before it answered: %w", node, ErrOffline)})
	}
	r.subsMu.Lock()
	delete(r.subs, node)
	r.subsMu.Unlock()
}

// pump sends what the window has room for. The queue's lock is held while
// sending (SendMessage only queues), so that deliveries leave in order.
func (r *Router) pump(q *lockedQueue) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.connected {
		return
	}
	send, expired := q.next(r.cfg.Window, time.Now())
	for _, m := range expired {
		r.fail(m, ErrExpired)
	}
	for i, m := range send {
		err := r.cfg.Messenger.SendMessage(q.node, &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_RouteDelivery{RouteDelivery: m.d}})
		if err != nil {
			// The session is ending: these wait for the next one.
			q.connected = false
			q.inflight = q.inflight[:len(q.inflight)-len(send)+i]
			q.pending = append(append([]*message(nil), send[i:]...), q.pending...)
			return
		}
	}
}

// fail records a delivery that will not be delivered.
func (r *Router) fail(m *message, err error) {
	r.metrics.dropped(err)
	r.count(m.rule, false, fmt.Sprintf("message %s: %v", m.d.GetId(), err))
	m.finish(outcome{err: err})
}

// RouteResult takes the edge's answer to a delivery (feed.RouteResulter).
// An answer for an id that node was not sent is ignored.
func (r *Router) RouteResult(node string, res *edgesyncv1.RouteResult) {
	q := r.queue(node, false)
	if q == nil {
		r.metrics.unexpected.Inc()
		return
	}
	q.mu.Lock()
	m := q.answered(res.GetId())
	if m == nil {
		if m = q.requests[res.GetId()]; m != nil {
			delete(q.requests, res.GetId())
		}
	}
	q.mu.Unlock()
	if m == nil {
		r.metrics.unexpected.Inc()
		return
	}
	if res.GetError() != "" {
		r.metrics.downward.WithLabelValues("failed").Inc()
		r.count(m.rule, false, fmt.Sprintf("message %s to node %s: %s", res.GetId(), node, res.GetError()))
	} else {
		r.metrics.downward.WithLabelValues("delivered").Inc()
		r.metrics.latency.Observe(time.Since(m.queued).Seconds())
		r.count(m.rule, true, "")
	}
	m.finish(outcome{res: res})
	r.pump(q)
}

// sweep expires messages and forgets idle queues and those of nodes that
// moved to another replica.
func (r *Router) sweep(now time.Time) {
	r.mu.RLock()
	qs := make([]*lockedQueue, 0, len(r.queues))
	for _, q := range r.queues {
		qs = append(qs, q)
	}
	r.mu.RUnlock()
	for _, q := range qs {
		q.mu.Lock()
		expired := q.expire(now)
		var moved []*message
		if !q.connected && r.movedAway(q.node) {
			moved = q.drain()
		}
		forget := !q.connected && q.len() == 0 && len(q.requests) == 0 && now.Sub(q.idleSince) > r.cfg.MessageTTL
		q.mu.Unlock()
		for _, m := range expired {
			r.fail(m, ErrExpired)
		}
		for _, m := range moved {
			r.fail(m, ErrMoved)
		}
		if forget || len(moved) > 0 {
			r.mu.Lock()
			q.mu.Lock()
			if !q.connected && q.len() == 0 && len(q.requests) == 0 && r.queues[q.node] == q {
				delete(r.queues, q.node)
			}
			q.mu.Unlock()
			r.mu.Unlock()
		}
		if len(expired) > 0 {
			r.pump(q)
		}
	}
}

// movedAway reports whether another replica holds node now.
func (r *Router) movedAway(node string) bool {
	if r.cfg.Owners == nil {
		return false
	}
	owner, ok := r.cfg.Owners.Owner(node)
	return ok && owner != r.cfg.Replica
}

// shutdown fails whatever waits: the replica stops.
func (r *Router) shutdown() {
	r.mu.Lock()
	qs := r.queues
	r.queues = map[string]*lockedQueue{}
	r.mu.Unlock()
	for _, q := range qs {
		q.mu.Lock()
		all := q.drain()
		for _, m := range q.requests {
			all = append(all, m)
		}
		q.requests = map[string]*message{}
		q.mu.Unlock()
		for _, m := range all {
			m.finish(outcome{err: errors.New("the server is shutting down")})
		}
	}
}

// buffered counts the messages waiting or unanswered, for the gauge.
func (r *Router) buffered() float64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := 0
	for _, q := range r.queues {
		q.mu.Lock()
		n += q.len()
		q.mu.Unlock()
	}
	return float64(n)
}

// deliver queues one eventbus delivery for node and returns the channel
// of its outcome.
func (r *Router) deliver(rl *rule, node, topic string, body []byte) (*message, error) {
	q := r.queue(node, false)
	if q == nil {
		return nil, fmt.Errorf("node %q is not connected to edgesync server %s: %w", node, r.cfg.Replica, ErrOffline)
	}
	now := time.Now()
	m := &message{
		d: &edgesyncv1.RouteDelivery{
			Id: newID(), Rule: rl.key.String(), Target: edgesyncv1.RouteTarget_ROUTE_TARGET_EVENTBUS, Topic: topic, Body: body,
		},
		rule: rl.key, queued: now, expires: now.Add(r.cfg.MessageTTL), size: len(body) + len(topic) + 64,
		done: make(chan outcome, 1),
	}
	q.mu.Lock()
	err := q.add(m, r.cfg.NodeBuffer, r.cfg.NodeBytes)
	q.idleSince = now
	q.mu.Unlock()
	if err != nil {
		r.metrics.dropped(ErrBufferFull)
		return nil, err
	}
	r.pump(q)
	return m, nil
}

// request sends one servicebus request to node and returns the channel of
// its outcome; nothing is buffered.
func (r *Router) request(rl *rule, node string, d *edgesyncv1.RouteDelivery) (*message, error) {
	q := r.queue(node, false)
	if q == nil {
		return nil, fmt.Errorf("node %q is not connected to edgesync server %s: %w", node, r.cfg.Replica, ErrOffline)
	}
	now := time.Now()
	d.Id, d.Rule, d.Target = newID(), rl.key.String(), edgesyncv1.RouteTarget_ROUTE_TARGET_SERVICEBUS
	m := &message{d: d, rule: rl.key, queued: now, expires: now.Add(r.cfg.RequestTimeout), done: make(chan outcome, 1)}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.connected {
		return nil, fmt.Errorf("node %q is not connected to edgesync server %s: %w", node, r.cfg.Replica, ErrOffline)
	}
	if len(q.requests) >= maxRequests {
		return nil, fmt.Errorf("node %q has %d requests unanswered, its limit: %w", node, maxRequests, ErrBufferFull)
	}
	q.requests[d.Id] = m
	d.Ttl = durationpb.New(r.cfg.RequestTimeout)
	if err := r.cfg.Messenger.SendMessage(node, &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_RouteDelivery{RouteDelivery: d}}); err != nil {
		delete(q.requests, d.Id)
		return nil, fmt.Errorf("node %q: %v: %w", node, err, ErrOffline)
	}
	return m, nil
}

// forgetRequest drops a servicebus request whose caller stopped waiting.
func (r *Router) forgetRequest(node, id string) {
	if q := r.queue(node, false); q != nil {
		q.mu.Lock()
		delete(q.requests, id)
		q.mu.Unlock()
	}
}

// count adds one outcome to a rule's status counters.
func (r *Router) count(k ruleKey, ok bool, errText string) {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	c := r.counts[k]
	if c == nil {
		c = &counter{}
		r.counts[k] = c
	}
	if ok {
		c.success++
		return
	}
	c.fail++
	if errText != "" {
		c.errors = append(c.errors, errText)
		if len(c.errors) > maxErrors {
			c.errors = c.errors[len(c.errors)-maxErrors:]
		}
	}
}
