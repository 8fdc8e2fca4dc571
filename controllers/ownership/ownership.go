// Package ownership decides which replica of the sync server owns each edge
// node, so that when several replicas run behind one Service at most one of
// them writes a node's Lease and status at any time. The decision lives in
// the API server as coordination.k8s.io Leases in the server's namespace;
// replicas never talk to each other.
//
// Two kinds of record, told apart by the label edgesync.io/ownership:
//
//   - one replica Lease per replica (edgesync-replica-<id>, value
//     "replica"), renewed every RenewInterval: the only periodic write. It
//     also carries the replica's address (annotation edgesync.io/address)
//     for those that must reach the owner of a node.
//   - one node record per edge node (edgesync-node-<node>, value "node")
//     whose holderIdentity is the owning replica. It has no duration of its
//     own: it is valid while its holder's replica Lease is. It is written
//     only when ownership changes.
//
// Claim, called when a replica accepts a node's Hello and before it writes
// anything for the node, takes the node record:
//
//   - no record, a released one (no holder) or one whose holder's replica
//     Lease has expired or is gone (the replica died): the claimer writes
//     itself as holder (one create or update);
//   - held by this replica already (the edge reconnected here): nothing is
//     written;
//   - held by a replica whose Lease is valid but was last renewed more than
//     half its duration ago (it missed a renewal: it has most likely died,
//     and its edges are reconnecting to the other replicas): the claimer
//     waits for that Lease to expire, then takes the record (one write), so
//     that a replica's death costs one write per node, not two;
//   - held by another live replica (the edge moved while its old stream is
//     half open): the claimer asks for it (annotation edgesync.io/wanted-by)
//     and waits. The holder's informer sees the request, ends its session of
//     the node, and then writes the claimer as holder: a handover. Only the
//     holder ever gives away a record held by a live replica, and only after
//     its session ended, so two replicas never own a node at once.
//
// A replica whose record changes to another holder ends its session of the
// node (feed.SessionEnder) at once. On a clean stop the replica deletes its
// replica Lease, so its nodes move without waiting for it to expire.
//
// # A replica that cannot renew: hold, then confirm or let go
//
// A replica whose renewal keeps failing (an API server slow or briefly
// unreachable) keeps its sessions, so downstream keeps flowing, but from
// LeaseDuration/2 after its last successful renewal it holds its nodes'
// reports: BeginWrite waits instead of admitting a write (the reports wait,
// latest per object, in the controllers' queues) and Claim refuses. That
// instant is chosen to line up with what the others do: they see its Lease
// as missed (unresponsive) from LeaseDuration/2 plus unresponsiveSlack
// after its renewTime, which is when a claim starts waiting for the Lease
// to expire and when keepers (below) may start renewing its nodes' Leases;
// the slack covers clocks that differ, so the holder has stopped writing
// before anyone else starts. Others take its nodes only once the Lease has
// expired (LeaseDuration after renewTime), later still.
//
// When a renewal succeeds again, the held writes are released for every
// node no other replica can have taken:
//
//   - a renewal that completed less than LeaseDuration - RenewInterval
//     after the previous one never let the Lease come within a
//     RenewInterval of expiring, the same margin the replica has always
//     kept between its last write and the earliest takeover: no record can
//     have been taken by expiry, and a live holder's record moves only by
//     a handover this replica makes itself. Every node is released at
//     once, with no API request.
//   - a later renewal may have let the Lease expire for others, who may
//     have taken nodes (or be about to, from a cache that has not seen the
//     renewal). Each held node then stays held until a conditional update
//     of its record (its version in this replica's cache, renewTime bumped)
//     succeeds: success proves nobody changed the record since, and any
//     replica whose cache holds the new version also holds the renewal
//     that preceded it (one watch, in resourceVersion order), so it sees
//     this replica alive and can only ask for a handover. A conflict, or a
//     record that names another holder, ends the node's session (as a
//     handover does) without releasing anything: a holding replica never
//     writes a node another replica took. This costs one write per held
//     node, only after a hold longer than LeaseDuration - RenewInterval.
//     For a LeaseDuration after such a renewal, a node claimed from a
//     record that already names this replica (its edge reconnected) is
//     confirmed the same way before its writes begin.
//
// A hold that lasts HoldLimit (twice LeaseDuration by default: the Lease
// has then surely expired) ends every session and forgets the nodes, so
// that the edges of a replica cut off from the API server reconnect to one
// that is not; their claims are then free (the Lease has expired).
//
// # Keeping a silent replica's node Leases
//
// A replica that died (or is holding) renews no node Lease, and its edges
// are claimed by the others only as they reconnect and its Lease expires:
// with thousands of nodes that can outlast a node Lease, and the node
// lifecycle controller would mark live nodes NotReady. So a replica that
// sees another miss its renewal (unresponsive, or its Lease expired or
// deleted) keeps some of that replica's nodes (Orphans): the nodes whose
// records still name the silent replica are spread over the replicas still
// renewing by rendezvous hashing of the node name, so every replica with
// the same cache picks the same keeper without talking to the others, and
// a keeper's death moves only its share. The keeper (package
// controllers/leasekeeper) renews their node Leases; it owns nothing (Owner
// and Owners never name a keeper), writes nothing but a Lease's renewTime,
// and stops for a node as soon as its record names a live replica again
// (the edge reconnected and was claimed, or the holder renewed). Orphan
// reports since when (Since): the instant the holder went silent, the same
// for every replica, from which the keeper bounds how long it keeps a node.
//
// The cost in API requests: one Lease update per replica per RenewInterval
// (three replicas at the default 3s: 1 write/s for any number of
// nodes); per node, nothing while its edge stays, one write when it
// connects to a new or dead owner, two when it moves from a live one. The
// server does not hold a session's downstream sync back for its claim, only
// its reports (feed.Claimer), so an edge whose replica died has its
// objects again within its reconnect, while its node changes owner when
// the dead replica's Lease expires. A
// watch of the records (label-selected, in one namespace) keeps every
// replica's view current; claims are answered from that cache.
//
// Owner is the lookup for others that must reach a node's owner (tunnel
// routing, AdminService).
package ownership

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

	"go.uber.org/zap"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	coordinationinformers "k8s.io/client-go/informers/coordination/v1"
	"k8s.io/client-go/kubernetes"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers/internal/handlers"
	"github.com/edgesync/edgesync/server/feed"
)

