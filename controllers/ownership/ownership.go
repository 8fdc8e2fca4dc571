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
// node (feed.SessionEnder) at once; one that cannot renew its replica Lease
// for LeaseDuration less one RenewInterval ends all its sessions and refuses
// claims until it renews, before any other replica may take its nodes over.
// On a clean stop the replica deletes its replica Lease, so its nodes move
// without waiting for it to expire.
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
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	coordinationinformers "k8s.io/client-go/informers/coordination/v1"
	"k8s.io/client-go/kubernetes"
	coordinationlisters "k8s.io/client-go/listers/coordination/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"

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
	// delays a renewal (a replica whose renewal is late ends all its
	// sessions).
	ReplicaClient kubernetes.Interface
	// Namespace holds the records: the server's own namespace.
	Namespace string
	// Replica is this replica's id (the server id; the pod name in
	// Kubernetes). It must be a DNS subdomain.
	Replica string
	// Address is where others reach this replica (host:port), recorded on
	// its replica Lease; optional.
	Address string
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
	// Sessions ends this replica's session of a node it no longer owns.
	Sessions feed.SessionEnder
	// Now tells the time; time.Now when nil.
	Now    func() time.Time
	Logger *zap.Logger
}

// Manager takes, keeps and hands over the ownership of nodes for one
// replica. Create it with New and call Run.
type Manager struct {
	cfg      Config
	log      *zap.Logger
	informer cache.SharedIndexInformer
	leases   coordinationlisters.LeaseNamespaceLister
	handover workqueue.TypedRateLimitingInterface[string] // node records to give away
	gone     workqueue.TypedRateLimitingInterface[string] // nodes whose Node was deleted
	ready    chan struct{}                                // closed once the replica Lease is held and the cache synced

	mu        sync.Mutex // guards the fields below
	renewedAt time.Time  // start of the last successful replica Lease write
	claimed   map[string]int64
	waiters   map[string]chan struct{} // per record name, closed on its next event
	writing   map[string]*writes       // writes under way, per node (BeginWrite)
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
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Replica == "" || cfg.Sessions == nil {
		return nil, errors.New("ownership: Client, Namespace, Replica and Sessions are required")
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
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReplicaClient == nil {
		cfg.ReplicaClient = cfg.Client
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	inf := coordinationinformers.NewFilteredLeaseInformer(cfg.Client, cfg.Namespace, 0, cache.Indexers{},
		func(o *metav1.ListOptions) { o.LabelSelector = LabelKind })
	m := &Manager{
		cfg:      cfg,
		log:      cfg.Logger,
		informer: inf,
		leases:   coordinationlisters.NewLeaseLister(inf.GetIndexer()).Leases(cfg.Namespace),
		handover: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "ownership"}),
		gone: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "ownership-gone"}),
		ready:   make(chan struct{}),
		claimed: make(map[string]int64),
		waiters: make(map[string]chan struct{}),
		writing: make(map[string]*writes),
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
// replicas may take its nodes at once.
func (m *Manager) Run(ctx context.Context) {
	defer m.handover.ShutDown()
	defer m.gone.ShutDown()
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
	wg.Go(func() { <-ctx.Done(); m.handover.ShutDown(); m.gone.ShutDown() })

	if !cache.WaitForCacheSync(ctx.Done(), m.informer.HasSynced) {
		return
	}
	// Renewed every RenewInterval; a failed renewal (an API server slow
	// under load) is tried again after a third of that, so that a replica
	// does not end all its sessions (checkOwnLease) over one or two slow
	// writes.
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

// renew writes the replica Lease: a merge patch of renewTime, or a create.
// Nobody but this replica writes its Lease, so the patch carries no
// resourceVersion and never conflicts (an update would, after a renewal
// that timed out here but landed, until the cache caught up).
func (m *Manager) renew(ctx context.Context) error {
	start := m.cfg.Now()
	// A renewal may take until this replica would stop trusting its Lease
	// (a slow API server answers late rather than never); the Lease it
	// writes says start, so a late one never extends the claim past what
	// this replica believes.
	ctx, cancel := context.WithTimeout(ctx, m.renewTimeout(start))
	defer cancel()
	leases := m.cfg.ReplicaClient.CoordinationV1().Leases(m.cfg.Namespace)
	name := ReplicaLeaseName(m.cfg.Replica)
	now := metav1.NewMicroTime(start)
	spec := coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(m.cfg.Replica),
		LeaseDurationSeconds: ptr.To(int32(m.cfg.LeaseDuration / time.Second)),
		RenewTime:            &now,
	}
	meta := metav1.ObjectMeta{Labels: map[string]string{LabelKind: KindReplica}}
	if m.cfg.Address != "" {
		meta.Annotations = map[string]string{AnnotationAddress: m.cfg.Address}
	}
	metaPatch := map[string]any{"labels": meta.Labels}
	if meta.Annotations != nil {
		metaPatch["annotations"] = meta.Annotations
	}
	patch, err := json.Marshal(map[string]any{"metadata": metaPatch, "spec": spec})
	if err != nil {
		return err
	}
	_, err = leases.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	if apierrors.IsNotFound(err) {
		meta.Name, meta.Namespace = name, m.cfg.Namespace
		spec.AcquireTime = &now
		_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: meta, Spec: spec}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			_, err = leases.Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
		}
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.renewedAt = start
	m.mu.Unlock()
	select {
	case <-m.ready:
	default:
		m.log.Info("holding the replica Lease", zap.String("lease", name), zap.Duration("duration", m.cfg.LeaseDuration))
		close(m.ready)
	}
	return nil
}

