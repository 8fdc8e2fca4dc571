package controllers_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/controllers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
)

func labelled(labels map[string]string) *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: &edgesyncv1.NodeRegistration{Labels: labels}}}
}

// A node may not give itself labels other workloads select, neither when
// it registers nor later (registering again); labels an operator sets with
// kubectl stay.
func TestRegistrationLabelsFollowNodeRestriction(t *testing.T) {
	client := testcluster.Client(t)
	node := testcluster.UniqueName("edge-labels")
	deleteNodeAtCleanup(t, client, node)
	deleteLeaseAtCleanup(t, client, node)
	_, env := startWithServer(t, controllers.Config{DisableDevices: true})
	e := connect(t, env, node)
	e.waitSynced()

	expectCode(t, "registration as control plane", e.report(labelled(map[string]string{
		"kubernetes.io/hostname": node, "node-role.kubernetes.io/control-plane": "",
	})), codes.PermissionDenied, `node "`+node+`" may not set label "node-role.kubernetes.io/control-plane"`, "kubectl label")
	if _, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a refused registration created the Node: %v", err)
	}
	expectCode(t, "registration", e.report(labelled(map[string]string{"kubernetes.io/hostname": node, "site": "plant-9"})), codes.OK)

	// The operator labels it; the node registers again asking for more.
	patch := []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/gateway":"","team":"ops"}}}`)
	if _, err := client.CoreV1().Nodes().Patch(t.Context(), node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	expectCode(t, "registering again with a reserved label", e.report(labelled(map[string]string{
		"node-restriction.kubernetes.io/trusted": "yes",
	})), codes.PermissionDenied, `may not set label "node-restriction.kubernetes.io/trusted"`)
	expectCode(t, "registering again", e.report(labelled(map[string]string{"site": "elsewhere"})), codes.OK)
	n, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Labels["node-role.kubernetes.io/gateway"]; !ok || n.Labels["team"] != "ops" || n.Labels["site"] != "plant-9" {
		t.Fatalf("labels after the node registered again: %v; want the operator's kept and the node's unchanged", n.Labels)
	}
	if _, ok := n.Labels["node-restriction.kubernetes.io/trusted"]; ok {
		t.Fatalf("a refused label reached the Node: %v", n.Labels)
	}
}