// Record labels and annotations.
const (
	// LabelKind marks ownership records; its value is KindNode or
	// KindReplica.
	LabelKind   = "edgesync.io/ownership"
	KindNode    = "node"
	KindReplica = "replica"
	// AnnotationNode names the node of a node record.
	AnnotationNode = "edgesync.io/node"
	// AnnotationWantedBy names the replica asking the holder for the node.
	AnnotationWantedBy = "edgesync.io/wanted-by"
	// AnnotationReleased says why a node record was released.
	AnnotationReleased = "edgesync.io/released"
	// AnnotationAddress is a replica's address, on its replica Lease.
	AnnotationAddress = "edgesync.io/address"
	// AnnotationRouterAddress is the address of a replica's router REST
	// port (package controllers/router), on its replica Lease.
	AnnotationRouterAddress = "edgesync.io/router-address"

	replicaPrefix = "edgesync-replica-"
	nodePrefix    = "edgesync-node-"
)

// Defaults.
const (
	DefaultLeaseDuration   = 15 * time.Second
	DefaultHandoverTimeout = 10 * time.Second
)

// Config configures a Manager.
type Config struct {
	// Client reads and writes the records. Give it a QPS budget of its own:
	// after a replica dies, its nodes are claimed by the others at once
	// (one write each).
	Client kubernetes.Interface
	// ReplicaClient writes this replica's own Lease; Client when nil. Give
	// it a budget apart from Client's, so that a burst of claims never
	// delays a renewal (a replica whose renewal is late holds its nodes'
	// reports).
	ReplicaClient kubernetes.Interface
	// Namespace holds the records: the server's own namespace.
	Namespace string
	// Replica is this replica's id (the server id; the pod name in
	// Kubernetes). It must be a DNS subdomain.
	Replica string
	// Address is where others reach this replica (host:port), recorded on
	// its replica Lease; optional.
	Address string
	// RouterAddress is where other replicas forward router REST calls for
	// the nodes this replica holds (host:port), recorded on its replica
	// Lease; optional.
	RouterAddress string
	// LeaseDuration is how long a replica Lease stays valid after a
	// renewal: how long the nodes of a dead replica wait before others may
	// take them. DefaultLeaseDuration when zero.
	LeaseDuration time.Duration
	// RenewInterval is how often the replica Lease is renewed;
	// LeaseDuration/5 when zero, so that a replica whose API server is slow
	// has several tries before it stops trusting its Lease. It must be less
	// than LeaseDuration/2.
	RenewInterval time.Duration
	// HandoverTimeout bounds how long Claim waits for a live holder to hand
	// a node over (a holder that stopped renewing its Lease is waited for
	// until the Lease expires, and HandoverTimeout beyond), and each write.
	// DefaultHandoverTimeout when zero.
	HandoverTimeout time.Duration
	// HoldLimit is how long after its last successful renewal a replica
	// that cannot renew keeps its sessions (holding their reports) before
	// it ends them all; twice LeaseDuration when zero. It must be more
	// than LeaseDuration/2.
	HoldLimit time.Duration
	// Now tells the time; time.Now when nil.
	Now    func() time.Time
	Logger *zap.Logger
}