// renewTimeout is how long a renewal starting at start may take: until
// this replica's Lease stops being surely valid, and at least a
// RenewInterval.
func (m *Manager) renewTimeout(start time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.renewedAt.IsZero() {
		return m.cfg.RenewInterval
	}
	return max(m.renewedAt.Add(m.cfg.LeaseDuration-m.cfg.RenewInterval).Sub(start), m.cfg.RenewInterval)
}

// selfValid reports whether this replica's Lease is surely still valid for
// every other replica: renewed less than LeaseDuration - RenewInterval ago.
func (m *Manager) selfValid() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.selfValidLocked()
}

// selfValidLocked is selfValid with m.mu held.
func (m *Manager) selfValidLocked() bool {
	return !m.renewedAt.IsZero() && m.cfg.Now().Sub(m.renewedAt) < m.cfg.LeaseDuration-m.cfg.RenewInterval
}

// checkOwnLease ends every session this replica holds once its own Lease
// may have lapsed: other replicas may take its nodes from then on.
func (m *Manager) checkOwnLease() {
	if m.selfValid() {
		return
	}
	m.mu.Lock()
	lapsed := m.claimed
	m.claimed = make(map[string]int64)
	m.mu.Unlock()
	if len(lapsed) == 0 {
		return
	}
	m.log.Warn("replica Lease not renewed in time; ending every session so that other replicas may take the nodes", zap.Int("sessions", len(lapsed)))
	for node := range lapsed {
		m.cfg.Sessions.EndSession(node, status.Errorf(codes.Unavailable,
			"server %s cannot renew its ownership of nodes with the Kubernetes API server; connect again (possibly to another replica)", m.cfg.Replica))
	}
}

// resign deletes the replica Lease after a clean stop.
func (m *Manager) resign() {
	m.mu.Lock()
	m.renewedAt = time.Time{} // owns nothing from now on
	m.claimed = make(map[string]int64)
	m.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := m.cfg.ReplicaClient.CoordinationV1().Leases(m.cfg.Namespace).Delete(ctx, ReplicaLeaseName(m.cfg.Replica), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		m.log.Warn("cannot delete the replica Lease; its nodes move when it expires", zap.Error(err))
	}
}

