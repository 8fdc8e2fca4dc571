package edgeclient

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// After a reconnect the client reports its node status and the status of
// every pod it still holds again, although nothing changed at the edge: the
// cloud may have changed them while the node was unreachable. A pod the
// cloud deleted meanwhile is not reported.
func TestStatusesReportedAgainAfterAReconnect(t *testing.T) {
	f := newFakeServer(t)
	f.set(podKey("ns", "kept"), podObject("ns", "kept", "kept", "1", "img:1"))
	f.set(podKey("ns", "gone"), podObject("ns", "gone", "gone", "1", "img:1"))
	c := startClient(t, f, "edge-1", t.TempDir(), true)
	waitState(t, c.Client, "first sync", func(s State) bool { return s.Synced })

	ready := &corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	for _, name := range []string{"kept", "gone"} {
		r, err := c.ReportPodStatus("ns", name, "uid-"+name, ready)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	r, err := c.ReportNodeStatus(&corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := reportCounts(f)
	if before.node != 1 || before.pods["kept"] != 1 || before.pods["gone"] != 1 {
		t.Fatalf("before the outage the server received %+v, want one node status and one status per pod", before)
	}

	// The link breaks; meanwhile the cloud deletes one pod.
	f.stop()
	f.set(podKey("ns", "gone"), nil)
	f.restart()
	waitState(t, c.Client, "second sync", func(s State) bool { return s.Connections == 2 && s.Synced })
	f.waitFor(t.Context(), "the statuses reported again", func() bool {
		n := 0
		for _, r := range f.reports {
			if r.GetNodeStatus() != nil || r.GetPodStatus().GetName() == "kept" {
				n++
			}
		}
		return n == 4
	})
	after := reportCounts(f)
	if after.pods["gone"] != 1 {
		t.Errorf("the pod the cloud deleted was reported again (%d reports)", after.pods["gone"])
	}
	if r := lastPodStatus(f, "kept"); r.GetUid() != "uid-kept" || r.GetStatus().GetPhase() != string(corev1.PodRunning) {
		t.Errorf("pod status reported again = %v, want the last one reported", r)
	}
}

// A node status equal to the last one is held back only for
// NodeStatusReportFrequency: past it, it is reported in full again.
func TestUnchangedNodeStatusReportedAtTheReportFrequency(t *testing.T) {
	f := newFakeServer(t)
	c := startClient(t, f, "edge-1", t.TempDir(), true, func(cfg *Config) { cfg.NodeStatusReportFrequency = time.Hour })
	st := &corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}}
	r1, err := c.ReportNodeStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r, _ := c.ReportNodeStatus(st); r != r1 {
		t.Fatal("an unchanged status was reported again within the report frequency")
	}
	// As if the frequency had passed since the last report.
	c.mu.Lock()
	c.nodeStatAt = c.nodeStatAt.Add(-time.Hour)
	c.mu.Unlock()
	r2, err := c.ReportNodeStatus(st)
	if err != nil {
		t.Fatal(err)
	}
	if r2 == r1 {
		t.Fatal("an unchanged status was not reported again after the report frequency")
	}
	if _, err := r2.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := reportCounts(f).node; n != 2 {
		t.Errorf("server received %d node statuses, want 2", n)
	}
}

type counts struct {
	node int
	pods map[string]int
}

func reportCounts(f *fakeServer) counts {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := counts{pods: map[string]int{}}
	for _, r := range f.reports {
		switch {
		case r.GetNodeStatus() != nil:
			c.node++
		case r.GetPodStatus() != nil:
			c.pods[r.GetPodStatus().GetName()]++
		}
	}
	return c
}

func lastPodStatus(f *fakeServer, name string) *edgesyncv1.PodStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	var last *edgesyncv1.PodStatus
	for _, r := range f.reports {
		if r.GetPodStatus().GetName() == name {
			last = r.GetPodStatus()
		}
	}
	return last
}
