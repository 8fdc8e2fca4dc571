package nodestatus_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/nodestatus"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// requestLog records the method and content type of each request a client
// sends.
type requestLog struct {
	mu   sync.Mutex // guards seen
	seen []string
}

func (l *requestLog) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.seen = append(l.seen, r.Method+" "+r.Header.Get("Content-Type"))
		l.mu.Unlock()
		return rt.RoundTrip(r)
	})
}

// take returns the requests seen since the last call.
func (l *requestLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := l.seen
	l.seen = nil
	return seen
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// A steady renewal is one protobuf PUT of the Lease the last renewal wrote
// (no read, no patch for the API server to apply); a Lease someone else
// wrote meanwhile (another replica, after a failover) is renewed all the
// same, keeping what they added, and so is one deleted behind its back.
func TestLeaseRenewalUpdatesTheLeaseItWroteLast(t *testing.T) {
	client := testcluster.Client(t)
	node := createNode(t, client)
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := nodes.Add(node); err != nil {
		t.Fatal(err)
	}
	var log requestLog
	cfg := rest.CopyConfig(testcluster.RESTConfig(t))
	cfg.ContentType = runtime.ContentTypeProtobuf // as controllers.New builds the Lease client
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cfg.Wrap(log.wrap)
	leaseClient, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Truncate(time.Second)
	clk := &clock{now: t0}
	ctrl, err := nodestatus.New(nodestatus.Config{
		Client: client, LeaseClient: leaseClient, Nodes: corelisters.NewNodeLister(nodes), EdgeLabel: edgeLabel,
		LeaseDuration: 40 * time.Second, LeaseRenewInterval: 15 * time.Second,
		Registerer: prometheus.NewRegistry(), Now: clk.Now, FieldManager: "edgesync-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, ctrl)
	leases := client.CoordinationV1().Leases(nodestatus.LeaseNamespace)

	beat := func(at time.Duration) {
		t.Helper()
		clk.set(t0.Add(at))
		results := make(chan *edgesyncv1.StatusResult, 1)
		ctrl.HandleReport(node.Name, &edgesyncv1.SyncRequest{RequestId: 1, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}},
			func(r *edgesyncv1.StatusResult) { results <- r })
		select {
		case r := <-results:
			if codes.Code(r.GetCode()) != codes.OK {
				t.Fatalf("heartbeat at t0+%s answered %v, want OK", at, r)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("heartbeat at t0+%s not answered within 30s", at)
		}
	}
	lease := func(renewedAt time.Duration) *coordinationv1.Lease {
		t.Helper()
		l, err := leases.Get(t.Context(), node.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rt := l.Spec.RenewTime; rt == nil || !rt.Time.Equal(t0.Add(renewedAt)) || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != node.Name {
			t.Fatalf("lease spec %+v, want renewed at t0+%s by %s", l.Spec, renewedAt, node.Name)
		}
		if len(l.OwnerReferences) != 1 || l.OwnerReferences[0].UID != node.UID {
			t.Fatalf("lease owners %v, want Node %s", l.OwnerReferences, node.UID)
		}
		return l
	}
	requests := func(want ...string) {
		t.Helper()
		got := log.take()
		if len(got) != len(want) {
			t.Fatalf("requests %q, want %q", got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("requests %q, want %q", got, want)
			}
		}
	}
	const (
		put   = "PUT " + runtime.ContentTypeProtobuf
		patch = "PATCH application/merge-patch+json"
		post  = "POST " + runtime.ContentTypeProtobuf
	)

	beat(0)
	lease(0)
	requests(patch, post) // no Lease yet: the patch finds none, the create makes it
	beat(15 * time.Second)
	lease(15 * time.Second)
	beat(30 * time.Second)
	lease(30 * time.Second)
	requests(put, put)

	// Another writer changes the Lease: the next update conflicts, and the
	// renewal falls back to a patch that keeps their label.
	other := lease(30 * time.Second)
	other.Labels = map[string]string{"written-by": "another-replica"}
	if _, err := leases.Update(t.Context(), other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	beat(45 * time.Second)
	if got := lease(45 * time.Second).Labels["written-by"]; got != "another-replica" {
		t.Fatalf("the renewal after another writer's update dropped their label: %q", got)
	}
	beat(60 * time.Second)
	lease(60 * time.Second)
	requests(put, patch, put)

	// A Lease deleted behind the controller's back is created again.
	if err := leases.Delete(t.Context(), node.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	beat(75 * time.Second)
	lease(75 * time.Second)
	requests(put, patch, post)
}
