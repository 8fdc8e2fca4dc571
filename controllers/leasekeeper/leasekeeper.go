// Package leasekeeper keeps the node Leases (kube-node-lease) of the edge
// nodes whose owning replica went silent, until their edges reconnect and
// are claimed, so that a replica's death does not make the node lifecycle
// controller mark live nodes NotReady while thousands of edges move.
//
// Which nodes a replica keeps is decided by package controllers/ownership
// (Manager.Orphans): the nodes whose records name a replica that missed its
// renewal, spread over the replicas still renewing. A kept node's Lease is
// renewed at once and then every RenewInterval, with a JSON merge patch of
// its renewTime only: nothing else of the Lease changes, none is created
// (a node without a Lease has no edge to keep alive), and no request reads
// anything (the cache of Nodes answers the rest). Every renewal after the
// first carries the resourceVersion of the keeper's previous write as a
// precondition, so once anyone else writes the Lease (the node's new owner,
// or the old one back from a hold) the keeper's next renewal conflicts and
// it stops keeping that node; it also stops as soon as its cache shows the
// node claimed (Orphans no longer lists it). At most one renewal of a
// keeper can thus land after the new owner's first write, carrying the
// same fields any owner writes.
//
// Keeping is bounded, so that a node whose edge is gone for good is still
// seen NotReady: a node is kept only while its Node is an edge node whose
// Ready condition in the cache is not False or Unknown (a node the cloud
// already sees as not ready is never revived; one that never reported a
// status, which the node lifecycle controller marks Unknown after its
// grace period, may be), and for at most Grace after its owner went
// silent (Orphan.Since; the node Lease's duration by default). An edge that
// died with its replica therefore goes NotReady at most Grace later than
// it would have; any live edge reconnects and is claimed well within it
// (its reconnect backoff, plus the dead replica's Lease expiring).
package leasekeeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/edgesync/edgesync/controllers/internal/handlers"
	"github.com/edgesync/edgesync/controllers/ownership"
)

// LeaseNamespace holds the node Leases.
const LeaseNamespace = "kube-node-lease"

// Config configures a Keeper.
type Config struct {
	// Orphans lists the nodes this replica keeps (ownership.Manager.Orphans).
	Orphans func() []ownership.Orphan
	// Nodes lists Nodes from a cache: a kept node must be an edge node
	// (EdgeLabel) not seen as not ready (Ready False or Unknown).
	Nodes     corelisters.NodeLister
	EdgeLabel string
	// LeaseClient writes the node Leases.
	LeaseClient kubernetes.Interface
	// LeaseDuration is the node Leases' duration (40s when zero);
	// RenewInterval how often a kept Lease is renewed (LeaseDuration/4
	// when zero).
	LeaseDuration time.Duration
	RenewInterval time.Duration
	// Grace bounds how long after its owner went silent a node is kept;
	// LeaseDuration when zero.
	Grace time.Duration
	// Workers is how many renewals run at once; 8 when zero.
	Workers      int
	FieldManager string
	// Registerer registers edgesync_lease_kept_total; none when nil.
	Registerer prometheus.Registerer
	// Now tells the time; time.Now when nil.
	Now    func() time.Time
	Logger *zap.Logger
}

// Keeper renews the Leases of the nodes Orphans lists. Create it with New
// and call Run.
type Keeper struct {
	cfg   Config
	log   *zap.Logger
	queue *handlers.Queue[string] // kept nodes due for a renewal; shut down by Run

	mu   sync.Mutex       // guards kept
	kept map[string]*kept // per node Orphans lists

	renewals *prometheus.CounterVec
}

// kept is one kept node's state.
type kept struct {
	until   time.Time // keeping ends (Orphan.Since + Grace)
	written time.Time // last successful renewal
	version string    // resourceVersion of that renewal's result
	queued  bool
	stopped bool // someone else wrote the Lease, it has none, or it is not Ready
}

// New validates cfg and returns a Keeper.
func New(cfg Config) (*Keeper, error) {
	if cfg.Orphans == nil || cfg.Nodes == nil || cfg.LeaseClient == nil || cfg.EdgeLabel == "" {
		return nil, errors.New("leasekeeper: Orphans, Nodes, LeaseClient and EdgeLabel are required")
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = 40 * time.Second
	}
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = cfg.LeaseDuration / 4
	}
	if cfg.Grace <= 0 {
		cfg.Grace = cfg.LeaseDuration
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	k := &Keeper{
		cfg:   cfg,
		log:   cfg.Logger,
		queue: handlers.NewQueue[string]("leasekeeper", nil),
		kept:  make(map[string]*kept),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_lease_kept_total",
			Help: "Renewals of node Leases whose owning replica went silent, made by this replica as their keeper, by result.",
		}, []string{"result"}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(k.renewals); err != nil {
			return nil, fmt.Errorf("leasekeeper: %w", err)
		}
	}
	return k, nil
}

