// Package eventsync writes the events edges report (EventReport) as
// events.k8s.io/v1 Events, so that `kubectl describe` and
// `kubectl get events` show what happened on an edge node: containers
// pulled, created, started and killed, devices going online or offline.
//
// Each Event names the node as its reportingInstance and
// "edgesync-agent" as its reportingController. Repeats of the same event
// (same node, object, type, reason, action and note) within SeriesWindow
// of the previous one are aggregated into the first Event's series (count
// and lastObservedTime), as the kubelet's events are; a burst of repeats
// costs one write, because a work queue keyed by series coalesces them.
//
// A node may report only about itself, the pods bound to it and its
// devices (PERMISSION_DENIED otherwise). Each node has a token bucket
// (Rate per second, bursts of Burst): events beyond it are answered
// RESOURCE_EXHAUSTED, counted, and never written. Writes go through a
// client with its own QPS budget, so a flood of events cannot delay pod
// or node status writes.
package eventsync

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/internal/handlers"
	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Defaults.
const (
	// DefaultRate and DefaultBurst are each node's event budget.
	DefaultRate  = 5
	DefaultBurst = 50
	// SeriesWindow is how long after an event a repeat joins its series,
	// as in client-go's event library.
	SeriesWindow = 6 * time.Minute
	// ReportingController names edgesync's edge agents in Events.
	ReportingController = "edgesync-agent"
	// maxNote is the longest note the API server accepts.
	maxNote = 1024
)

// Config is what the controller needs.
type Config struct {
	// Client writes Events; give it a rate limit of its own.
	Client kubernetes.Interface
	// Pods lists the pods bound to nodes, from the shared cache.
	Pods corelisters.PodLister
	// Devices is the device informer's indexer (unstructured
	// devices.kubeedge.io Devices); nil when devices are disabled.
	Devices cache.Indexer
	// Rate and Burst are each node's event budget; DefaultRate and
	// DefaultBurst when zero.
	Rate  float64
	Burst int
	// Registerer registers edgesync_edge_events_total; none when nil.
	Registerer prometheus.Registerer
	Logger     *zap.Logger
}

// Controller writes edge events.
type Controller struct {
	cfg    Config
	log    *zap.Logger
	counts *prometheus.CounterVec     // by result
	queue  *handlers.Queue[seriesKey] // shut down by Run

	mu      sync.Mutex // guards limiters, idle, series and stopped
	stopped bool       // Run has returned: reports are answered UNAVAILABLE
	// limiters are the nodes' event budgets. A node's budget outlives its
	// session, so reconnecting does not refill it; it is forgotten once
	// the node has no session and the budget has refilled (a fresh one
	// would be the same), which bounds memory for nodes gone for good.
	limiters map[string]*rate.Limiter
	idle     map[string]bool // nodes whose session ended since their last report
	series   map[seriesKey]*series
}

// seriesKey identifies the events that aggregate into one series.
type seriesKey struct {
	node                                  string
	kind, namespace, name, uid, fieldPath string
	typ, reason, action, note             string
}

// series is one Event and its repeats.
type series struct {
	event   *eventsv1.Event // as created; nil until then
	count   int32           // occurrences reported
	written int32           // occurrences the API server has
	last    time.Time       // when the last occurrence arrived
	lastAt  time.Time       // the edge's time of the last occurrence
	answers []func(error)   // reports waiting for the write
	first   *eventsv1.Event // the Event to create
}

// New returns a controller; Run starts its workers.
func New(cfg Config) (*Controller, error) {
	if cfg.Client == nil || cfg.Pods == nil {
		return nil, errors.New("eventsync: Client and Pods are required")
	}
	if cfg.Rate <= 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c := &Controller{
		cfg: cfg,
		log: cfg.Logger,
		counts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_edge_events_total",
			Help: "Events reported by edges, by result: written (or added to a series), rate_limited (over the node's budget, dropped), refused (not the node's object or malformed), failed (the write failed).",
		}, []string{"result"}),
		queue:    handlers.NewQueue[seriesKey]("eventsync", nil),
		limiters: make(map[string]*rate.Limiter),
		idle:     make(map[string]bool),
		series:   make(map[seriesKey]*series),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.counts); err != nil {
			return nil, fmt.Errorf("eventsync: register metrics: %w", err)
		}
	}
	return c, nil
}

// Run writes events with workers until ctx ends. Reports still waiting
// are answered UNAVAILABLE.
func (c *Controller) Run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	c.mu.Lock()
	c.stopped = true
	var waiting []func(error)
	for _, s := range c.series {
		waiting = append(waiting, s.answers...)
		s.answers = nil
	}
	c.mu.Unlock()
	for _, a := range waiting {
		a(feed.NewError(feed.ErrUnavailable, "the server is shutting down; the event was not written"))
	}
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.write(ctx, key); err != nil {
		c.log.Warn("write event failed, retrying", zap.String("node", key.node), zap.String("reason", key.reason),
			zap.String("object", key.namespace+"/"+key.name), zap.Error(err))
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}