// alive reports whether replica's Lease is valid now, from the cache (this
// replica's own from its last renewal).
func (m *Manager) alive(replica string) bool {
	if replica == m.cfg.Replica {
		return m.selfValid()
	}
	l, err := m.leases.Get(ReplicaLeaseName(replica))
	if err != nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil || ptr.Deref(l.Spec.HolderIdentity, "") != replica {
		return false
	}
	expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	return m.cfg.Now().Before(expires)
}

// untilExpiry is how long until the Lease of rec's holder expires (a
// moment after, for clocks' sake); an hour when there is nothing to wait
// for.
func (m *Manager) untilExpiry(rec *coordinationv1.Lease) time.Duration {
	if rec == nil {
		return time.Hour
	}
	holder := ptr.Deref(rec.Spec.HolderIdentity, "")
	l, err := m.leases.Get(ReplicaLeaseName(holder))
	if holder == "" || holder == m.cfg.Replica || err != nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return time.Hour
	}
	expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second + 100*time.Millisecond)
	return max(expires.Sub(m.cfg.Now()), 10*time.Millisecond)
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

// Owns reports whether this replica owns node now: it claimed the node,
// has not lost it, and its replica Lease is valid.
func (m *Manager) Owns(node string) bool {
	m.mu.Lock()
	_, ok := m.claimed[node]
	m.mu.Unlock()
	return ok && m.selfValid()
}

// BeginWrite admits a write for node (its Lease, its status, its pods'
// status) while this replica owns it, and returns the function to call
// once the write is done: a node asked for by another replica is handed
// over only after the writes under way for it finished, so that no write
// of the old owner lands after the new owner's. A node this replica does
// not own (any more) gets UNAVAILABLE.
func (m *Manager) BeginWrite(node string) (done func(), err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.claimed[node]; !ok || !m.selfValidLocked() {
		return nil, status.Errorf(codes.Unavailable, "server %s no longer serves node %q (another replica took it over); connect again", m.cfg.Replica, node)
	}
	w := m.writing[node]
	if w == nil {
		w = &writes{idle: make(chan struct{})}
		m.writing[node] = w
	}
	w.n++
	return sync.OnceFunc(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if w.n--; w.n == 0 {
			close(w.idle)
			delete(m.writing, node)
		}
	}), nil
}

