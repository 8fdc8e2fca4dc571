package nodestatus_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/controllers/nodestatus"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}

const edgeLabel = "node-role.kubernetes.io/edge"

// clock is a settable Config.Now.
type clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func emptyNodeLister() corelisters.NodeLister {
	return corelisters.NewNodeLister(cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}))
}

func TestNewRejectsARenewIntervalOfHalfTheDuration(t *testing.T) {
	for _, tt := range []struct {
		name          string
		duration, got time.Duration
		ok            bool
	}{
		{"default three eighths", 40 * time.Second, 0, true},
		{"just under half", 40 * time.Second, 19 * time.Second, true},
		{"half", 40 * time.Second, 20 * time.Second, false},
		{"longer than the lease", 40 * time.Second, time.Minute, false},
		{"negative", 40 * time.Second, -time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := nodestatus.New(nodestatus.Config{
				Client: testcluster.Client(t), Nodes: emptyNodeLister(), EdgeLabel: edgeLabel,
				LeaseDuration: tt.duration, LeaseRenewInterval: tt.got,
			})
			if tt.ok && err != nil {
				t.Fatalf("New: %v", err)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), "less than half the lease duration")) {
				t.Fatalf("New with renew interval %s and duration %s: %v, want an error saying it must be less than half", tt.got, tt.duration, err)
			}
		})
	}
}

