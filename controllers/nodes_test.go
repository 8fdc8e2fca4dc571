package controllers_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/nodestatus"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// waitEnd waits until the server ends the edge's stream and returns the
// status it ended with.
func (e *edge) waitEnd() *status.Status {
	e.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		e.mu.Lock()
		err, ch := e.err, e.changed
		e.mu.Unlock()
		if err != nil {
			return status.Convert(err)
		}
		select {
		case <-ch:
		case <-deadline:
			e.t.Fatalf("%s: the server did not end the stream within 30s", e.name)
		}
	}
}

func heartbeat() *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
}

func nodeStatus(t *testing.T) *edgesyncv1.SyncRequest {
	ready := corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "EdgeReady", LastHeartbeatTime: metav1.Now()}}}
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeStatus{NodeStatus: &edgesyncv1.NodeStatus{Status: toProto(t, &ready, &corev1pb.NodeStatus{})}}}
}

func registration() *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: &edgesyncv1.NodeRegistration{
		Labels: map[string]string{"site": "plant-9"},
	}}}
}

// leaseOwnedBy fails unless node's Lease exists and is owned by its Node
// of uid, as a kubelet's Lease is.
func leaseOwnedBy(t *testing.T, client kubernetes.Interface, node string, uid types.UID) *coordinationv1.Lease {
	t.Helper()
	lease, err := client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("lease of %s: %v", node, err)
	}
	if o := lease.OwnerReferences; len(o) != 1 || o[0].Kind != "Node" || o[0].Name != node || o[0].UID != uid {
		t.Fatalf("lease of %s owned by %v, want its Node %s", node, o, uid)
	}
	return lease
}

func leaseAbsent(t *testing.T, client kubernetes.Interface, node, when string) {
	t.Helper()
	if l, err := client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Get(t.Context(), node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("%s: lease of %s is %v (%v), want none", when, node, l, err)
	}
}

func expectCode(t *testing.T, what string, r *edgesyncv1.StatusResult, want codes.Code, contains ...string) {
	t.Helper()
	if codes.Code(r.GetCode()) != want {
		t.Fatalf("%s answered %v %q, want %v", what, codes.Code(r.GetCode()), r.GetMessage(), want)
	}
	for _, s := range contains {
		if !strings.Contains(r.GetMessage(), s) {
			t.Errorf("%s answered %q, which does not mention %q", what, r.GetMessage(), s)
		}
	}
}

// Deleting an edge Node ends its session with FAILED_PRECONDITION. The
// edge may connect again, but its heartbeats and status are refused
// NOT_FOUND and never bring its Lease back, until it registers again: then
// the Node exists again and heartbeats renew a Lease owned by the new Node.
func TestDeletedNodeEndsItsSessionAndStaysDeletedUntilItRegisters(t *testing.T) {
	client := testcluster.Client(t)
	node := edgeNode(t, client, "edge-del")
	deleteLeaseAtCleanup(t, client, node)
	before, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A renew interval far longer than the test: a Lease write after the
	// first heartbeat is one the deletion made the controller forget.
	_, env := startWithServer(t, controllers.Config{DisableDevices: true, LeaseDuration: time.Hour, LeaseRenewInterval: 20 * time.Minute})
	e := connect(t, env, node)
	e.waitSynced()
	expectCode(t, "heartbeat", e.report(heartbeat()), codes.OK)
	leaseOwnedBy(t, client, node, before.UID)

	if err := client.CoreV1().Nodes().Delete(t.Context(), node, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	st := e.waitEnd()
	if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), `Node "`+node+`" was deleted`) || !strings.Contains(st.Message(), "NodeRegistration") {
		t.Fatalf("session of the deleted node ended with %v %q, want FAILED_PRECONDITION saying the Node was deleted and how to register it", st.Code(), st.Message())
	}
	// The garbage collector deletes the Lease with its owner; do it here
	// too, in case it has not yet (or does not run).
	if err := client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Delete(t.Context(), node, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}

	// The edge reconnects at once, as agents do.
	e = connect(t, env, node)
	e.waitSynced()
	for range 3 {
		expectCode(t, "heartbeat of the deleted node", e.report(heartbeat()), codes.NotFound, node, "NodeRegistration")
	}
	expectCode(t, "status of the deleted node", e.report(nodeStatus(t)), codes.NotFound, node, "NodeRegistration")
	leaseAbsent(t, client, node, "after heartbeats of the deleted node")
	if _, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the deleted Node is back without a registration: %v", err)
	}

	expectCode(t, "registration", e.report(registration()), codes.OK)
	after, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("registered again: %v", err)
	}
	if _, ok := after.Labels[controllers.DefaultEdgeLabel]; !ok || after.UID == before.UID {
		t.Fatalf("registered Node %s labels %v, want a new edge Node", after.UID, after.Labels)
	}
	// Reports right after the registration are accepted: it was answered
	// once the cache held the new Node.
	expectCode(t, "status after registering again", e.report(nodeStatus(t)), codes.OK)
	expectCode(t, "heartbeat after registering again", e.report(heartbeat()), codes.OK)
	leaseOwnedBy(t, client, node, after.UID)
}

