package nodestatus_test

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
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
	refusePuts bool // answer every PUT 403 Forbidden, as RBAC without verb update would
	// before, when set, runs before each request is sent.
	before func(*http.Request)

	mu   sync.Mutex // guards seen
	seen []string
}

func (l *requestLog) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		l.mu.Lock()
		l.seen = append(l.seen, r.Method+" "+r.Header.Get("Content-Type"))
		l.mu.Unlock()
		if l.before != nil {
			l.before(r)
		}
		if l.refusePuts && r.Method == http.MethodPut {
			body := `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,` +
				`"message":"leases.coordination.k8s.io is forbidden: cannot update resource \"leases\""}`
			return &http.Response{
				StatusCode: http.StatusForbidden, Status: "403 Forbidden", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
				Header: http.Header{"Content-Type": []string{"application/json"}}, Body: io.NopCloser(strings.NewReader(body)), Request: r,
			}, nil
		}
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
// renewer is a node and a controller renewing its Lease through a client
// whose requests are logged.
type renewer struct {
	t      *testing.T
	client kubernetes.Interface
	node   *corev1.Node
	ctrl   *nodestatus.Controller
	clk    *clock
	t0     time.Time
	log    *requestLog
	logs   *observer.ObservedLogs
}

func newRenewer(t *testing.T, log *requestLog) *renewer {
	t.Helper()
	client := testcluster.Client(t)
	node := createNode(t, client)
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := nodes.Add(node); err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(testcluster.RESTConfig(t))
	cfg.ContentType = runtime.ContentTypeProtobuf // as controllers.New builds the Lease client
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cfg.Wrap(log.wrap)
	leaseClient, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.WarnLevel)
	r := &renewer{t: t, client: client, node: node, t0: time.Now().Truncate(time.Second), log: log, logs: logs}
	r.clk = &clock{now: r.t0}
	r.ctrl, err = nodestatus.New(nodestatus.Config{
		Client: client, LeaseClient: leaseClient, Nodes: corelisters.NewNodeLister(nodes), EdgeLabel: edgeLabel,
		LeaseDuration: 40 * time.Second, LeaseRenewInterval: 15 * time.Second, LeaseQPS: 100, LeaseBurst: 10,
		Registerer: prometheus.NewRegistry(), Now: r.clk.Now, FieldManager: "edgesync-test", Logger: zap.New(core),
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r.ctrl)
	return r
}

// beat sends a heartbeat at t0+at and waits for its OK.
func (r *renewer) beat(at time.Duration) {
	r.t.Helper()
	r.clk.set(r.t0.Add(at))
	results := make(chan *edgesyncv1.StatusResult, 1)
	r.ctrl.HandleReport(r.node.Name, &edgesyncv1.SyncRequest{RequestId: 1, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}},
		func(res *edgesyncv1.StatusResult) { results <- res })
	select {
	case res := <-results:
		if codes.Code(res.GetCode()) != codes.OK {
			r.t.Fatalf("heartbeat at t0+%s answered %v, want OK", at, res)
		}
	case <-time.After(30 * time.Second):
		r.t.Fatalf("heartbeat at t0+%s not answered within 30s", at)
	}
}

