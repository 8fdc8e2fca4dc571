package controllers_test

import (
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestHeartbeatRepairsAStatusTheCloudChanged is an edge that only sends
// heartbeats after its outage (as the Python client does): the node
// lifecycle controller had set its Node Unknown while it was unreachable,
// and the next heartbeat writes the conditions the edge last reported back,
// on a new session as on the same one.
func TestHeartbeatRepairsAStatusTheCloudChanged(t *testing.T) {
	client := testcluster.Client(t)
	node := edgeNode(t, client, "edge-repair")
	deleteLeaseAtCleanup(t, client, node)
	_, env := startWithServer(t, controllers.Config{DisableDevices: true})
	e := connect(t, env, node)
	e.waitSynced()
	expectCode(t, "node status", e.report(nodeStatus(t)), codes.OK)
	expectCode(t, "heartbeat", e.report(heartbeat()), codes.OK)

	// What the node lifecycle controller writes when the Lease expires.
	markUnknown := func() {
		t.Helper()
		patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionUnknown, Reason: "NodeStatusUnknown",
			Message: "Kubelet stopped posting node status.", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.CoreV1().Nodes().Patch(t.Context(), node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the cache to see "+node+" Unknown", func() (bool, error) {
			// The controllers' cache follows the apiserver; a heartbeat sent
			// before it does would find nothing to repair.
			return nodeReady(t, client, node) == corev1.ConditionUnknown, nil
		})
	}

	for _, round := range []string{"same session", "new session"} {
		markUnknown()
		if round == "new session" {
			e.close()
			e = connect(t, env, node)
			e.waitSynced()
		}
		before := time.Now()
		// Heartbeats only: the edge never sends its status again.
		eventually(t, round+": "+node+" Ready again from heartbeats alone", func() (bool, error) {
			expectCode(t, "heartbeat", e.report(heartbeat()), codes.OK)
			return nodeReady(t, client, node) == corev1.ConditionTrue, nil
		})
		n, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && (c.Reason != "EdgeReady" || c.LastHeartbeatTime.Add(time.Second).Before(before)) {
				t.Fatalf("%s: repaired Ready condition %+v, want the edge's reason EdgeReady with a fresh lastHeartbeatTime", round, c)
			}
		}
	}
}

// nodeReady is the status of node's Ready condition in the apiserver.
func nodeReady(t *testing.T, client kubernetes.Interface, node string) corev1.ConditionStatus {
	t.Helper()
	n, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status
		}
	}
	return ""
}