// Run keeps the orphans' Leases until ctx ends. It looks at Orphans every
// tick (a second at most), so that a replica going silent is noticed at
// once; with no silent replica that costs a look at an index.
func (k *Keeper) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer k.queue.ShutDown()
	for range k.cfg.Workers {
		wg.Go(func() {
			for k.renewNext(ctx) {
			}
		})
	}
	tick := min(time.Second, k.cfg.RenewInterval/4)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		k.scan()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scan queues the renewals that are due and forgets the nodes no longer
// kept.
func (k *Keeper) scan() {
	orphans := k.cfg.Orphans()
	now := k.cfg.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	seen := make(map[string]struct{}, len(orphans))
	for _, o := range orphans {
		seen[o.Node] = struct{}{}
		st := k.kept[o.Node]
		if st == nil {
			st = &kept{until: o.Since.Add(k.cfg.Grace)}
			k.kept[o.Node] = st
		}
		if st.stopped || st.queued || !now.Before(st.until) || now.Sub(st.written) < k.cfg.RenewInterval {
			continue
		}
		st.queued = true
		k.queue.Add(o.Node)
	}
	for node := range k.kept {
		if _, ok := seen[node]; !ok {
			delete(k.kept, node) // claimed, or its owner is back
		}
	}
}

// Kept returns how many nodes are being kept now (for tests and metrics).
func (k *Keeper) Kept() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, st := range k.kept {
		if !st.stopped && k.cfg.Now().Before(st.until) {
			n++
		}
	}
	return n
}

// renewNext renews one queued node's Lease.
func (k *Keeper) renewNext(ctx context.Context) bool {
	node, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(node)
	k.queue.Forget(node)
	k.mu.Lock()
	st := k.kept[node]
	if st == nil {
		k.mu.Unlock()
		return true
	}
	st.queued = false
	version := st.version
	k.mu.Unlock()

	if !k.ready(node) {
		k.stop(node, st, "not ready")
		return true
	}
	now := k.cfg.Now()
	res, err := k.renew(ctx, node, version, now)
	switch {
	case err == nil:
		k.renewals.WithLabelValues("ok").Inc()
		k.mu.Lock()
		st.written, st.version = now, res
		k.mu.Unlock()
	case apierrors.IsConflict(err):
		k.stop(node, st, "written by another") // its new owner, most likely
	case apierrors.IsNotFound(err):
		k.stop(node, st, "no lease")
	default:
		k.renewals.WithLabelValues("error").Inc()
		if ctx.Err() == nil {
			k.log.Info("cannot renew a kept node Lease; trying again at the next tick", zap.String("node", node), zap.Error(err))
		}
	}
	return true
}

func (k *Keeper) stop(node string, st *kept, why string) {
	k.renewals.WithLabelValues(why).Inc()
	k.mu.Lock()
	st.stopped = true
	k.mu.Unlock()
	k.log.Debug("no longer keeping a node Lease", zap.String("node", node), zap.String("reason", why))
}

// ready tells whether node is an edge node the cloud does not see as not
// ready: its Ready condition is True, or it has none yet.
func (k *Keeper) ready(node string) bool {
	n, err := k.cfg.Nodes.Get(node)
	if err != nil {
		return false
	}
	if _, ok := n.Labels[k.cfg.EdgeLabel]; !ok {
		return false
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return true
}

// renew patches the renewTime of node's Lease, on condition that it is
// still at version when version is set; it returns the new version.
func (k *Keeper) renew(ctx context.Context, node, version string, now time.Time) (string, error) {
	type meta struct {
		ResourceVersion string `json:"resourceVersion"`
	}
	type spec struct {
		RenewTime metav1.MicroTime `json:"renewTime"`
	}
	p := struct {
		Metadata *meta `json:"metadata,omitempty"`
		Spec     spec  `json:"spec"`
	}{Spec: spec{RenewTime: metav1.NewMicroTime(now)}}
	if version != "" {
		p.Metadata = &meta{ResourceVersion: version}
	}
	patch, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("encode lease patch: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, k.cfg.RenewInterval)
	defer cancel()
	l, err := k.cfg.LeaseClient.CoordinationV1().Leases(LeaseNamespace).Patch(ctx, node, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: k.cfg.FieldManager})
	if err != nil {
		return "", err
	}
	return l.ResourceVersion, nil
}