// Manager takes, keeps and hands over the ownership of nodes for one
// replica. Create it with New and call Run.
type Manager struct {
	cfg      Config
	sessions feed.SessionEnder // set by Run
	log      *zap.Logger
	informer cache.SharedIndexInformer
	leases   coordinationlisters.LeaseNamespaceLister
	handover *handlers.Queue[string] // node records to give away; shut down by Run
	gone     *handlers.Queue[string] // nodes whose Node was deleted; shut down by Run
	confirm  *handlers.Queue[string] // held nodes to confirm after a late renewal; shut down by Run
	ready    chan struct{}           // closed once the replica Lease is held and the cache synced

	mu          sync.Mutex // guards the fields below
	renewedAt   time.Time  // start of the last successful replica Lease write
	holding     bool       // the last check found the replica Lease too old to write
	lateAt      time.Time  // when the last late renewal completed (confirm.go)
	claimed     map[string]int64
	unconfirmed map[string]struct{}      // claimed nodes held until their record is confirmed (confirm.go)
	changed     chan struct{}            // closed and replaced when a held write may go on or must stop
	waiters     map[string]chan struct{} // per record name, closed on its next event
	writing     map[string]*writes       // writes under way, per node (BeginWrite)
	silent      map[string]time.Time     // replicas whose Lease was deleted or never seen, since when (Orphans)
}

// writes counts the writes under way for one node; idle is closed when the
// count falls to zero.
type writes struct {
	n    int
	idle chan struct{}
}