// A heartbeat or status for a node that never had a Node is refused
// NOT_FOUND and writes nothing.
func TestReportsForANodeWithoutANodeAreNotFound(t *testing.T) {
	client := testcluster.Client(t)
	node := testcluster.UniqueName("edge-none")
	deleteNodeAtCleanup(t, client, node)
	deleteLeaseAtCleanup(t, client, node)
	_, env := startWithServer(t, controllers.Config{DisableDevices: true})
	e := connect(t, env, node) // admitted: it may register
	e.waitSynced()
	expectCode(t, "heartbeat", e.report(heartbeat()), codes.NotFound, node, "NodeRegistration")
	expectCode(t, "node status", e.report(nodeStatus(t)), codes.NotFound, node, "NodeRegistration")
	leaseAbsent(t, client, node, "after a refused heartbeat")
	if _, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("a Node appeared without a registration: %v", err)
	}
}

// cloudNode creates a Node without the edge label, as a cloud kubelet
// would, and its Lease; both are deleted when the test ends.
func cloudNode(t *testing.T, client kubernetes.Interface) (*corev1.Node, *coordinationv1.Lease) {
	t.Helper()
	name := testcluster.UniqueName("cloud")
	n, err := client.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: name, Labels: map[string]string{"kubernetes.io/hostname": name},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deleteNodeAtCleanup(t, client, name)
	deleteLeaseAtCleanup(t, client, name)
	holder, seconds, renewed := name, int32(40), metav1.NewMicroTime(time.Now().Add(-time.Hour))
	lease, err := client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Create(t.Context(), &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: nodestatus.LeaseNamespace},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &seconds, RenewTime: &renewed},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n, lease
}

// A certificate for an existing Node without the edge label (a cloud
// kubelet's) is refused at Hello, and no report can write that Node or its
// Lease: an edge certificate cannot keep a cloud node alive.
func TestNonEdgeNodeIsRefused(t *testing.T) {
	client := testcluster.Client(t)
	cloud, lease := cloudNode(t, client)
	ctrls, env := startWithServer(t, controllers.Config{DisableDevices: true})

	e := connect(t, env, cloud.Name)
	st := e.waitEnd()
	if st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), cloud.Name) || !strings.Contains(st.Message(), controllers.DefaultEdgeLabel) {
		t.Fatalf("Hello for a cloud node ended with %v %q, want PERMISSION_DENIED naming the node and the edge label", st.Code(), st.Message())
	}

	// Reports cannot reach the controllers without a session; even if
	// they did, they would be refused before any write.
	results := make(answers, 1)
	for _, req := range []*edgesyncv1.SyncRequest{heartbeat(), nodeStatus(t), registration()} {
		req.RequestId = 1
		ctrls.HandleReport(cloud.Name, req, results.answer)
		expectCode(t, req.String(), results.wait(t), codes.PermissionDenied, cloud.Name)
	}
	got, err := client.CoordinationV1().Leases(nodestatus.LeaseNamespace).Get(t.Context(), cloud.Name, metav1.GetOptions{})
	if err != nil || got.ResourceVersion != lease.ResourceVersion {
		t.Fatalf("the cloud node's Lease changed: %v, %v", got, err)
	}
	// The node lifecycle controller writes the Node (taints), so compare
	// what the reports would have written: the edge label and the status.
	n, err := client.CoreV1().Nodes().Get(t.Context(), cloud.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, edge := n.Labels[controllers.DefaultEdgeLabel]; edge {
		t.Errorf("the cloud Node got the edge label: %v", n.Labels)
	}
	for _, c := range n.Status.Conditions {
		if c.Reason == "EdgeReady" {
			t.Errorf("the cloud Node's status was written: %v", n.Status.Conditions)
		}
	}
}

// An edge Node that loses the edge label loses its session, and is then a
// non-edge node: refused at Hello.
func TestNodeThatLosesTheEdgeLabelLosesItsSession(t *testing.T) {
	client := testcluster.Client(t)
	node := edgeNode(t, client, "edge-unlabel")
	_, env := startWithServer(t, controllers.Config{DisableDevices: true})
	e := connect(t, env, node)
	e.waitSynced()

	patch := []byte(`{"metadata":{"labels":{"` + controllers.DefaultEdgeLabel + `":null}}}`)
	if _, err := client.CoreV1().Nodes().Patch(t.Context(), node, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := e.waitEnd(); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "not an edge node") {
		t.Fatalf("session of a node that lost the edge label ended with %v %q, want PERMISSION_DENIED", st.Code(), st.Message())
	}
	if st := connect(t, env, node).waitEnd(); st.Code() != codes.PermissionDenied {
		t.Fatalf("Hello for the node without the edge label ended with %v %q, want PERMISSION_DENIED", st.Code(), st.Message())
	}
}