// awaitWrites waits until no write admitted by BeginWrite is under way for
// node, at most timeout; it reports whether none is.
func (m *Manager) awaitWrites(ctx context.Context, node string, timeout time.Duration) bool {
	m.mu.Lock()
	w := m.writing[node]
	m.mu.Unlock()
	if w == nil {
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-w.idle:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// Claim makes this replica node's owner, taking the record over from a
// dead holder or asking a live one to hand it over, and returns once the
// record names this replica. Its error is a gRPC status the edge can act
// on (UNAVAILABLE: connect again).
func (m *Manager) Claim(ctx context.Context, node string) error {
	select {
	case <-m.ready:
	default:
		return status.Errorf(codes.Unavailable, "server %s is not holding its replica Lease yet; connect again shortly", m.cfg.Replica)
	}
	// A live holder has HandoverTimeout to hand the node over; a holder
	// that stopped renewing its Lease is waited for until the Lease
	// expires, and HandoverTimeout beyond.
	deadline := time.NewTimer(m.cfg.HandoverTimeout)
	defer deadline.Stop()
	waitUntil := time.Now().Add(m.cfg.HandoverTimeout)
	name := RecordName(node)
	asked := false
	for {
		if !m.selfValid() {
			return status.Errorf(codes.Unavailable, "server %s cannot renew its replica Lease; connect again (possibly to another replica)", m.cfg.Replica)
		}
		changed := m.nextEvent(name)
		rec, err := m.leases.Get(name)
		var written *coordinationv1.Lease
		switch {
		case apierrors.IsNotFound(err):
			written, err = m.write(ctx, nil, m.newRecord(node))
		case err != nil:
			return status.Errorf(codes.Unavailable, "read ownership of node %q: %v", node, err)
		default:
			holder := ptr.Deref(rec.Spec.HolderIdentity, "")
			wanted := rec.Annotations[AnnotationWantedBy]
			switch {
			case holder == m.cfg.Replica && wanted == "":
				m.claim(node, rec)
				return nil
			case holder == m.cfg.Replica, holder == "", !m.alive(holder):
				// Ours with a stale request, released, or its holder died.
				written, err = m.write(ctx, rec, m.holdBy(rec, m.cfg.Replica))
			case m.unresponsive(holder):
				// Its holder missed a renewal and has most likely died
				// (its edges are reconnecting everywhere): asking would
				// cost a write per node and be answered by nobody. Wait
				// for its Lease to expire.
				if until := time.Now().Add(m.untilExpiry(rec) + m.cfg.HandoverTimeout); until.After(waitUntil) {
					waitUntil = until
					deadline.Reset(time.Until(until))
				}
			case wanted != m.cfg.Replica:
				req := rec.DeepCopy()
				metav1.SetMetaDataAnnotation(&req.ObjectMeta, AnnotationWantedBy, m.cfg.Replica)
				_, err = m.write(ctx, rec, req)
				asked = asked || err == nil
			default:
				asked = true // asked before; wait for the holder
			}
		}
		switch {
		case err == nil && written != nil:
			m.claim(node, written)
			return nil
		case err != nil && !apierrors.IsConflict(err) && !apierrors.IsAlreadyExists(err):
			if ctx.Err() != nil {
				return m.timedOut(node, rec, asked)
			}
			return status.Errorf(codes.Unavailable, "take ownership of node %q: %v", node, err)
		}
		// Conflict, or waiting for a handover: retry on the record's next
		// event (the cache then holds a newer version), or when the
		// holder's Lease expires (a dead holder hands nothing over).
		expiry := time.NewTimer(m.untilExpiry(rec))
		select {
		case <-changed:
		case <-expiry.C:
		case <-deadline.C:
			expiry.Stop()
			// A holder asked while it looked alive that has missed a
			// renewal since will not answer: wait for its Lease instead.
			if holder := holderOf(rec); holder != "" && m.unresponsive(holder) {
				waitUntil = time.Now().Add(m.untilExpiry(rec) + m.cfg.HandoverTimeout)
				deadline.Reset(time.Until(waitUntil))
				continue
			}
			return m.timedOut(node, rec, asked)
		case <-ctx.Done():
			expiry.Stop()
			return m.timedOut(node, rec, asked)
		}
		expiry.Stop()
	}
}

// holderOf is rec's holder; "" for no record.
func holderOf(rec *coordinationv1.Lease) string {
	if rec == nil {
		return ""
	}
	return ptr.Deref(rec.Spec.HolderIdentity, "")
}

// write creates (cur nil) or updates a node record, within HandoverTimeout.
func (m *Manager) write(ctx context.Context, cur, next *coordinationv1.Lease) (*coordinationv1.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.HandoverTimeout)
	defer cancel()
	leases := m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace)
	if cur == nil {
		return leases.Create(ctx, next, metav1.CreateOptions{})
	}
	return leases.Update(ctx, next, metav1.UpdateOptions{})
}

// unresponsive reports whether replica's Lease, still valid, was last
// renewed more than half its duration ago: a live replica renews it at
// least twice per duration (New enforces it), so this one missed a
// renewal and has most likely died.
func (m *Manager) unresponsive(replica string) bool {
	l, err := m.leases.Get(ReplicaLeaseName(replica))
	if err != nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return false
	}
	late := time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second / 2
	return m.cfg.Now().Sub(l.Spec.RenewTime.Time) > late+unresponsiveSlack
}

// unresponsiveSlack allows for a slow renewal write and for clocks that
// differ between replicas.
const unresponsiveSlack = time.Second