// New validates cfg and builds a Manager; nothing talks to the API server
// before Run.
func New(cfg Config) (*Manager, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Replica == "" {
		return nil, errors.New("ownership: Client, Namespace and Replica are required")
	}
	if errs := validation.IsDNS1123Subdomain(replicaPrefix + cfg.Replica); len(errs) > 0 {
		return nil, fmt.Errorf("ownership: replica id %q cannot name a Lease: %s", cfg.Replica, strings.Join(errs, "; "))
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = cfg.LeaseDuration / 5
	}
	if cfg.RenewInterval >= cfg.LeaseDuration/2 {
		return nil, fmt.Errorf("ownership: renew interval %s must be less than half the lease duration %s", cfg.RenewInterval, cfg.LeaseDuration)
	}
	if cfg.HandoverTimeout <= 0 {
		cfg.HandoverTimeout = DefaultHandoverTimeout
	}
	if cfg.HoldLimit <= 0 {
		cfg.HoldLimit = 2 * cfg.LeaseDuration
	}
	if cfg.HoldLimit <= cfg.LeaseDuration/2 {
		return nil, fmt.Errorf("ownership: hold limit %s must be more than half the lease duration %s", cfg.HoldLimit, cfg.LeaseDuration)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReplicaClient == nil {
		cfg.ReplicaClient = cfg.Client
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	inf := coordinationinformers.NewFilteredLeaseInformer(cfg.Client, cfg.Namespace, 0, cache.Indexers{holderIndex: indexByHolder},
		func(o *metav1.ListOptions) { o.LabelSelector = LabelKind })
	m := &Manager{
		cfg:      cfg,
		log:      cfg.Logger,
		informer: inf,
		leases:   coordinationlisters.NewLeaseLister(inf.GetIndexer()).Leases(cfg.Namespace),
		handover: handlers.NewQueue[string]("ownership", nil),
		gone:     handlers.NewQueue[string]("ownership-gone", nil),
		confirm:  handlers.NewQueue[string]("ownership-confirm", nil),
		ready:    make(chan struct{}),
		claimed:  make(map[string]int64),
		waiters:  make(map[string]chan struct{}),
		writing:  make(map[string]*writes),

		unconfirmed: make(map[string]struct{}),
		changed:     make(chan struct{}),
		silent:      make(map[string]time.Time),
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { m.observe(obj, false) },
		UpdateFunc: func(_, obj any) { m.observe(obj, false) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			m.observe(obj, true)
		},
	}); err != nil {
		return nil, fmt.Errorf("ownership: %w", err)
	}
	return m, nil
}

// RecordName is the name of node's ownership record.
func RecordName(node string) string {
	name := nodePrefix + node
	if len(name) > validation.DNS1123SubdomainMaxLength {
		sum := sha256.Sum256([]byte(node))
		name = nodePrefix + hex.EncodeToString(sum[:16])
	}
	return name
}

// ReplicaLeaseName is the name of a replica's Lease.
func ReplicaLeaseName(replica string) string { return replicaPrefix + replica }

// Ready is closed once this replica holds its replica Lease and has loaded
// the records; Claim refuses before.
func (m *Manager) Ready() <-chan struct{} { return m.ready }

// Run keeps the replica Lease renewed, watches the records and hands nodes
// over until ctx ends; then it deletes the replica Lease so that other
// replicas may take its nodes at once. sessions ends this replica's
// session of a node it no longer owns.
func (m *Manager) Run(ctx context.Context, sessions feed.SessionEnder) {
	m.sessions = sessions // before anything that ends sessions starts
	defer m.handover.ShutDown()
	defer m.gone.ShutDown()
	defer m.confirm.ShutDown()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { m.informer.Run(ctx.Done()) })
	wg.Go(func() {
		for m.handOverNext(ctx) {
		}
	})
	wg.Go(func() {
		for m.forgetNext(ctx) {
		}
	})
	for range confirmWorkers {
		wg.Go(func() {
			for m.confirmNext(ctx) {
			}
		})
	}
	wg.Go(func() { <-ctx.Done(); m.handover.ShutDown(); m.gone.ShutDown(); m.confirm.ShutDown() })

	if !cache.WaitForCacheSync(ctx.Done(), m.informer.HasSynced) {
		return
	}
	// Renewed every RenewInterval; a failed renewal (an API server slow
	// under load) is tried again after a third of that, so that a replica
	// does not hold its nodes' reports (checkOwnLease) over one or two
	// slow writes.
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			m.resign()
			return
		case <-timer.C:
		}
		next := m.cfg.RenewInterval
		if err := m.renew(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("cannot renew the replica Lease; trying again", zap.String("lease", ReplicaLeaseName(m.cfg.Replica)), zap.Error(err))
			next = m.cfg.RenewInterval / 3
		}
		m.checkOwnLease()
		timer.Reset(next)
	}
}

// Owner returns the replica that owns node, from the cache: the holder of
// its record while that replica's Lease is valid.
func (m *Manager) Owner(node string) (replica string, ok bool) {
	rec, err := m.leases.Get(RecordName(node))
	if err != nil {
		return "", false
	}
	holder := ptr.Deref(rec.Spec.HolderIdentity, "")
	if holder == "" || !m.alive(holder) {
		return "", false
	}
	return holder, true
}

// Owners returns the owner of every node that has one, by node name.
func (m *Manager) Owners() map[string]string {
	recs, err := m.leases.List(nodeSelector)
	if err != nil {
		return nil
	}
	owners := make(map[string]string, len(recs))
	for _, rec := range recs {
		node := rec.Annotations[AnnotationNode]
		holder := ptr.Deref(rec.Spec.HolderIdentity, "")
		if node != "" && holder != "" && m.alive(holder) {
			owners[node] = holder
		}
	}
	return owners
}

