package controllers_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/nodestatus"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
)

func heartbeatReport(id uint64) *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
}

// watchLease watches node's Lease; the watch stops when the test ends.
func watchLease(t *testing.T, client kubernetes.Interface, node string) watch.Interface {
	t.Helper()
	w, err := client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Watch(t.Context(), metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", node).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	deleteLeaseAtCleanup(t, client, node)
	t.Cleanup(w.Stop)
	return w
}

// Heartbeats ten times as frequent as the renew interval are all answered
// OK, and the Lease is written about once per interval, never twice within
// nine tenths of one (the tolerance for heartbeats arriving early).
func TestHeartbeatsFasterThanTheRenewIntervalWriteTheLeaseOncePerInterval(t *testing.T) {
	const renewInterval = 2 * time.Second
	client := testcluster.Client(t)
	node := edgeNode(t, client, "edge")
	reg := prometheus.NewRegistry()
	ctrls := start(t, controllers.Config{DisableDevices: true, LeaseRenewInterval: renewInterval, Registerer: reg}, newRecorder())
	w := watchLease(t, client, node)

	// Writes are counted from the watch: each ADDED or MODIFIED event is
	// a new resourceVersion of the Lease.
	writes := make(chan struct{}, 100)
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Added || ev.Type == watch.Modified {
				writes <- struct{}{}
			}
		}
	}()

	results := make(answers, 1)
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	began := time.Now()
	var heartbeats uint64
	for time.Since(began) < 7*time.Second {
		<-ticker.C
		heartbeats++
		ctrls.HandleReport(node, heartbeatReport(heartbeats), results.answer)
		if r := results.wait(t); r.GetCode() != 0 || r.GetRequestId() != heartbeats {
			t.Fatalf("heartbeat %d answered %v, want OK", heartbeats, r)
		}
	}
	elapsed := time.Since(began)

	ok := metric(t, reg, "edgesync_lease_renewals_total", "ok")
	var seen float64
	deadline := time.After(30 * time.Second)
	for seen < ok {
		select {
		case <-writes:
			seen++
		case <-deadline:
			t.Fatalf("the watch saw %v Lease writes, the metric counts %v", seen, ok)
		}
	}
	minGap := renewInterval - renewInterval/10
	maxWrites := float64(elapsed/minGap) + 1
	if ok < 2 || ok > maxWrites {
		t.Errorf("%d heartbeats over %s with a %s renew interval wrote the Lease %v times, want 2 to %v",
			heartbeats, elapsed.Round(time.Millisecond), renewInterval, ok, maxWrites)
	}
	if skipped := metric(t, reg, "edgesync_lease_renewals_skipped_total", ""); skipped+ok != float64(heartbeats) {
		t.Errorf("%v heartbeats skipped and %v written, want the %d heartbeats between them", skipped, ok, heartbeats)
	}
	count, sum := histogram(t, reg, "edgesync_lease_renewal_interval_seconds")
	if count != uint64(ok)-1 {
		t.Errorf("%d renewal intervals observed for %v renewals, want %v", count, ok, ok-1)
	}
	if count > 0 && sum/float64(count) < minGap.Seconds() {
		t.Errorf("mean interval between renewals %.2fs, shorter than nine tenths of the renew interval %s", sum/float64(count), renewInterval)
	}
}

// With the main client's budget taken by node status writes, Lease
// renewals go through their own client and complete first. (With one
// shared limiter, which grants tokens in order of asking, the renewals
// would queue behind the status writes and finish last.)
func TestLeaseRenewalsHaveTheirOwnAPIBudget(t *testing.T) {
	client := testcluster.Client(t)
	slow := rest.CopyConfig(testcluster.RESTConfig(t))
	slow.QPS, slow.Burst = 1, 1

	const flood, nodes = 4, 12
	// Distinct nodes, so the reports do not coalesce: each is a write.
	// Reports are taken only for existing edge Nodes.
	var flooding, beating []string
	for range flood {
		flooding = append(flooding, edgeNode(t, client, "edge-status"))
	}
	for range nodes {
		node := edgeNode(t, client, "edge")
		deleteLeaseAtCleanup(t, client, node)
		beating = append(beating, node)
	}
	ctrls := start(t, controllers.Config{RESTConfig: slow, DisableDevices: true}, newRecorder())

	statuses := make(answers, flood)
	st := toProto(t, &corev1.NodeStatus{Phase: corev1.NodeRunning}, &corev1pb.NodeStatus{})
	for i, node := range flooding {
		ctrls.HandleReport(node, &edgesyncv1.SyncRequest{
			RequestId: uint64(i + 1), Message: &edgesyncv1.SyncRequest_NodeStatus{NodeStatus: &edgesyncv1.NodeStatus{Status: st}},
		}, statuses.answer)
	}
	heartbeats := make(answers, nodes)
	for i, node := range beating {
		ctrls.HandleReport(node, heartbeatReport(uint64(100+i)), heartbeats.answer)
	}
	for range nodes {
		if r := heartbeats.wait(t); r.GetCode() != 0 {
			t.Fatalf("heartbeat answered %v, want OK", r)
		}
	}
	if answered := len(statuses); answered == flood {
		t.Fatalf("%d Lease renewals completed only after all %d status writes: they share the status writes' budget", nodes, flood)
	}
	// The status writes do finish.
	for range flood {
		if r := statuses.wait(t); r.GetCode() != 0 {
			t.Fatalf("status report answered %v, want OK", r)
		}
	}
}

func deleteLeaseAtCleanup(t *testing.T, client kubernetes.Interface, node string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Delete(ctx, node, metav1.DeleteOptions{})
	})
}

// metric reads a counter from reg, with the given result label if not
// empty; 0 when absent.
func metric(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	for _, m := range family(t, reg, name) {
		for _, l := range m.GetLabel() {
			if l.GetName() == "result" && l.GetValue() != result {
				m = nil
			}
		}
		if m != nil {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// histogram reads a histogram's sample count and sum from reg.
func histogram(t *testing.T, reg *prometheus.Registry, name string) (uint64, float64) {
	t.Helper()
	for _, m := range family(t, reg, name) {
		return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
	}
	return 0, 0
}

func family(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f.GetMetric()
		}
	}
	return nil
}