func (m *Manager) timedOut(node string, rec *coordinationv1.Lease, asked bool) error {
	holder := ""
	if rec != nil {
		holder = ptr.Deref(rec.Spec.HolderIdentity, "")
	}
	if asked && holder != "" {
		return status.Errorf(codes.Unavailable, "node %q is held by server %s, which did not hand it over within %s; connect again", node, holder, m.cfg.HandoverTimeout)
	}
	return status.Errorf(codes.Unavailable, "could not take ownership of node %q within %s; connect again", node, m.cfg.HandoverTimeout)
}

func (m *Manager) newRecord(node string) *coordinationv1.Lease {
	now := metav1.NewMicroTime(m.cfg.Now())
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name: RecordName(node), Namespace: m.cfg.Namespace,
			Labels:      map[string]string{LabelKind: KindNode},
			Annotations: map[string]string{AnnotationNode: node},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(m.cfg.Replica), AcquireTime: &now, LeaseTransitions: ptr.To(int32(0))},
	}
}

// holdBy returns rec with holder as its holder and no request pending.
func (m *Manager) holdBy(rec *coordinationv1.Lease, holder string) *coordinationv1.Lease {
	next := rec.DeepCopy()
	delete(next.Annotations, AnnotationWantedBy)
	delete(next.Annotations, AnnotationReleased)
	if ptr.Deref(next.Spec.HolderIdentity, "") != holder {
		now := metav1.NewMicroTime(m.cfg.Now())
		next.Spec.HolderIdentity = ptr.To(holder)
		next.Spec.AcquireTime = &now
		next.Spec.LeaseTransitions = ptr.To(ptr.Deref(next.Spec.LeaseTransitions, 0) + 1)
	}
	return next
}

// claim records that this replica owns node as of rec's version.
func (m *Manager) claim(node string, rec *coordinationv1.Lease) {
	m.mu.Lock()
	m.claimed[node] = version(rec)
	m.mu.Unlock()
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
		delete(m.claimed, node)
	}
	m.mu.Unlock()
	switch {
	case !lost:
	case holder == "" && !deleted:
		m.cfg.Sessions.EndSession(node, status.Errorf(codes.Unavailable, "disconnected by an operator: %s", rec.Annotations[AnnotationReleased]))
	default:
		m.cfg.Sessions.EndSession(node, status.Errorf(codes.Aborted,
			"node %q is now served by server %q; this stream is replaced", node, holder))
	}
	if !deleted && holder == m.cfg.Replica {
		if w := rec.Annotations[AnnotationWantedBy]; w != "" && w != m.cfg.Replica {
			m.handover.Add(rec.Name)
		}
	}
}

// handOverNext gives one requested record to the replica asking for it,
// after ending this replica's session of the node.
func (m *Manager) handOverNext(ctx context.Context) bool {
	name, quit := m.handover.Get()
	if quit {
		return false
	}
	defer m.handover.Done(name)
	rec, err := m.leases.Get(name)
	if err != nil {
		m.handover.Forget(name)
		return true
	}
	node, holder, wanted := rec.Annotations[AnnotationNode], ptr.Deref(rec.Spec.HolderIdentity, ""), rec.Annotations[AnnotationWantedBy]
	if holder != m.cfg.Replica || wanted == "" || wanted == m.cfg.Replica {
		m.handover.Forget(name)
		return true
	}
	// Stop serving the node before giving it away, unless this replica
	// claimed it again after the version asking for it (the edge came
	// back): the next event says whether it is still wanted.
	m.mu.Lock()
	if v, ok := m.claimed[node]; ok && v > version(rec) {
		m.mu.Unlock()
		m.handover.Forget(name)
		return true
	}
	delete(m.claimed, node)
	m.mu.Unlock()
	m.cfg.Sessions.EndSession(node, status.Errorf(codes.Aborted, "node %q connected to server %q; this stream is replaced", node, wanted))
	// No write for the node begins from now on; the new owner's must not
	// be followed by one of ours still under way.
	if !m.awaitWrites(ctx, node, m.cfg.RenewInterval) {
		m.log.Warn("handing a node over with a write for it still under way", zap.String("node", node), zap.String("to", wanted))
	}
	wctx, cancel := context.WithTimeout(ctx, m.cfg.RenewInterval)
	defer cancel()
	if _, err := m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace).Update(wctx, m.holdBy(rec, wanted), metav1.UpdateOptions{}); err != nil {
		if !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			m.log.Warn("cannot hand node over", zap.String("node", node), zap.String("to", wanted), zap.Error(err))
		}
		m.handover.AddRateLimited(name)
		return true
	}
	m.handover.Forget(name)
	m.log.Debug("handed node over", zap.String("node", node), zap.String("to", wanted))
	return true
}