// HandleReport checks one EventReport from node and queues its write;
// answer is called once it is written, refused or dropped.
func (c *Controller) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	id := req.GetRequestId()
	reply := func(err error) { answer(reportqueue.Result(id, err)) }
	ev, err := c.event(node, req.GetEventReport())
	if err != nil {
		c.counts.WithLabelValues("refused").Inc()
		reply(err)
		return
	}
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		reply(feed.NewError(feed.ErrUnavailable, "the server is shutting down; the event was not written"))
		return
	}
	delete(c.idle, node)
	lim := c.limiters[node]
	if lim == nil {
		lim = rate.NewLimiter(rate.Limit(c.cfg.Rate), c.cfg.Burst)
		c.limiters[node] = lim
	}
	if !lim.Allow() {
		c.mu.Unlock()
		c.counts.WithLabelValues("rate_limited").Inc()
		reply(feed.Errorf(feed.ErrResourceExhausted, "node %q reports more than %g events per second (bursts of %d); event %s about %s/%s dropped",
			node, c.cfg.Rate, c.cfg.Burst, ev.Reason, ev.Regarding.Namespace, ev.Regarding.Name))
		return
	}
	key := seriesKey{
		node: node, kind: ev.Regarding.Kind, namespace: ev.Regarding.Namespace, name: ev.Regarding.Name, uid: string(ev.Regarding.UID),
		fieldPath: ev.Regarding.FieldPath, typ: ev.Type, reason: ev.Reason, action: ev.Action, note: ev.Note,
	}
	now := time.Now()
	s := c.series[key]
	if s == nil || (now.Sub(s.last) > SeriesWindow && len(s.answers) == 0 && s.written == s.count) {
		s = &series{first: ev}
		c.series[key] = s
	}
	s.count++
	s.last, s.lastAt = now, ev.EventTime.Time
	s.answers = append(s.answers, func(err error) {
		if err != nil {
			c.counts.WithLabelValues("failed").Inc()
		} else {
			c.counts.WithLabelValues("written").Inc()
		}
		reply(err)
	})
	c.mu.Unlock()
	c.queue.Add(key)
}

// SessionEnded keeps node's event budget (a node that reconnects gets no
// fresh one) and forgets the budgets of nodes without a session that have
// refilled.
func (c *Controller) SessionEnded(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.idle[node] = true
	for n := range c.idle {
		if lim := c.limiters[n]; lim == nil || lim.Tokens() >= float64(c.cfg.Burst) {
			delete(c.limiters, n)
			delete(c.idle, n)
		}
	}
}

// write creates the series' Event or patches its series with the count
// reported so far, then answers the reports it covers. A series idle for
// SeriesWindow is forgotten.
func (c *Controller) write(ctx context.Context, key seriesKey) error {
	c.mu.Lock()
	s := c.series[key]
	if s == nil {
		c.mu.Unlock()
		return nil
	}
	if s.written == s.count {
		if time.Since(s.last) > SeriesWindow {
			delete(c.series, key)
		}
		c.mu.Unlock()
		return nil
	}
	count, lastAt, created := s.count, s.lastAt, s.event
	answers := s.answers
	s.answers = nil
	first := s.first
	c.mu.Unlock()

	var err error
	switch {
	case created == nil:
		ev := first.DeepCopy()
		if count > 1 {
			ev.Series = &eventsv1.EventSeries{Count: count, LastObservedTime: metav1.NewMicroTime(lastAt)}
		}
		created, err = c.cfg.Client.EventsV1().Events(ev.Namespace).Create(ctx, ev, metav1.CreateOptions{})
	default:
		patch := fmt.Sprintf(`{"series":{"count":%d,"lastObservedTime":%q}}`, count, lastAt.UTC().Format(metav1.RFC3339Micro))
		_, err = c.cfg.Client.EventsV1().Events(created.Namespace).Patch(ctx, created.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		if apierrors.IsNotFound(err) {
			created = nil // expired (events live an hour): start anew
		}
	}

	c.mu.Lock()
	if err != nil && permanent(err) {
		// The API server will refuse it again (an admission policy, a
		// webhook, a namespace being deleted): answer the reports with its
		// code instead of retrying for ever, and start the next
		// occurrence anew, so that it is written once the refusal is gone.
		if c.series[key] == s {
			delete(c.series, key)
		}
		c.mu.Unlock()
		refused := refusal(key, err)
		for _, a := range answers {
			a(refused)
		}
		return nil
	}
	if err != nil {
		s.answers = append(answers, s.answers...)
		// A failed create returns an empty object, not the Event: the
		// next try creates it again.
		if s.event == nil || created == nil || created.Name == "" {
			created = nil
		}
		s.event = created
		c.mu.Unlock()
		return err
	}
	s.event, s.written = created, count
	c.mu.Unlock()
	for _, a := range answers {
		a(nil)
	}
	c.queue.AddAfter(key, SeriesWindow+time.Second) // to forget it once idle
	return nil
}

// event checks what node reports and builds the Event, or returns the
// status to answer.
func (c *Controller) event(node string, r *edgesyncv1.EventReport) (*eventsv1.Event, error) {
	if r == nil {
		return nil, feed.NewError(feed.ErrInvalid, "event_report is empty")
	}
	switch r.GetType() {
	case corev1.EventTypeNormal, corev1.EventTypeWarning:
	default:
		return nil, feed.Errorf(feed.ErrInvalid, "event type %q: use Normal or Warning", r.GetType())
	}
	if r.GetReason() == "" || r.GetAction() == "" || len(r.GetReason()) > 128 || len(r.GetAction()) > 128 {
		return nil, feed.NewError(feed.ErrInvalid, "an event needs a reason and an action of at most 128 characters each")
	}
	regarding, err := c.regarding(node, r.GetRegarding())
	if err != nil {
		return nil, err
	}
	regarding.FieldPath = r.GetFieldPath()
	at := time.Now()
	if t := r.GetEventTime(); t != nil && t.IsValid() && !t.AsTime().IsZero() {
		at = t.AsTime()
	}
	note := r.GetNote()
	if len(note) > maxNote {
		note = note[:maxNote]
	}
	namespace := regarding.Namespace
	if namespace == "" {
		namespace = metav1.NamespaceDefault // where the kubelet puts its Node's events
	}
	return &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      regarding.Name + "." + strconv.FormatInt(time.Now().UnixNano(), 16),
		},
		EventTime:           metav1.NewMicroTime(at),
		ReportingController: ReportingController,
		ReportingInstance:   node,
		Action:              r.GetAction(),
		Reason:              r.GetReason(),
		Regarding:           regarding,
		Note:                note,
		Type:                r.GetType(),
	}, nil
}

