package edgeclient_test

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/cloudtest"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestEndToEndReportsMadeOfflineReachTheAPIServer runs the whole chain: a
// real kube-apiserver, the real controllers and sync server, and the
// client. Pod and node status reported while the link is down reach the API
// server once it is back, the latest value of each.
func TestEndToEndReportsMadeOfflineReachTheAPIServer(t *testing.T) {
	kube := testcluster.Client(t)
	ns := testcluster.Namespace(t, kube)
	node := cloudtest.Node(t, "edge")
	env := cloudtest.Start(t)

	p := newProxy(t, env.Addr)
	certFile, keyFile := env.NodeCert(t, node)
	c := newClient(t, p.addr(), env.CAFile, certFile, keyFile, node, t.TempDir())
	c.start()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	reg, err := c.RegisterNode(edgeclient.NodeRegistration{Labels: map[string]string{"edgesync.test/e2e": "true"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Wait(ctx); err != nil {
		t.Fatalf("register node: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if pod, err = kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait(t, c.Client, "the pod to reach the edge", func(edgeclient.State) bool {
		p, _ := c.Pod(ns, "web")
		return p != nil
	})

	// The link goes down; the edge reports meanwhile.
	p.setTarget("")
	p.cut()
	wait(t, c.Client, "disconnection", func(s edgeclient.State) bool { return !s.Connected && s.Reconnects > 0 })
	now := metav1.Now()
	first, err := c.ReportPodStatus(ns, "web", string(pod.UID), &corev1.PodStatus{Phase: corev1.PodPending})
	if err != nil {
		t.Fatal(err)
	}
	latest, err := c.ReportPodStatus(ns, "web", string(pod.UID), &corev1.PodStatus{
		Phase:      corev1.PodRunning,
		StartTime:  &now,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
	})
	if err != nil {
		t.Fatal(err)
	}
	nodeStatus, err := c.ReportNodeStatus(&corev1.NodeStatus{Conditions: []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "E2E", LastHeartbeatTime: now, LastTransitionTime: now,
	}}})
	if err != nil {
		t.Fatal(err)
	}

	p.setTarget(env.Addr)
	if _, err := first.Wait(ctx); !errors.Is(err, edgeclient.ErrSuperseded) {
		t.Errorf("first pod report: %v, want ErrSuperseded", err)
	}
	for name, r := range map[string]*edgeclient.Report{"pod status": latest, "node status": nodeStatus} {
		if _, err := r.Wait(ctx); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	// The API server has the latest values. Reports are answered once the
	// write succeeded, so one read suffices.
	got, err := kube.CoreV1().Pods(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, cond := range got.Status.Conditions {
		ready = ready || (cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue)
	}
	if got.Status.Phase != corev1.PodRunning || !ready {
		t.Errorf("pod status in the API server: phase %s, ready %v; want Running and ready", got.Status.Phase, ready)
	}
	n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nodeReady := false
	for _, cond := range n.Status.Conditions {
		nodeReady = nodeReady || (cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue && cond.Reason == "E2E")
	}
	if !nodeReady {
		t.Errorf("node conditions in the API server: %+v, want the reported Ready", n.Status.Conditions)
	}
}
