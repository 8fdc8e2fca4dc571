package ownership_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/edgesync/edgesync/controllers/ownership"
	"github.com/edgesync/edgesync/internal/ownershiptest"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

// waitHolding waits, failed renewal after failed renewal, until r holds
// node's writes: it still serves the node but does not own it now.
func waitHolding(t *testing.T, r *replica, node string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for r.Owns(node) {
		select {
		case <-r.renewFailed:
		case <-timeout:
			t.Fatalf("%s still writes for %s 30s after its renewals began to fail", "replica", node)
		}
	}
	if !r.Serves(node) {
		t.Fatalf("the replica stopped serving %s when its renewals failed; it should hold its reports", node)
	}
}

// beginWrite starts BeginWrite for node in the background.
func beginWrite(ctx context.Context, r *replica, node string) <-chan error {
	got := make(chan error, 1)
	go func() {
		done, err := r.BeginWrite(ctx, node)
		if err == nil {
			done()
		}
		got <- err
	}()
	return got
}

// TestHoldingReplicaKeepsSessionsAndReleasesAfterRenewing: a replica whose
// replica Lease writes fail keeps its sessions (none is ended) but holds
// its nodes' writes (a node Lease or status write waits, none is made);
// once it renews again, the held writes go on, and no other replica took
// anything.
func TestHoldingReplicaKeepsSessionsAndReleasesAfterRenewing(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	history := ownershiptest.Watch(t, client, ns)
	// A 10s Lease: renewed every 2s, held after 5s without one.
	a := startReplicaWith(t, ns, "replica-a", ownership.Config{LeaseDuration: 10 * time.Second})
	const node = "edge-1"
	if err := a.Claim(t.Context(), node); err != nil {
		t.Fatal(err)
	}

	a.failRenewals.Store(true)
	waitHolding(t, a, node)
	held := beginWrite(t.Context(), a, node)
	// Two more failed renewals (a retry every 2/3s): the write still waits.
	for range 2 {
		select {
		case err := <-held:
			t.Fatalf("a write for %s began while its replica could not renew its Lease (err %v)", node, err)
		case <-a.renewFailed:
		case <-time.After(30 * time.Second):
			t.Fatal("no renewal tried within 30s")
		}
	}
	if n := a.sessions.count(node); n != 0 {
		t.Fatalf("the holding replica ended %d sessions of %s; it should keep them", n, node)
	}

	a.failRenewals.Store(false)
	select {
	case err := <-held:
		if err != nil {
			t.Fatalf("the held write was refused after the replica renewed its Lease: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the held write did not go on within 30s of the replica renewing its Lease")
	}
	if !a.Owns(node) {
		t.Error("the replica does not own its node again after renewing")
	}
	if n := a.sessions.count(node); n != 0 {
		t.Errorf("%d sessions of %s ended; a hold that ended in a renewal ends none", n, node)
	}
	history.Check(t)
}

// TestHoldingReplicaNeverWritesANodeTakenMeanwhile: a replica that holds
// long enough for its Lease to expire has one node taken by another
// replica (its edge moved). The held write for that node is refused and
// its session ended, never admitted; after the replica renews late, its
// other node is released only once its record is confirmed.
func TestHoldingReplicaNeverWritesANodeTakenMeanwhile(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	history := ownershiptest.Watch(t, client, ns)
	// A 4s Lease: held after 2s, expired after 4s; the hold lasts as long
	// as the test needs.
	a := startReplicaWith(t, ns, "replica-a", ownership.Config{LeaseDuration: 4 * time.Second, HoldLimit: 5 * time.Minute})
	b := startReplicaWith(t, ns, "replica-b", ownership.Config{LeaseDuration: 30 * time.Second, HandoverTimeout: 2 * time.Second})
	const moved, stayed = "edge-moved", "edge-stayed"
	for _, node := range []string{moved, stayed} {
		if err := a.Claim(t.Context(), node); err != nil {
			t.Fatal(err)
		}
	}

	a.failRenewals.Store(true)
	waitHolding(t, a, moved)
	heldMoved := beginWrite(t.Context(), a, moved)
	heldStayed := beginWrite(t.Context(), a, stayed)

	// The edge of moved reconnects to b once a's Lease has expired (before,
	// b would ask a, which hands nodes over even while holding): b takes
	// the node.
	for expired := time.After(30 * time.Second); ; {
		if _, alive := b.Owner(moved); !alive {
			break
		}
		select {
		case <-a.renewFailed:
		case <-expired:
			t.Fatal("a's Lease still valid for b 30s after a's renewals began to fail")
		}
	}
	if err := b.Claim(t.Context(), moved); err != nil {
		t.Fatalf("b could not take the node of a replica whose Lease expired: %v", err)
	}
	select {
	case err := <-heldMoved:
		if feed.KindOf(err) != feed.ErrUnavailable {
			t.Fatalf("a's held write for %s, taken by b: err %v, want UNAVAILABLE (never admitted)", moved, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("a's held write for %s still waits 30s after b took the node", moved)
	}
	a.sessions.waitEnded(t, moved, codes.Aborted)
	if _, err := a.BeginWrite(t.Context(), moved); err == nil {
		t.Fatalf("a admitted a write for %s, which b owns", moved)
	}

	// a renews late (its Lease expired meanwhile): stayed is confirmed,
	// then released; moved stays b's.
	select {
	case err := <-heldStayed:
		t.Fatalf("a's write for %s began before a renewed its Lease (err %v)", stayed, err)
	default:
	}
	before := a.writes.n.Load()
	a.failRenewals.Store(false)
	select {
	case err := <-heldStayed:
		if err != nil {
			t.Fatalf("a's held write for %s, which nobody took, refused after a renewed: %v", stayed, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("a's held write for %s did not go on within 30s of a renewing", stayed)
	}
	if n := a.writes.n.Load() - before; n < 1 {
		t.Errorf("a released %s after a late renewal with %d record writes; it must confirm the record first", stayed, n)
	}
	if n := a.sessions.count(stayed); n != 0 {
		t.Errorf("a ended its session of %s, which nobody took", stayed)
	}
	if got := holder(t, client, ns, moved); got != "replica-b" {
		t.Errorf("holder of %s = %q after a renewed, want replica-b", moved, got)
	}
	if a.Owns(moved) || !b.Owns(moved) {
		t.Errorf("after a renewed: a owns %s %v, b owns it %v", moved, a.Owns(moved), b.Owns(moved))
	}
	history.Check(t)
}