// regarding resolves the object an event is about, refusing objects that
// are not node's.
func (c *Controller) regarding(node string, ref *edgesyncv1.ObjectRef) (corev1.ObjectReference, error) {
	ns, name := ref.GetNamespace(), ref.GetName()
	switch ref.GetKind() {
	case edgesyncv1.Kind_KIND_NODE:
		if name != node {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrPermissionDenied, "node %q may not report events about node %q", node, name)
		}
		// The uid is the node's name, as the kubelet sets it and as
		// kubectl describe node looks it up.
		return corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: node, UID: types.UID(node)}, nil
	case edgesyncv1.Kind_KIND_POD:
		pod, err := c.cfg.Pods.Pods(ns).Get(name)
		if apierrors.IsNotFound(err) {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrNotFound, "pod %s/%s does not exist", ns, name)
		} else if err != nil {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrUnavailable, "pod %s/%s: %v", ns, name, err)
		}
		if pod.Spec.NodeName != node {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrPermissionDenied, "node %q may not report events about pod %s/%s bound to node %q", node, ns, name, pod.Spec.NodeName)
		}
		if uid := ref.GetUid(); uid != "" && uid != string(pod.UID) {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrNotFound, "pod %s/%s with uid %s no longer exists (it was replaced)", ns, name, uid)
		}
		return corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: name, UID: pod.UID}, nil
	case edgesyncv1.Kind_KIND_DEVICE:
		if c.cfg.Devices == nil {
			return corev1.ObjectReference{}, feed.NewError(feed.ErrUnimplemented, "device support is disabled on this server")
		}
		item, ok, err := c.cfg.Devices.GetByKey(ns + "/" + name)
		if err != nil {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrUnavailable, "device %s/%s: %v", ns, name, err)
		}
		dev, isDev := item.(*unstructured.Unstructured)
		if !ok || !isDev {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrNotFound, "device %s/%s does not exist", ns, name)
		}
		if bound, _, _ := unstructured.NestedString(dev.Object, "spec", "nodeName"); bound != node {
			return corev1.ObjectReference{}, feed.Errorf(feed.ErrPermissionDenied, "node %q may not report events about device %s/%s bound to node %q", node, ns, name, bound)
		}
		return corev1.ObjectReference{Kind: "Device", APIVersion: dev.GetAPIVersion(), Namespace: ns, Name: name, UID: dev.GetUID()}, nil
	}
	return corev1.ObjectReference{}, feed.Errorf(feed.ErrInvalid, "events may regard KIND_POD, KIND_DEVICE or KIND_NODE, not %s", ref.GetKind())
}

// permanent reports whether the API server refused an Event in a way that
// retrying will not change: forbidden (an admission policy or webhook, a
// namespace being deleted) or invalid.
func permanent(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)
}

// refusal is the status answering reports the API server refused for
// good: PERMISSION_DENIED or INVALID_ARGUMENT with its message.
func refusal(key seriesKey, err error) error {
	kind := feed.ErrPermissionDenied
	if !apierrors.IsForbidden(err) {
		kind = feed.ErrInvalid
	}
	return feed.Errorf(kind, "the Kubernetes API refused event %s about %s %s/%s: %v; it will not be retried",
		key.reason, key.kind, key.namespace, key.name, err)
}