// TestLeaseRenewal drives one node's heartbeats through a settable clock
// against the real API server.
func TestLeaseRenewal(t *testing.T) {
	client := testcluster.Client(t)
	node := createNode(t, client)
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := nodes.Add(node); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	reg := prometheus.NewRegistry()
	t0 := time.Now().Truncate(time.Second)
	clk := &clock{now: t0}
	ctrl, err := nodestatus.New(nodestatus.Config{
		Client: client, Nodes: corelisters.NewNodeLister(nodes), EdgeLabel: edgeLabel,
		LeaseDuration: 40 * time.Second, LeaseRenewInterval: 10 * time.Second,
		Registerer: reg, Logger: zap.New(core), Now: clk.Now, FieldManager: "edgesync-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, ctrl)

	leases := client.CoordinationV1().Leases(nodestatus.LeaseNamespace)
	heartbeat := func(name string, at time.Duration) codes.Code {
		t.Helper()
		clk.set(t0.Add(at))
		results := make(chan *edgesyncv1.StatusResult, 1)
		ctrl.HandleReport(name, &edgesyncv1.SyncRequest{RequestId: 7, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}},
			func(r *edgesyncv1.StatusResult) { results <- r })
		select {
		case r := <-results:
			if r.GetRequestId() != 7 {
				t.Fatalf("heartbeat answer %v carries the wrong request id", r)
			}
			return codes.Code(r.GetCode())
		case <-time.After(30 * time.Second):
			t.Fatalf("heartbeat at t0+%s not answered within 30s", at)
			return codes.Unknown
		}
	}
	beat := func(at time.Duration) {
		t.Helper()
		if c := heartbeat(node.Name, at); c != codes.OK {
			t.Fatalf("heartbeat at t0+%s answered %v, want OK", at, c)
		}
	}
	// renewedAt checks the Lease as the node lifecycle controller reads it.
	renewedAt := func(want time.Duration) {
		t.Helper()
		lease, err := leases.Get(t.Context(), node.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("lease: %v", err)
		}
		s := lease.Spec
		if s.HolderIdentity == nil || *s.HolderIdentity != node.Name || s.LeaseDurationSeconds == nil || *s.LeaseDurationSeconds != 40 ||
			s.RenewTime == nil || !s.RenewTime.Time.Equal(t0.Add(want)) {
			t.Fatalf("lease spec %+v, want holder %s, 40 seconds, renewed at t0+%s", s, node.Name, want)
		}
		if len(lease.OwnerReferences) != 1 || lease.OwnerReferences[0].UID != node.UID || lease.OwnerReferences[0].Kind != "Node" {
			t.Fatalf("lease owners %v, want Node %s", lease.OwnerReferences, node.UID)
		}
	}
	type counts struct{ ok, errors, skipped, intervals float64 }
	metricsAre := func(want counts) {
		t.Helper()
		got := counts{
			ok:        value(t, reg, "edgesync_lease_renewals_total", "ok"),
			errors:    value(t, reg, "edgesync_lease_renewals_total", "error"),
			skipped:   value(t, reg, "edgesync_lease_renewals_skipped_total", ""),
			intervals: value(t, reg, "edgesync_lease_renewal_interval_seconds", ""),
		}
		if got != want {
			t.Fatalf("metrics %+v, want %+v", got, want)
		}
	}
	lagWarnings := func() int {
		return logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("renewals lag").Len()
	}

	t.Run("the first heartbeat creates the Lease", func(t *testing.T) {
		beat(0)
		renewedAt(0)
		metricsAre(counts{ok: 1})
	})
	t.Run("a heartbeat within the renew interval writes nothing", func(t *testing.T) {
		beat(5 * time.Second)
		renewedAt(0)
		metricsAre(counts{ok: 1, skipped: 1})
	})
	t.Run("a deleted Lease is recreated at the next due renewal", func(t *testing.T) {
		if err := leases.Delete(t.Context(), node.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		beat(8 * time.Second) // not due: no read, no write
		if _, err := leases.Get(t.Context(), node.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("lease after a heartbeat that was not due: %v, want NotFound", err)
		}
		beat(11 * time.Second)
		renewedAt(11 * time.Second)
		metricsAre(counts{ok: 2, skipped: 2, intervals: 1})
		if lagWarnings() != 0 {
			t.Fatalf("warned about lag after an 11s interval: %v", logs.All())
		}
	})
	t.Run("an interval over three quarters of the duration warns at most once a minute", func(t *testing.T) {
		beat(31 * time.Second) // 20s since the last renewal: late, not lagging
		renewedAt(31 * time.Second)
		if n := lagWarnings(); n != 0 {
			t.Fatalf("%d lag warnings after a 20s interval, want 0", n)
		}
		beat(62 * time.Second) // 31s since the last renewal
		renewedAt(62 * time.Second)
		if n := lagWarnings(); n != 1 {
			t.Fatalf("%d lag warnings after a 31s interval, want 1", n)
		}
		w := logs.FilterMessageSnippet("renewals lag").All()[0]
		for _, want := range []string{"kubernetes.leaseQPS", "controllers.leaseRenewInterval"} {
			if !strings.Contains(w.Message, want) {
				t.Errorf("warning %q does not say to raise %s", w.Message, want)
			}
		}
		if w.ContextMap()["node"] != node.Name {
			t.Errorf("warning fields %v do not name the node", w.ContextMap())
		}
		beat(93 * time.Second) // lags again 31s after the warning
		if n := lagWarnings(); n != 1 {
			t.Fatalf("%d lag warnings within a minute, want 1", n)
		}
		beat(124 * time.Second) // 62s after the warning
		if n := lagWarnings(); n != 2 {
			t.Fatalf("%d lag warnings a minute after the first, want 2", n)
		}
		metricsAre(counts{ok: 6, skipped: 2, intervals: 5})
	})
	t.Run("a new session renews at its first heartbeat", func(t *testing.T) {
		ctrl.SessionEnded(node.Name)
		beat(131 * time.Second)
		renewedAt(131 * time.Second)
		ctrl.NodeDeleted(node.Name)
		beat(132 * time.Second)
		renewedAt(132 * time.Second)
		// Neither gap after forgetting the node counts as an interval.
		metricsAre(counts{ok: 8, skipped: 2, intervals: 5})
	})
	t.Run("a heartbeat of a node without an edge Node is refused without a write", func(t *testing.T) {
		if c := heartbeat("no-such-node", 133*time.Second); c != codes.NotFound {
			t.Fatalf("heartbeat of a node with no Node answered %v, want NotFound", c)
		}
		cloud := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cloud-node", UID: "cloud-uid"}}
		if err := nodes.Add(cloud); err != nil {
			t.Fatal(err)
		}
		if c := heartbeat(cloud.Name, 133*time.Second); c != codes.PermissionDenied {
			t.Fatalf("heartbeat of a cloud node answered %v, want PermissionDenied", c)
		}
		for _, name := range []string{"no-such-node", cloud.Name} {
			if _, err := leases.Get(t.Context(), name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("lease of %s after a refused heartbeat: %v, want NotFound", name, err)
			}
		}
		metricsAre(counts{ok: 8, skipped: 2, intervals: 5})
	})
	t.Run("a heartbeat after the Node left the cache is refused", func(t *testing.T) {
		ctrl.NodeDeleted(node.Name)
		if err := nodes.Delete(node); err != nil {
			t.Fatal(err)
		}
		if c := heartbeat(node.Name, 134*time.Second); c != codes.NotFound {
			t.Fatalf("heartbeat after the Node left the cache answered %v, want NotFound", c)
		}
		renewedAt(132 * time.Second)
		if err := nodes.Add(node); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a failed write is counted and answered", func(t *testing.T) {
		bad := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "Not_A_Name", UID: "bad-uid", Labels: map[string]string{edgeLabel: ""}}}
		if err := nodes.Add(bad); err != nil {
			t.Fatal(err)
		}
		if c := heartbeat(bad.Name, 133*time.Second); c != codes.InvalidArgument {
			t.Fatalf("heartbeat of a node whose name cannot name a Lease answered %v, want InvalidArgument", c)
		}
		metricsAre(counts{ok: 8, errors: 1, skipped: 2, intervals: 5})
	})
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != lagWarnings() {
		t.Errorf("warnings besides lag warnings: %v", logs.All())
	}
}

// run runs ctrl until the test ends.
func run(t *testing.T, ctrl *nodestatus.Controller) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ctrl.Run(ctx, 2) }()
	t.Cleanup(func() { cancel(); <-done })
}

// createNode creates an edge Node and deletes it, and its Lease, when the
// test ends.
func createNode(t *testing.T, client kubernetes.Interface) *corev1.Node {
	t.Helper()
	name := testcluster.UniqueName("edge")
	node, err := client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name, Labels: map[string]string{edgeLabel: ""},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
		_ = client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Delete(ctx, name, metav1.DeleteOptions{})
	})
	return node
}

// value reads a counter (with result label, if given) or a histogram's
// sample count from reg; 0 when absent.
func value(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if result != "" && !hasLabel(m, "result", result) {
				continue
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