// Address returns the address recorded on replica's Lease.
func (m *Manager) Address(replica string) (string, bool) {
	l, err := m.leases.Get(ReplicaLeaseName(replica))
	if err != nil || l.Annotations[AnnotationAddress] == "" {
		return "", false
	}
	return l.Annotations[AnnotationAddress], true
}

// RouterAddress returns the router address recorded on replica's Lease.
func (m *Manager) RouterAddress(replica string) (string, bool) {
	l, err := m.leases.Get(ReplicaLeaseName(replica))
	if err != nil || l.Annotations[AnnotationRouterAddress] == "" {
		return "", false
	}
	return l.Annotations[AnnotationRouterAddress], true
}

// Owns reports whether this replica owns node now: it claimed the node,
// has not lost it, its replica Lease is valid and the node is not held.
func (m *Manager) Owns(node string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.claimed[node]
	_, held := m.unconfirmed[node]
	return ok && !held && m.selfValidLocked()
}

// Serves reports whether this replica serves node: it claimed the node and
// has not lost it, though its writes may be held (BeginWrite waits).
// Reports of a node it serves are queued, not refused.
func (m *Manager) Serves(node string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.claimed[node]
	return ok
}

// nextEvent returns a channel closed on the next event of the record name.
func (m *Manager) nextEvent(name string) <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	ch, ok := m.waiters[name]
	if !ok {
		ch = make(chan struct{})
		m.waiters[name] = ch
	}
	return ch
}

// observe handles every event of a record: it wakes claims waiting on it,
// ends this replica's session of a node whose record moved on, and queues
// a handover when another replica asks for a node this replica holds.
func (m *Manager) observe(obj any, deleted bool) {
	rec, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return
	}
	m.mu.Lock()
	if ch, ok := m.waiters[rec.Name]; ok {
		close(ch)
		delete(m.waiters, rec.Name)
	}
	m.mu.Unlock()
	if rec.Labels[LabelKind] == KindReplica {
		m.observeReplica(rec, deleted)
		return
	}
	if rec.Labels[LabelKind] != KindNode {
		return
	}
	node := rec.Annotations[AnnotationNode]
	if node == "" {
		return
	}
	holder := ptr.Deref(rec.Spec.HolderIdentity, "")
	m.mu.Lock()
	claimedAt, ours := m.claimed[node]
	// Events older than our claim (delivered after it) say nothing new.
	lost := ours && version(rec) > claimedAt && (holder != m.cfg.Replica || deleted)
	if lost {
		m.forgetLocked(node)
	}
	m.mu.Unlock()
	switch {
	case !lost:
	case holder == "" && !deleted:
		m.sessions.EndSession(node, feed.Errorf(feed.ErrUnavailable, "disconnected by an operator: %s", rec.Annotations[AnnotationReleased]))
	default:
		m.sessions.EndSession(node, feed.Errorf(feed.ErrAborted,
			"node %q is now served by server %q; this stream is replaced", node, holder))
	}
	if !deleted && holder == m.cfg.Replica {
		if w := rec.Annotations[AnnotationWantedBy]; w != "" && w != m.cfg.Replica {
			m.handover.Add(rec.Name)
		}
	}
}

var (
	nodeSelector    = labels.SelectorFromSet(labels.Set{LabelKind: KindNode})
	replicaSelector = labels.SelectorFromSet(labels.Set{LabelKind: KindReplica})
)

// forgetLocked drops node from what this replica serves and wakes the
// writes held for it, which then refuse. m.mu must be held.
func (m *Manager) forgetLocked(node string) {
	delete(m.claimed, node)
	delete(m.unconfirmed, node)
	m.wakeLocked()
}

// wakeLocked wakes every BeginWrite waiting for a hold to end, to look
// again. m.mu must be held.
func (m *Manager) wakeLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// version orders the versions of one record: etcd's resource versions are
// increasing integers. Unknown ones order last.
func version(rec *coordinationv1.Lease) int64 {
	v, err := strconv.ParseInt(rec.ResourceVersion, 10, 64)
	if err != nil {
		return 1<<63 - 1
	}
	return v
}
