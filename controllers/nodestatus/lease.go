package nodestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// lagWarningEvery bounds how often a lagging renewal is logged.
const lagWarningEvery = time.Minute

// leases renews node Leases apart from heartbeats: at most once per
// LeaseRenewInterval per node, through its own queue and client.
type leases struct {
	cfg   *Config
	log   *zap.Logger
	queue *reportqueue.Queue      // keyed by node name
	limit flowcontrol.RateLimiter // Config.LeaseQPS; nil when unlimited

	mu      sync.Mutex           // guards renewed and pending
	renewed map[string]renewal   // last successful renewal per node
	pending map[string]time.Time // when the heartbeat that queued node's renewal arrived

	lastWarning atomic.Int64 // unix nanoseconds of the last lag warning
	// updateRefused is set once the API server refused an update of a
	// Lease (RBAC granting patch but not update, as before edgesync
	// renewed by update): renewals patch from then on.
	updateRefused atomic.Bool

	renewalsOK    prometheus.Counter
	renewalsError prometheus.Counter
	skipped       prometheus.Counter
	interval      prometheus.Histogram
}

func newLeases(cfg *Config, log *zap.Logger) (*leases, error) {
	renewals := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgesync_lease_renewals_total",
		Help: "Node Lease writes (renewals and creates) by result.",
	}, []string{"result"})
	l := &leases{
		cfg:           cfg,
		log:           log,
		renewed:       make(map[string]renewal),
		pending:       make(map[string]time.Time),
		renewalsOK:    renewals.WithLabelValues("ok"),
		renewalsError: renewals.WithLabelValues("error"),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_lease_renewals_skipped_total",
			Help: "Heartbeats answered without a Lease write because the node's Lease was renewed less than the renew interval ago.",
		}),
		interval: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "edgesync_lease_renewal_interval_seconds",
			Help: "Time between successive successful renewals of the same node's Lease. " +
				"Above three quarters of the lease duration, the node lifecycle controller is close to marking the node NotReady.",
			Buckets: []float64{1, 2.5, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 60, 120},
		}),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{renewals, l.skipped, l.interval} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("nodestatus: register lease metrics: %w", err)
			}
		}
	}
	if cfg.LeaseQPS > 0 {
		l.limit = flowcontrol.NewTokenBucketRateLimiter(cfg.LeaseQPS, max(cfg.LeaseBurst, 1))
	}
	l.queue = reportqueue.New(log, reportqueue.Guarded(cfg.WriteGuard, l.write))
	return l, nil
}

// renewal is a node's last successful Lease renewal.
type renewal struct {
	// asked is when the heartbeat that asked for it arrived, wrote when
	// it was written.
	asked, wrote time.Time
	// lease is what the write returned, without managedFields: the next
	// renewal updates it.
	lease *coordinationv1.Lease
}

// heartbeat answers a heartbeat from node: at once when node's Lease was
// renewed less than LeaseRenewInterval ago, after a renewal otherwise. It
// runs for every heartbeat of every node: one map lookup under a mutex.
func (l *leases) heartbeat(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	now := l.cfg.Now()
	l.mu.Lock()
	fresh := l.freshLocked(node, now)
	if _, queued := l.pending[node]; !fresh && !queued {
		l.pending[node] = now
	}
	l.mu.Unlock()
	if fresh {
		l.skipped.Inc()
		answer(reportqueue.Result(req.GetRequestId(), nil))
		return
	}
	l.queue.Add(node, node, req, answer)
}

// freshLocked tells whether a heartbeat of node that arrived at t needs no
// renewal: the heartbeat that asked for the last one arrived less than
// LeaseRenewInterval before t, less a tenth (heartbeats come on a fixed
// interval, and one arriving a hair early must not push the renewal a
// whole interval later). Arrival times, not write times, are compared: a
// renewal that waited in the queue under load must not make the next
// heartbeat look early, or renewals at the default cadence (every
// heartbeat) would skip every other heartbeat and come 30 s apart. l.mu
// must be held.
func (l *leases) freshLocked(node string, t time.Time) bool {
	last, ok := l.renewed[node]
	return ok && t.Sub(last.asked) < l.cfg.LeaseRenewInterval-l.cfg.LeaseRenewInterval/10
}

