package ownership_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers/ownership"
	"github.com/edgesync/edgesync/internal/ownershiptest"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}

// sessions records the sessions a replica was told to end.
type sessions struct {
	mu    sync.Mutex // guards ended
	ended map[string][]error
	wake  chan struct{} // closed and replaced on every end
}

func newSessions() *sessions {
	return &sessions{ended: make(map[string][]error), wake: make(chan struct{})}
}

func (s *sessions) EndSession(node string, reason error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended[node] = append(s.ended[node], reason)
	close(s.wake)
	s.wake = make(chan struct{})
}

// waitEnded waits until node's session was ended with code.
func (s *sessions) waitEnded(t *testing.T, node string, code codes.Code) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		s.mu.Lock()
		for _, err := range s.ended[node] {
			if feed.KindOf(err).Code() == code {
				s.mu.Unlock()
				return
			}
		}
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-timeout:
			t.Fatalf("session of %s not ended with %s within 30s", node, code)
		}
	}
}

func (s *sessions) count(node string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ended[node])
}

// writes counts the requests that change something.
type writes struct{ n atomic.Int64 }

func (w *writes) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		switch req.Method {
		case http.MethodGet, http.MethodHead:
		default:
			w.n.Add(1)
		}
		return rt.RoundTrip(req)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

type replica struct {
	*ownership.Manager
	sessions *sessions
	writes   *writes
	stop     func()

	// failRenewals makes every write of the replica Lease fail, as an API
	// server that cannot be reached would; renewFailed gets a value after
	// each failed write.
	failRenewals atomic.Bool
	renewFailed  chan struct{}
}

// startReplica runs a Manager for replica id in ns until stop or the end
// of the test.
func startReplica(t *testing.T, ns, id string, leaseDuration time.Duration) *replica {
	t.Helper()
	return startReplicaWith(t, ns, id, ownership.Config{LeaseDuration: leaseDuration})
}

// startReplicaWith is startReplica with more of the Manager's settings.
func startReplicaWith(t *testing.T, ns, id string, settings ownership.Config) *replica {
	t.Helper()
	w := &writes{}
	cfg := rest.CopyConfig(testcluster.RESTConfig(t))
	cfg.Wrap(w.wrap)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{sessions: newSessions(), writes: w, renewFailed: make(chan struct{}, 1)}
	rcfg := rest.CopyConfig(testcluster.RESTConfig(t))
	rcfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(req *http.Request) (*http.Response, error) {
			if req.Method != http.MethodGet && r.failRenewals.Load() {
				select {
				case r.renewFailed <- struct{}{}:
				default:
				}
				return nil, errors.New("test: the API server cannot be reached")
			}
			return rt.RoundTrip(req)
		})
	})
	replicaClient, err := kubernetes.NewForConfig(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	r.Manager, err = ownership.New(ownership.Config{
		Client: client, ReplicaClient: replicaClient, Namespace: ns, Replica: id, Address: id + ".example:7443",
		LeaseDuration: settings.LeaseDuration, HandoverTimeout: settings.HandoverTimeout, HoldLimit: settings.HoldLimit,
		Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, r.sessions); close(done) }()
	r.stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(r.stop)
	select {
	case <-r.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("replica %s not ready within 30s", id)
	}
	return r
}