// Release clears node's holder (an operator's disconnect): the owner ends
// its session with reason, and the node goes to whichever replica it
// connects to next.
func (m *Manager) Release(ctx context.Context, node, reason string) error {
	rec, err := m.leases.Get(RecordName(node))
	if err != nil {
		return err
	}
	next := rec.DeepCopy()
	next.Spec.HolderIdentity = nil
	delete(next.Annotations, AnnotationWantedBy)
	metav1.SetMetaDataAnnotation(&next.ObjectMeta, AnnotationReleased, reason)
	_, err = m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace).Update(ctx, next, metav1.UpdateOptions{})
	return err
}

// NodeDeleted queues the deletion of node's record, its Node being gone,
// so that records do not outlive their nodes. A node that registers again
// is claimed anew.
func (m *Manager) NodeDeleted(node string) { m.gone.Add(node) }

// forgetNext deletes one queued record of a deleted node: the holder does,
// or any replica when the holder is gone.
func (m *Manager) forgetNext(ctx context.Context) bool {
	node, quit := m.gone.Get()
	if quit {
		return false
	}
	defer m.gone.Done(node)
	rec, err := m.leases.Get(RecordName(node))
	if err != nil {
		// Not in the cache: there is no record, or the cache has not seen
		// its creation yet (a claim just made it); look again a few times.
		if m.gone.NumRequeues(node) < maxForgetRetries {
			m.gone.AddRateLimited(node)
		} else {
			m.gone.Forget(node)
		}
		return true
	}
	if holder := ptr.Deref(rec.Spec.HolderIdentity, ""); holder != m.cfg.Replica && holder != "" && m.alive(holder) {
		m.gone.Forget(node)
		return true // the holder deletes it
	}
	m.mu.Lock()
	delete(m.claimed, node)
	m.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, m.cfg.RenewInterval)
	defer cancel()
	err = m.cfg.Client.CoordinationV1().Leases(m.cfg.Namespace).Delete(wctx, rec.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{ResourceVersion: &rec.ResourceVersion},
	})
	switch {
	case err == nil || apierrors.IsNotFound(err):
		m.gone.Forget(node)
	case apierrors.IsConflict(err) && m.gone.NumRequeues(node) < maxForgetRetries:
		// The cache held an older version (a claim just changed it).
		m.gone.AddRateLimited(node)
	default:
		m.gone.Forget(node)
		m.log.Info("cannot delete the ownership record of a deleted node", zap.String("node", node), zap.Error(err))
	}
	return true
}

// maxForgetRetries bounds how often the deletion of a deleted node's record
// is tried again while the cache lags behind the record.
const maxForgetRetries = 8

var nodeSelector = labels.SelectorFromSet(labels.Set{LabelKind: KindNode})

// version orders the versions of one record: etcd's resource versions are
// increasing integers. Unknown ones order last.
func version(rec *coordinationv1.Lease) int64 {
	v, err := strconv.ParseInt(rec.ResourceVersion, 10, 64)
	if err != nil {
		return 1<<63 - 1
	}
	return v
}
