package controllers_test

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// gate holds pod status writes until opened, and counts them.
type gate struct {
	next    http.RoundTripper
	open    chan struct{}
	blocked chan struct{} // closed when the first write is held
	once    sync.Once
	writes  atomic.Int64
}

func (g *gate) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPatch && strings.HasSuffix(req.URL.Path, "/status") && strings.Contains(req.URL.Path, "/pods/") {
		g.writes.Add(1)
		g.once.Do(func() { close(g.blocked) })
		<-g.open
	}
	return g.next.RoundTrip(req)
}

// While the API server is slow, reports for one pod coalesce: each is
// answered, the latest status wins, and the writes do not pile up.
func TestSlowAPIServerCoalescesPodStatusReports(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	edge1 := edgeNode(t, client, "edge-1")
	g := &gate{open: make(chan struct{}), blocked: make(chan struct{})}
	cfg := restConfigWith(t, func(next http.RoundTripper) http.RoundTripper { g.next = next; return g })
	rec := newRecorder()
	ctrls := start(t, controllers.Config{RESTConfig: cfg, DisableDevices: true}, rec)
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", edge1, "", ""), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, podKey(ns, "web"), nil)

	results := make(answers, 10)
	ctrls.HandleReport(edge1, podStatusReport(1, pod, corev1.PodStatus{Phase: corev1.PodPending, Message: "report 1"}), results.answer)
	<-g.blocked
	for id := uint64(2); id <= 10; id++ {
		ctrls.HandleReport(edge1, podStatusReport(id, pod, corev1.PodStatus{Phase: corev1.PodRunning, Message: "report " + string(rune('0'+id%10))}), results.answer)
	}
	close(g.open)
	seen := make(map[uint64]bool)
	for range 10 {
		r := results.wait(t)
		if r.GetCode() != 0 {
			t.Errorf("request %d answered %v", r.GetRequestId(), r)
		}
		seen[r.GetRequestId()] = true
	}
	if len(seen) != 10 {
		t.Fatalf("answered requests %v, want each of 1..10 once", seen)
	}
	if n := g.writes.Load(); n != 2 {
		t.Errorf("%d status writes for 10 reports, want 2 (the slow one, then the latest)", n)
	}
	got, err := client.CoreV1().Pods(ns).Get(t.Context(), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Message != "report 0" || got.Status.Phase != corev1.PodRunning {
		t.Errorf("pod status %q %q, want the latest report's", got.Status.Phase, got.Status.Message)
	}
}