func holder(t *testing.T, client kubernetes.Interface, ns, node string) string {
	t.Helper()
	rec, err := client.CoordinationV1().Leases(ns).Get(t.Context(), ownership.RecordName(node), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ptr.Deref(rec.Spec.HolderIdentity, "")
}

// TestOneOwnerPerNode: a node moving between live replicas is handed over
// (the old owner ends its session first); a dead replica's node is taken at
// once; an operator's release ends the owner's session; and the history
// of the record never shows a live holder losing a node it did not give.
func TestOneOwnerPerNode(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	history := ownershiptest.Watch(t, client, ns)

	a := startReplica(t, ns, "replica-a", 30*time.Second)
	b := startReplica(t, ns, "replica-b", 30*time.Second)
	const node = "edge-1"

	if err := a.Claim(t.Context(), node); err != nil {
		t.Fatalf("a claims a new node: %v", err)
	}
	if got := holder(t, client, ns, node); got != "replica-a" {
		t.Fatalf("holder after a's claim = %q, want replica-a", got)
	}
	if !a.Owns(node) {
		t.Fatal("a does not own the node it claimed")
	}
	// Reconnecting to the owner writes nothing.
	before := a.writes.n.Load()
	if err := a.Claim(t.Context(), node); err != nil {
		t.Fatal(err)
	}
	if n := a.writes.n.Load() - before; n > 1 { // at most a replica Lease renewal
		t.Errorf("claiming an owned node again made %d writes", n)
	}

	// The edge moves to b while a still holds it: a ends its session and
	// hands the node over.
	if err := b.Claim(t.Context(), node); err != nil {
		t.Fatalf("b claims a's node: %v", err)
	}
	a.sessions.waitEnded(t, node, codes.Aborted)
	if got := holder(t, client, ns, node); got != "replica-b" {
		t.Fatalf("holder after the handover = %q, want replica-b", got)
	}
	if a.Owns(node) || !b.Owns(node) {
		t.Fatalf("after the handover a owns %v, b owns %v", a.Owns(node), b.Owns(node))
	}
	if owner, ok := a.Owner(node); !ok || owner != "replica-b" {
		// a's cache may lag b's write by a watch event.
		waitOwner(t, a.Manager, node, "replica-b")
	}
	if addr, ok := a.Address("replica-b"); !ok || addr != "replica-b.example:7443" {
		t.Errorf("a sees b's address %q, %v", addr, ok)
	}

	// And back: flapping never leaves both owning it.
	if err := a.Claim(t.Context(), node); err != nil {
		t.Fatalf("a claims the node back: %v", err)
	}
	b.sessions.waitEnded(t, node, codes.Aborted)

	// An operator releases it: the owner ends the session.
	waitOwner(t, b.Manager, node, "replica-a")
	if err := b.Release(t.Context(), node, "maintenance"); err != nil {
		t.Fatal(err)
	}
	a.sessions.waitEnded(t, node, codes.Unavailable)

	// A replica that stops cleanly deletes its Lease: its nodes move at
	// once, with no handover to wait for.
	const other = "edge-2"
	if err := a.Claim(t.Context(), other); err != nil {
		t.Fatal(err)
	}
	a.stop()
	waitOwner(t, b.Manager, other, "")
	if err := b.Claim(t.Context(), other); err != nil {
		t.Fatalf("b takes the node of a stopped replica: %v", err)
	}

	// A replica that died (a Lease no longer renewed) loses its nodes to
	// the next claim.
	dead := deadReplica(t, client, ns, "replica-dead", "edge-3")
	if err := b.Claim(t.Context(), "edge-3"); err != nil {
		t.Fatalf("b takes the node of a dead replica: %v", err)
	}
	if got := holder(t, client, ns, "edge-3"); got != "replica-b" {
		t.Fatalf("holder after taking over from %s = %q", dead, got)
	}

	// A deleted Node's record goes with it.
	b.NodeDeleted("edge-3")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := client.CoordinationV1().Leases(ns).Get(t.Context(), ownership.RecordName("edge-3"), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the record of a deleted node is still there (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	history.Check(t)
}

// TestRenewalsDoNotGrowWithNodes: a replica owning many nodes writes one
// replica Lease per renew interval, whatever the number of nodes.
func TestRenewalsDoNotGrowWithNodes(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	a := startReplica(t, ns, "replica-a", 3*time.Second) // renewed every second
	const nodes = 200
	before := a.writes.n.Load()
	for i := range nodes {
		if err := a.Claim(t.Context(), testcluster.UniqueName("edge")); err != nil {
			t.Fatal(err)
		}
		_ = i
	}
	claimWrites := a.writes.n.Load() - before
	// Count the writes over three renewals of the replica Lease.
	w, err := client.CoordinationV1().Leases(ns).Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + ownership.ReplicaLeaseName("replica-a")})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	renewals := 0
	var start int64
	for renewals < 4 {
		select {
		case ev := <-w.ResultChan():
			if ev.Type != watch.Modified {
				continue
			}
			if renewals == 0 {
				start = a.writes.n.Load()
			}
			renewals++
		case <-time.After(30 * time.Second):
			t.Fatal("the replica Lease was not renewed within 30s")
		}
	}
	steady := a.writes.n.Load() - start
	t.Logf("%d nodes: %d writes to claim them (%d renewals among them), %d writes over 3 renew intervals", nodes, claimWrites, claimWrites-nodes, steady)
	if claimWrites > nodes+5 {
		t.Errorf("claiming %d new nodes made %d writes, want one each", nodes, claimWrites)
	}
	if steady > 4 {
		t.Errorf("owning %d nodes cost %d writes over 3 renew intervals, want 3 (one replica Lease renewal each)", nodes, steady)
	}
}

func waitOwner(t *testing.T, m *ownership.Manager, node, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _ := m.Owner(node)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("owner of %s is %q, want %q", node, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// deadReplica writes the records a replica leaves when it dies: its Lease,
// last renewed long ago, and a node record naming it.
func deadReplica(t *testing.T, client kubernetes.Interface, ns, id, node string) string {
	t.Helper()
	long := metav1.NewMicroTime(time.Now().Add(-time.Hour))
	leases := client.CoordinationV1().Leases(ns)
	if _, err := leases.Create(t.Context(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: ownership.ReplicaLeaseName(id), Labels: map[string]string{ownership.LabelKind: ownership.KindReplica}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(id), LeaseDurationSeconds: ptr.To(int32(30)), RenewTime: &long},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := leases.Create(t.Context(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        ownership.RecordName(node),
			Labels:      map[string]string{ownership.LabelKind: ownership.KindNode},
			Annotations: map[string]string{ownership.AnnotationNode: node},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(id), AcquireTime: &long},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestDyingReplicasNodesWaitForItsLease: the edges of a replica that was
// just killed reconnect to the others while its Lease is still valid. A
// claim then takes the node once that Lease expires and not before, even
// when that is longer than the handover timeout, and never writes a
// handover request the dead replica could not answer: one write per node.
func TestDyingReplicasNodesWaitForItsLease(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	history := ownershiptest.Watch(t, client, ns)
	b := startReplicaWith(t, ns, "replica-b", ownership.Config{LeaseDuration: 30 * time.Second, HandoverTimeout: time.Second})

	// replica-dying last renewed its 6s Lease 4.5s ago (a live replica
	// renews at least every 3s): valid for 1.5s more.
	const node = "edge-1"
	rec, expires := dyingReplica(t, client, ns, node, 6*time.Second, 4500*time.Millisecond)
	leases := client.CoordinationV1().Leases(ns)
	w, err := leases.Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + rec.Name, ResourceVersion: rec.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	waitOwner(t, b.Manager, node, "replica-dying")

	takeAfterExpiry(t, client, ns, b, node, expires)
	// Every version of the record b wrote: exactly the takeover.
	var versions []*coordinationv1.Lease
	for len(versions) == 0 || ptr.Deref(versions[len(versions)-1].Spec.HolderIdentity, "") != "replica-b" {
		select {
		case ev := <-w.ResultChan():
			if l, ok := ev.Object.(*coordinationv1.Lease); ok {
				versions = append(versions, l)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no watch event for b's takeover")
		}
	}
	for _, v := range versions {
		if by := v.Annotations[ownership.AnnotationWantedBy]; by != "" {
			t.Errorf("b asked the dying replica for the node (wanted-by %q): a write nobody answers", by)
		}
	}
	if len(versions) != 1 {
		t.Errorf("b wrote the record %d times, want once", len(versions))
	}
	history.Check(t)
}

// TestHandoverWaitsForWritesUnderWay: a write for a node (its Lease, its
// status) that began while this replica owned it finishes before the node
// is handed to the replica the edge moved to, and no write begins once the
// handover started: the new owner's writes are never followed by the old
// owner's.
func TestHandoverWaitsForWritesUnderWay(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	history := ownershiptest.Watch(t, client, ns)
	a := startReplica(t, ns, "replica-a", 30*time.Second)
	b := startReplica(t, ns, "replica-b", 30*time.Second)
	const node = "edge-1"
	if err := a.Claim(t.Context(), node); err != nil {
		t.Fatal(err)
	}
	done, err := a.BeginWrite(t.Context(), node)
	if err != nil {
		t.Fatalf("a may not write for the node it owns: %v", err)
	}

	claimed := make(chan error, 1)
	go func() { claimed <- b.Claim(t.Context(), node) }()
	a.sessions.waitEnded(t, node, codes.Aborted)
	if _, err := a.BeginWrite(t.Context(), node); feed.KindOf(err) != feed.ErrUnavailable {
		t.Fatalf("a write began on a after its session was ended for a handover: %v", err)
	}
	// The handover waits for a's write: a second is far longer than a
	// record update takes, so a handover that did not wait shows here.
	select {
	case err := <-claimed:
		t.Fatalf("b took the node while a's write for it was under way (%v)", err)
	case <-time.After(time.Second):
	}
	if got := holder(t, client, ns, node); got != "replica-a" {
		t.Fatalf("holder = %q while a's write is under way, want replica-a", got)
	}

	done()
	select {
	case err := <-claimed:
		if err != nil {
			t.Fatalf("b's claim after a's write finished: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("b did not get the node after a's write finished")
	}
	if _, err := b.BeginWrite(t.Context(), node); err != nil {
		t.Fatalf("b may not write for the node it now owns: %v", err)
	}
	history.Check(t)
}

// dyingReplica writes the records of a replica that stopped renewing its
// Lease of duration renewedAgo ago, holding node; it returns the record
// and when the Lease expires.
func dyingReplica(t *testing.T, client kubernetes.Interface, ns, node string, duration, renewedAgo time.Duration) (*coordinationv1.Lease, time.Time) {
	t.Helper()
	renewed := time.Now().Add(-renewedAgo)
	at := metav1.NewMicroTime(renewed)
	leases := client.CoordinationV1().Leases(ns)
	if _, err := leases.Create(t.Context(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: ownership.ReplicaLeaseName("replica-dying"), Labels: map[string]string{ownership.LabelKind: ownership.KindReplica}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("replica-dying"), LeaseDurationSeconds: ptr.To(int32(duration / time.Second)), RenewTime: &at},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec, err := leases.Create(t.Context(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        ownership.RecordName(node),
			Labels:      map[string]string{ownership.LabelKind: ownership.KindNode},
			Annotations: map[string]string{ownership.AnnotationNode: node},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("replica-dying"), AcquireTime: &at},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return rec, renewed.Add(duration)
}

// TestClaimOutwaitsAReplicaThatDiesWhileAsked: the edges of a replica
// killed just after it renewed its Lease reconnect while it still looks
// alive, so the claim asks it for the node. When the handover timeout
// passes and the holder has missed a renewal since, the claim waits for
// its Lease to expire and takes the node, instead of failing (which would
// end the edge's session, already synced, for nothing).
func TestClaimOutwaitsAReplicaThatDiesWhileAsked(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	history := ownershiptest.Watch(t, client, ns)
	b := startReplicaWith(t, ns, "replica-b", ownership.Config{LeaseDuration: 30 * time.Second, HandoverTimeout: 6 * time.Second})
	// An 8s Lease renewed half a second ago: it looks alive for 4.5s more
	// (missed renewal after 5s), and expires 7.5s from now, after the 6s
	// handover timeout.
	const node = "edge-1"
	_, expires := dyingReplica(t, client, ns, node, 8*time.Second, 500*time.Millisecond)
	waitOwner(t, b.Manager, node, "replica-dying")
	takeAfterExpiry(t, client, ns, b, node, expires)
	history.Check(t)
}

// takeAfterExpiry has replica-b claim node from replica-dying and fails
// unless the claim succeeds, not before the dying replica's Lease expires.
func takeAfterExpiry(t *testing.T, client kubernetes.Interface, ns string, b *replica, node string, expires time.Time) {
	t.Helper()
	if err := b.Claim(t.Context(), node); err != nil {
		t.Fatalf("b takes the node of a replica that stopped renewing: %v", err)
	}
	if now := time.Now(); now.Before(expires) {
		t.Fatalf("b took the node %s before the dying replica's Lease expired", expires.Sub(now))
	}
	if got := holder(t, client, ns, node); got != "replica-b" {
		t.Fatalf("holder = %q, want replica-b", got)
	}
}