// forget drops node's last renewal time, so that memory is bounded by the
// nodes with a session or a Node. A renewal under way when its session
// ends may record it again; the Node's deletion or the node's next session
// end drops it.
func (l *leases) forget(node string) {
	l.mu.Lock()
	delete(l.renewed, node)
	delete(l.pending, node)
	l.mu.Unlock()
}

// write renews node's Lease unless a renewal that finished while this
// heartbeat waited in the queue already did, or the Node was deleted (or
// lost the edge label) meanwhile.
func (l *leases) write(ctx context.Context, node string, _ *edgesyncv1.SyncRequest) error {
	now := l.cfg.Now()
	l.mu.Lock()
	asked, ok := l.pending[node]
	if !ok {
		asked = now
	}
	delete(l.pending, node)
	fresh := l.freshLocked(node, asked)
	l.mu.Unlock()
	n, err := edgeNode(l.cfg, node)
	if err != nil {
		return err
	}
	if fresh {
		l.skipped.Inc()
		return nil
	}
	lease, err := l.renew(ctx, n, now)
	if err != nil {
		l.renewalsError.Inc()
		return err
	}
	// The managedFields are most of the Lease's bytes, and an update
	// without them leaves the stored ones as they are.
	lease.ManagedFields = nil
	l.renewalsOK.Inc()
	l.mu.Lock()
	last, ok := l.renewed[node]
	l.renewed[node] = renewal{asked: asked, wrote: now, lease: lease}
	l.mu.Unlock()
	if ok {
		l.observe(node, now.Sub(last.wrote), now)
	}
	return nil
}

// observe records the time since node's previous renewal and warns, at
// most once per lagWarningEvery, when it exceeds three quarters of the
// lease duration: the Lease was then within a quarter of expiring.
func (l *leases) observe(node string, since time.Duration, now time.Time) {
	l.interval.Observe(since.Seconds())
	if since <= l.cfg.LeaseDuration*3/4 {
		return
	}
	prev := l.lastWarning.Load()
	if prev != 0 && now.Sub(time.Unix(0, prev)) < lagWarningEvery {
		return
	}
	if !l.lastWarning.CompareAndSwap(prev, now.UnixNano()) {
		return // another renewal warns
	}
	l.log.Warn("node Lease renewals lag: a Lease went unrenewed for more than three quarters of its duration, "+
		"so the node lifecycle controller may mark nodes NotReady; raise kubernetes.leaseQPS "+
		"(Lease writes per second must stay above nodes / controllers.leaseRenewInterval) "+
		"or raise controllers.leaseRenewInterval (below leaseDuration/2), or add replicas; "+
		"edges must also send heartbeats more often than leaseDuration/2",
		zap.String("node", node), zap.Duration("sinceLastRenewal", since),
		zap.Duration("leaseDuration", l.cfg.LeaseDuration), zap.Duration("leaseRenewInterval", l.cfg.LeaseRenewInterval))
}

// leasePatch is the JSON merge patch that renews a Lease.
type leasePatch struct {
	Metadata *leasePatchMeta          `json:"metadata,omitempty"`
	Spec     coordinationv1.LeaseSpec `json:"spec"`
}

type leasePatchMeta struct {
	OwnerReferences []metav1.OwnerReference `json:"ownerReferences"`
}