// lease checks the Lease was renewed at t0+renewedAt and returns it.
func (r *renewer) lease(renewedAt time.Duration) *coordinationv1.Lease {
	r.t.Helper()
	l, err := r.client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Get(r.t.Context(), r.node.Name, metav1.GetOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	if rt := l.Spec.RenewTime; rt == nil || !rt.Time.Equal(r.t0.Add(renewedAt)) || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != r.node.Name {
		r.t.Fatalf("lease spec %+v, want renewed at t0+%s by %s", l.Spec, renewedAt, r.node.Name)
	}
	if len(l.OwnerReferences) != 1 || l.OwnerReferences[0].UID != r.node.UID {
		r.t.Fatalf("lease owners %v, want Node %s", l.OwnerReferences, r.node.UID)
	}
	return l
}

// requests checks the requests sent since the last call.
func (r *renewer) requests(want ...string) {
	r.t.Helper()
	got := r.log.take()
	if !slices.Equal(got, want) {
		r.t.Fatalf("requests %q, want %q", got, want)
	}
}

const (
	put   = "PUT " + runtime.ContentTypeProtobuf
	patch = "PATCH application/merge-patch+json"
	post  = "POST " + runtime.ContentTypeProtobuf
)

// A steady renewal is one protobuf PUT of the Lease the last renewal wrote
// (no read, no patch for the API server to apply); a Lease someone else
// wrote meanwhile (another replica, after a failover) is renewed all the
// same, keeping what they added, and so is one deleted behind its back.
func TestLeaseRenewalUpdatesTheLeaseItWroteLast(t *testing.T) {
	r := newRenewer(t, &requestLog{})
	leases := r.client.CoordinationV1().Leases(nodestatus.LeaseNamespace)

	r.beat(0)
	r.lease(0)
	r.requests(patch, post) // no Lease yet: the patch finds none, the create makes it
	r.beat(15 * time.Second)
	r.lease(15 * time.Second)
	r.beat(30 * time.Second)
	r.lease(30 * time.Second)
	r.requests(put, put)

	// Another writer changes the Lease: the next update conflicts, and the
	// renewal falls back to a patch that keeps their label.
	other := r.lease(30 * time.Second)
	other.Labels = map[string]string{"written-by": "another-replica"}
	if _, err := leases.Update(t.Context(), other, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.beat(45 * time.Second)
	if got := r.lease(45 * time.Second).Labels["written-by"]; got != "another-replica" {
		t.Fatalf("the renewal after another writer's update dropped their label: %q", got)
	}
	r.beat(60 * time.Second)
	r.lease(60 * time.Second)
	r.requests(put, patch, put)

	// A Lease deleted behind the controller's back is created again.
	if err := leases.Delete(t.Context(), r.node.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.beat(75 * time.Second)
	r.lease(75 * time.Second)
	r.requests(put, patch, post)
	if n := r.logs.Len(); n != 0 {
		t.Errorf("%d warnings, want none: %v", n, r.logs.All())
	}
}

// An API server that refuses updates (RBAC from before renewals updated
// Leases: create and patch only) still has every Lease renewed: by patch,
// after one refused update and one warning that names the missing verb.
func TestLeaseRenewalPatchesWhenUpdatesAreForbidden(t *testing.T) {
	r := newRenewer(t, &requestLog{refusePuts: true})
	r.beat(0)
	r.beat(15 * time.Second)
	r.lease(15 * time.Second)
	r.beat(30 * time.Second)
	r.lease(30 * time.Second)
	r.requests(patch, post, put, patch, patch)
	warnings := r.logs.FilterMessageSnippet("refused to update a node Lease").All()
	if len(warnings) != 1 || !strings.Contains(warnings[0].Message, "grant verb update on leases in kube-node-lease") {
		t.Fatalf("warnings %v, want one that says to grant verb update", r.logs.All())
	}
}

// A renewal that waited in the queue (behind other nodes' writes, on a
// loaded server) does not make the node's next heartbeat look early: with
// heartbeats every 15 s and the default renew interval, every heartbeat
// still renews, instead of every other one (30 s apart, one lost
// heartbeat from lapsing a 40 s Lease).
func TestLeaseRenewalDelayedInTheQueueKeepsTheCadence(t *testing.T) {
	client := testcluster.Client(t)
	first, second := createNode(t, client), createNode(t, client)
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, n := range []*corev1.Node{first, second} {
		if err := nodes.Add(n); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Truncate(time.Second)
	clk := &clock{now: t0}
	// The first node's write holds the only worker until the second
	// node's heartbeat has arrived, and takes 2 s.
	inFirst, secondArrived := make(chan struct{}), make(chan struct{})
	var once sync.Once
	log := &requestLog{before: func(r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/"+first.Name) {
			once.Do(func() {
				close(inFirst)
				<-secondArrived
				clk.set(clk.Now().Add(2 * time.Second))
			})
		}
	}}
	cfg := rest.CopyConfig(testcluster.RESTConfig(t))
	cfg.Wrap(log.wrap)
	leaseClient, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := nodestatus.New(nodestatus.Config{
		Client: client, LeaseClient: leaseClient, Nodes: corelisters.NewNodeLister(nodes), EdgeLabel: edgeLabel,
		LeaseDuration: 40 * time.Second, LeaseRenewInterval: 15 * time.Second, LeaseWorkers: 1,
		Registerer: prometheus.NewRegistry(), Now: clk.Now, FieldManager: "edgesync-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, ctrl)

	results := make(chan *edgesyncv1.StatusResult, 2)
	heartbeat := func(node string) {
		ctrl.HandleReport(node, &edgesyncv1.SyncRequest{RequestId: 1, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}},
			func(res *edgesyncv1.StatusResult) { results <- res })
	}
	answered := func(n int) {
		t.Helper()
		for range n {
			select {
			case res := <-results:
				if codes.Code(res.GetCode()) != codes.OK {
					t.Fatalf("heartbeat answered %v, want OK", res)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("heartbeat not answered within 30s")
			}
		}
	}
	renewedAt := func(node string, want time.Time) {
		t.Helper()
		l, err := client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Get(t.Context(), node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rt := l.Spec.RenewTime; rt == nil || !rt.Time.Equal(want) {
			t.Fatalf("lease of %s renewed at %v, want %v", node, l.Spec.RenewTime, want)
		}
	}

	heartbeat(first.Name)
	<-inFirst
	heartbeat(second.Name) // arrives at t0, written at t0+2s
	close(secondArrived)
	answered(2)
	renewedAt(second.Name, t0.Add(2*time.Second))

	clk.set(t0.Add(15 * time.Second)) // the next heartbeat, 13 s after the write
	heartbeat(second.Name)
	answered(1)
	renewedAt(second.Name, t0.Add(15*time.Second))
}
