package leasekeeper_test

import (
	"context"
	"encoding/json"
	"net/http"
	"path"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers/leasekeeper"
	"github.com/edgesync/edgesync/controllers/ownership"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}

const (
	edgeLabel     = "test.edgesync.io/edge"
	leaseDuration = 6 * time.Second
	renewInterval = 1500 * time.Millisecond
)

// patches records the node Lease renewals each keeper made.
type patches struct {
	mu  sync.Mutex             // guards by
	by  map[string][]string    // node -> replicas, one per successful patch
	at  map[string][]time.Time // node -> when each was sent
	all int
}

func (p *patches) wrap(replica string) func(http.RoundTripper) http.RoundTripper {
	return func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(req *http.Request) (*http.Response, error) {
			sent := time.Now()
			res, err := rt.RoundTrip(req)
			if req.Method == http.MethodPatch && err == nil && res.StatusCode == http.StatusOK {
				node := path.Base(req.URL.Path)
				p.mu.Lock()
				p.by[node] = append(p.by[node], replica)
				p.at[node] = append(p.at[node], sent)
				p.all++
				p.mu.Unlock()
			}
			return res, err
		})
	}
}

func (p *patches) of(node string) ([]string, []time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.by[node]), slices.Clone(p.at[node])
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// startKeeper runs an ownership Manager and a Keeper for replica id.
func startKeeper(t *testing.T, ns, id string, p *patches) *ownership.Manager {
	t.Helper()
	client := testcluster.Client(t)
	m, err := ownership.New(ownership.Config{Client: client, Namespace: ns, Replica: id, LeaseDuration: 30 * time.Second, Logger: zaptest.NewLogger(t).Named(id)})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.CopyConfig(testcluster.RESTConfig(t))
	cfg.Wrap(p.wrap(id))
	leaseClient, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	nodes := factory.Core().V1().Nodes()
	k, err := leasekeeper.New(leasekeeper.Config{
		Orphans: m.Orphans, Nodes: nodes.Lister(), EdgeLabel: edgeLabel, LeaseClient: leaseClient,
		LeaseDuration: leaseDuration, RenewInterval: renewInterval, Logger: zaptest.NewLogger(t).Named(id + "-keeper"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { m.Run(ctx, noSessions{}) })
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	wg.Go(func() { k.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait(); factory.Shutdown() })
	select {
	case <-m.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("replica %s not ready within 30s", id)
	}
	return m
}

type noSessions struct{}

func (noSessions) EndSession(string, error) {}

// edgeNode creates an edge Node with the Ready condition ready and its
// Lease renewed now.
func edgeNode(t *testing.T, client kubernetes.Interface, name string, ready corev1.ConditionStatus) {
	t.Helper()
	n, err := client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{edgeLabel: ""}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	now := metav1.Now()
	status, err := json.Marshal(map[string]any{"status": corev1.NodeStatus{Conditions: []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: ready, LastHeartbeatTime: now, LastTransitionTime: now, Reason: "Test"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, status, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	renewed := metav1.NewMicroTime(time.Now())
	if _, err := client.CoordinationV1().Leases(leasekeeper.LeaseNamespace).Create(t.Context(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: name, UID: n.UID}}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To(name), LeaseDurationSeconds: ptr.To(int32(leaseDuration / time.Second)), RenewTime: &renewed},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestSurvivorsKeepADeadReplicasNodeLeases: a replica dies holding edge
// nodes. Each node's Lease is then renewed by exactly one survivor, with
// no lapse, until its edge is claimed (the keeper stops) or for at most
// one Lease duration after the death (a node never claimed lapses then);
// a node the cloud sees as not ready is never renewed.
func TestSurvivorsKeepADeadReplicasNodeLeases(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	prefix := testcluster.UniqueName("kept")
	nodes := []string{prefix + "-0", prefix + "-1", prefix + "-2", prefix + "-3", prefix + "-4", prefix + "-5"}
	notReady := prefix + "-down"
	for _, n := range nodes {
		edgeNode(t, client, n, corev1.ConditionTrue)
	}
	edgeNode(t, client, notReady, corev1.ConditionFalse)

	// The dying replica last renewed its 4s Lease now: silent (missed
	// renewal) 3s from now, expired 4s from now.
	renewed := time.Now()
	at := metav1.NewMicroTime(renewed)
	leases := client.CoordinationV1().Leases(ns)
	if _, err := leases.Create(t.Context(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: ownership.ReplicaLeaseName("replica-dying"), Labels: map[string]string{ownership.LabelKind: ownership.KindReplica}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("replica-dying"), LeaseDurationSeconds: ptr.To(int32(4)), RenewTime: &at},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	silent := renewed.Add(2*time.Second + time.Second)
	for _, n := range append(slices.Clone(nodes), notReady) {
		if _, err := leases.Create(t.Context(), &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name:        ownership.RecordName(n),
				Labels:      map[string]string{ownership.LabelKind: ownership.KindNode},
				Annotations: map[string]string{ownership.AnnotationNode: n},
			},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("replica-dying"), AcquireTime: &at},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	p := &patches{by: map[string][]string{}, at: map[string][]time.Time{}}
	b := startKeeper(t, ns, "replica-b", p)
	startKeeper(t, ns, "replica-c", p)

	// The edge of nodes[0] reconnects to b, which takes it once the dying
	// replica's Lease expires: its keeper stops.
	moved := nodes[0]
	if err := b.Claim(t.Context(), moved); err != nil {
		t.Fatalf("b claims a dead replica's node: %v", err)
	}
	claimed := time.Now()

	// Past the keeping bound (Grace = the Lease duration after the death)
	// and one renewal interval beyond.
	end := silent.Add(leaseDuration + renewInterval + time.Second)
	select {
	case <-time.After(time.Until(end)):
	case <-t.Context().Done():
	}

	keepers := map[string]int{}
	for _, n := range nodes[1:] {
		by, sent := p.of(n)
		if len(by) == 0 {
			t.Errorf("the Lease of %s, a Ready node of a dead replica, was never renewed", n)
			continue
		}
		if slices.ContainsFunc(by, func(r string) bool { return r != by[0] }) {
			t.Errorf("the Lease of %s was renewed by several replicas: %v", n, by)
		}
		keepers[by[0]]++
		// No lapse until the keeping bound: the first renewal came before
		// the Lease (renewed at the start) expired, and no gap between
		// renewals exceeded the duration.
		last := renewed
		for _, s := range sent {
			if s.Sub(last) >= leaseDuration {
				t.Errorf("the Lease of %s lapsed: %s without a renewal before %s", n, s.Sub(last), s.Format(time.StampMilli))
			}
			last = s
		}
		if first := sent[0]; first.Before(silent.Add(-100 * time.Millisecond)) {
			t.Errorf("the Lease of %s was renewed at %s, before its replica went silent (%s)", n, first.Format(time.StampMilli), silent.Format(time.StampMilli))
		}
		if l := sent[len(sent)-1]; !l.Before(silent.Add(leaseDuration)) {
			t.Errorf("the Lease of %s was still renewed %s after its replica went silent: keeping must end after one Lease duration", n, l.Sub(silent))
		}
	}
	t.Logf("keepers: %v", keepers)
	if _, sent := p.of(moved); len(slices.DeleteFunc(sent, func(s time.Time) bool { return s.Before(claimed) })) > 1 {
		t.Errorf("the Lease of %s was renewed by a keeper %d times after b claimed it; at most one renewal under way may land", moved, len(sent))
	}
	if by, _ := p.of(notReady); len(by) != 0 {
		t.Errorf("the Lease of %s, whose Node is not Ready, was renewed %d times; a keeper must never revive a node", notReady, len(by))
	}
}