// renew writes renewTime now into the Lease of Node n. It updates the
// Lease this replica last wrote, as a kubelet does: a protobuf PUT with
// that resourceVersion, no read and no patch for the API server to apply
// (a JSON merge patch makes it convert the stored object to JSON and
// back). When there is none (the node's first renewal since this replica
// took it), or the update conflicts (another replica renewed the Lease
// after a failover) or finds no Lease, or is forbidden (RBAC from before
// renewals updated), it falls back to a JSON merge patch, which needs no
// resourceVersion, and a create when the Lease is missing and n is still
// in the cache. It returns the Lease as written. The Lease is owned by n,
// as a kubelet's is: the garbage collector deletes it with the Node, and
// deletes one this renewal wrote just after the Node was deleted.
func (l *leases) renew(ctx context.Context, n *corev1.Node, now time.Time) (*coordinationv1.Lease, error) {
	node := n.Name
	seconds := int32(l.cfg.LeaseDuration / time.Second)
	renewTime := metav1.NewMicroTime(now)
	owners := []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
	spec := coordinationv1.LeaseSpec{HolderIdentity: &node, LeaseDurationSeconds: &seconds, RenewTime: &renewTime}
	l.mu.Lock()
	last := l.renewed[node].lease
	l.mu.Unlock()
	if last != nil && ownedBy(last, n) && !l.updateRefused.Load() {
		// A shallow copy: the update encodes the object and changes none
		// of the metadata it shares with last.
		lease := *last
		lease.Spec.HolderIdentity, lease.Spec.LeaseDurationSeconds, lease.Spec.RenewTime = spec.HolderIdentity, spec.LeaseDurationSeconds, spec.RenewTime
		got, err := l.update(ctx, &lease)
		if err == nil {
			return got, nil
		}
		if apierrors.IsForbidden(err) && l.updateRefused.CompareAndSwap(false, true) {
			l.log.Warn("the API server refused to update a node Lease: node Leases are patched from now on, which costs "+
				"the API server more; grant verb update on leases in kube-node-lease (deploy/rbac/edgesync-server.yaml)",
				zap.String("node", node), zap.Error(err))
		}
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) && !apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("renew lease of node %q: %w", node, err)
		}
	}
	p := leasePatch{Metadata: &leasePatchMeta{OwnerReferences: owners}, Spec: spec}
	patch, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode lease patch: %w", err)
	}
	api := l.cfg.LeaseClient.CoordinationV1().Leases(LeaseNamespace)
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	got, err := api.Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: l.cfg.FieldManager})
	if apierrors.IsNotFound(err) {
		// Deleted with its Node? Then the cache no longer has the Node.
		if _, err := edgeNode(l.cfg, node); err != nil {
			return nil, err
		}
		lease := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: node, Namespace: LeaseNamespace, OwnerReferences: owners},
			Spec:       p.Spec,
		}
		if err := l.wait(ctx); err != nil {
			return nil, err
		}
		got, err = api.Create(ctx, lease, metav1.CreateOptions{FieldManager: l.cfg.FieldManager})
		if apierrors.IsAlreadyExists(err) { // created since the patch: renew it
			if err := l.wait(ctx); err != nil {
				return nil, err
			}
			got, err = api.Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: l.cfg.FieldManager})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("renew lease of node %q: %w", node, err)
	}
	return got, nil
}

// update writes lease, the steady renewal. It is the typed client's
// Update without its reflective encoding of UpdateOptions into the query
// (a sixth of a renewal's client CPU): one parameter, set directly.
func (l *leases) update(ctx context.Context, lease *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	req := l.cfg.LeaseClient.CoordinationV1().RESTClient().Put().
		Namespace(LeaseNamespace).Resource("leases").Name(lease.Name).Body(lease)
	if l.cfg.FieldManager != "" {
		req = req.Param("fieldManager", l.cfg.FieldManager)
	}
	got := &coordinationv1.Lease{}
	return got, req.Do(ctx).Into(got)
}

// wait takes a token of the Lease budget (Config.LeaseQPS).
func (l *leases) wait(ctx context.Context) error {
	if l.limit == nil {
		return nil
	}
	if err := l.limit.Wait(ctx); err != nil {
		return fmt.Errorf("wait for the Lease write budget: %w", err)
	}
	return nil
}

// ownedBy tells whether lease names Node n (this incarnation of it) as
// its owner, as every Lease renew writes does.
func ownedBy(lease *coordinationv1.Lease, n *corev1.Node) bool {
	for _, o := range lease.OwnerReferences {
		if o.Kind == "Node" && o.Name == n.Name && o.UID == n.UID {
			return true
		}
	}
	return false
}
