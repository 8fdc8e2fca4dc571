package controllers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"

	"github.com/edgesync/edgesync/controllers"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

// toProto converts a Kubernetes type into its generated protobuf message.
func toProto[M proto.Message](t testing.TB, obj interface{ Marshal() ([]byte, error) }, msg M) M {
	t.Helper()
	b, err := obj.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(b, msg); err != nil {
		t.Fatal(err)
	}
	return msg
}

func podStatusReport(id uint64, pod *corev1.Pod, st corev1.PodStatus) *edgesyncv1.SyncRequest {
	b, err := st.Marshal()
	if err != nil {
		panic(err)
	}
	msg := &corev1pb.PodStatus{}
	if err := proto.Unmarshal(b, msg); err != nil {
		panic(err)
	}
	return &edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_PodStatus{PodStatus: &edgesyncv1.PodStatus{
		Namespace: pod.Namespace, Name: pod.Name, Uid: string(pod.UID), Status: msg,
	}}}
}

func TestPodStatusReports(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	edge1, edge2 := edgeNode(t, client, "edge-1"), edgeNode(t, client, "edge-2")
	rec := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true}, rec)
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", edge2, "", ""), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge2, podKey(ns, "web"), nil)
	running := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.7", Conditions: []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()},
	}}

	t.Run("another node's pod is refused", func(t *testing.T) {
		results := make(answers, 1)
		ctrls.HandleReport(edge1, podStatusReport(1, pod, running), results.answer)
		r := results.wait(t)
		if codes.Code(r.GetCode()) != codes.PermissionDenied || r.GetRequestId() != 1 {
			t.Fatalf("answer %v, want PermissionDenied for request 1", r)
		}
		got, err := client.CoreV1().Pods(ns).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase == corev1.PodRunning || got.Status.PodIP != "" {
			t.Fatalf("pod status changed by a refused report: %+v", got.Status)
		}
	})

	t.Run("own pod's status is written", func(t *testing.T) {
		results := make(answers, 1)
		ctrls.HandleReport(edge2, podStatusReport(2, pod, running), results.answer)
		if r := results.wait(t); r.GetCode() != 0 {
			t.Fatalf("answer %v, want OK", r)
		}
		got, err := client.CoreV1().Pods(ns).Get(t.Context(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase != corev1.PodRunning || got.Status.PodIP != "10.0.0.7" || len(got.Status.Conditions) != 1 {
			t.Fatalf("pod status %+v, want the reported one", got.Status)
		}
		managed := false
		for _, mf := range got.ManagedFields {
			managed = managed || (mf.Manager == controllers.DefaultFieldManager && mf.Subresource == "status")
		}
		if !managed {
			t.Errorf("status not written by field manager %q through the status subresource", controllers.DefaultFieldManager)
		}

		// The status change is not sent back down (the edge owns it); a
		// later label change is.
		got.Labels = map[string]string{"tier": "front"}
		if _, err := client.CoreV1().Pods(ns).Update(t.Context(), got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		rec.waitApplied(t, edge2, podKey(ns, "web"), func(m *edgesyncv1.SyncResponse) bool {
			return m.GetPodEvent().GetPod().GetMetadata().GetLabels()["tier"] == "front"
		})
		for _, obj := range rec.sent(edge2) {
			if obj.Key == podKey(ns, "web") && obj.ResourceVersion == got.ResourceVersion {
				t.Errorf("the pod was sent again for its status-only change (resourceVersion %s)", got.ResourceVersion)
			}
		}
	})

	t.Run("a stale copy is deleted", func(t *testing.T) {
		stale := pod.DeepCopy()
		stale.UID = "0b5e5c1e-0000-4000-8000-000000000000"
		results := make(answers, 1)
		ctrls.HandleReport(edge2, podStatusReport(3, stale, running), results.answer)
		if r := results.wait(t); codes.Code(r.GetCode()) != codes.NotFound {
			t.Fatalf("answer %v, want NotFound", r)
		}
		// The pod of that name on edge-2 is the current one: it replaces
		// the stale copy rather than being deleted with it.
		last := rec.last(edge2, podKey(ns, "web"))
		if last.Deleted || last.UID != string(pod.UID) {
			t.Fatalf("edge-2 last got %v uid %s for the pod, want the current pod (uid %s)", keys(rec.sent(edge2)[len(rec.sent(edge2))-1:]), last.UID, pod.UID)
		}

		gone := pod.DeepCopy()
		gone.Name = "gone"
		ctrls.HandleReport(edge2, podStatusReport(4, gone, running), results.answer)
		if r := results.wait(t); codes.Code(r.GetCode()) != codes.NotFound {
			t.Fatalf("answer %v, want NotFound", r)
		}
		rec.waitDeleted(t, edge2, podKey(ns, "gone"))
	})

	t.Run("malformed report", func(t *testing.T) {
		results := make(answers, 1)
		ctrls.HandleReport(edge2, &edgesyncv1.SyncRequest{RequestId: 5, Message: &edgesyncv1.SyncRequest_PodStatus{
			PodStatus: &edgesyncv1.PodStatus{Namespace: ns, Name: "web"},
		}}, results.answer)
		if r := results.wait(t); codes.Code(r.GetCode()) != codes.InvalidArgument {
			t.Fatalf("answer %v, want InvalidArgument", r)
		}
	})
}

func TestNodeRegistrationStatusAndHeartbeat(t *testing.T) {
	client := testcluster.Client(t)
	node := testcluster.UniqueName("edge-new")
	deleteNodeAtCleanup(t, client, node)
	rec := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true}, rec)
	report := func(id uint64, req *edgesyncv1.SyncRequest) *edgesyncv1.StatusResult {
		t.Helper()
		req.RequestId = id
		results := make(answers, 1)
		ctrls.HandleReport(node, req, results.answer)
		r := results.wait(t)
		if r.GetRequestId() != id {
			t.Fatalf("answer for request %d carries request id %d", id, r.GetRequestId())
		}
		return r
	}

	// NodeStatus before registration: nothing to patch.
	st := corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "EdgeReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}}
	if r := report(1, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeStatus{NodeStatus: &edgesyncv1.NodeStatus{Status: toProto(t, &st, &corev1pb.NodeStatus{})}}}); codes.Code(r.GetCode()) != codes.NotFound {
		t.Fatalf("NodeStatus of an unregistered node answered %v, want NotFound", r)
	}

	reg := &edgesyncv1.NodeRegistration{
		Labels: map[string]string{"site": "factory-7"},
		Status: toProto(t, &corev1.NodeStatus{Capacity: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4")}}, &corev1pb.NodeStatus{}),
	}
	if r := report(2, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: reg}}); r.GetCode() != 0 {
		t.Fatalf("registration answered %v", r)
	}
	got, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("registered node: %v", err)
	}
	if _, ok := got.Labels[controllers.DefaultEdgeLabel]; !ok || got.Labels["site"] != "factory-7" {
		t.Fatalf("registered node labels %v, want the edge label and site=factory-7", got.Labels)
	}

	// An existing Node is left as it is.
	reg.Labels = map[string]string{"site": "elsewhere"}
	if r := report(3, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: reg}}); r.GetCode() != 0 {
		t.Fatalf("second registration answered %v", r)
	}
	if got, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{}); err != nil || got.Labels["site"] != "factory-7" {
		t.Fatalf("second registration changed the node: labels %v, %v", got.Labels, err)
	}

	// NodeStatus keeps volumesAttached as the cloud has it.
	// (A patch: the controller-manager writes the Node too.)
	attached := []corev1.AttachedVolume{{Name: "kubernetes.io/csi/cloud^vol-1", DevicePath: "/dev/sdb"}}
	if _, err := client.CoreV1().Nodes().Patch(t.Context(), node, types.MergePatchType,
		[]byte(`{"status":{"volumesAttached":[{"name":"kubernetes.io/csi/cloud^vol-1","devicePath":"/dev/sdb"}]}}`),
		metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	st.VolumesAttached = []corev1.AttachedVolume{{Name: "edge-made-up", DevicePath: "/dev/x"}}
	if r := report(4, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeStatus{NodeStatus: &edgesyncv1.NodeStatus{Status: toProto(t, &st, &corev1pb.NodeStatus{})}}}); r.GetCode() != 0 {
		t.Fatalf("NodeStatus answered %v", r)
	}
	got, err = client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range got.Status.Conditions {
		ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && c.Reason == "EdgeReady")
	}
	if !ready {
		t.Errorf("node conditions %v, want the reported Ready condition", got.Status.Conditions)
	}
	if len(got.Status.VolumesAttached) != 1 || got.Status.VolumesAttached[0].Name != attached[0].Name {
		t.Errorf("volumesAttached %v, want the cloud's %v", got.Status.VolumesAttached, attached)
	}

	// The first heartbeat creates the Lease.
	heartbeat := func(id uint64) *metav1.MicroTime {
		t.Helper()
		if r := report(id, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}); r.GetCode() != 0 {
			t.Fatalf("heartbeat answered %v", r)
		}
		lease, err := client.CoordinationV1().Leases("kube-node-lease").Get(t.Context(), node, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("lease after heartbeat: %v", err)
		}
		if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != node || lease.Spec.RenewTime == nil {
			t.Fatalf("lease spec %+v, want holder %s and a renew time", lease.Spec, node)
		}
		if len(lease.OwnerReferences) != 1 || lease.OwnerReferences[0].UID != got.UID {
			t.Errorf("lease owners %v, want the node", lease.OwnerReferences)
		}
		return lease.Spec.RenewTime
	}
	first := heartbeat(5)
	if age := time.Since(first.Time); age > time.Minute || age < -time.Minute {
		t.Errorf("renewTime %v is not now", first)
	}
	// The next heartbeat, well within the renew interval, is answered
	// without a write.
	if second := heartbeat(6); !second.Equal(first) {
		t.Errorf("a heartbeat within the renew interval moved renewTime from %v to %v", first, second)
	}
}

func TestBeforeCachesSyncReportsAndDesiredAreUnavailable(t *testing.T) {
	ctrls, err := controllers.New(controllers.Config{RESTConfig: &rest.Config{Host: "https://127.0.0.1:1"}, DisableDevices: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Run with an ended context stops what New made (work queues).
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = ctrls.Run(ctx, newRecorder())
	})
	results := make(answers, 1)
	ctrls.HandleReport("edge-1", podStatusReport(1, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u"}}, corev1.PodStatus{}), results.answer)
	if r := results.wait(t); codes.Code(r.GetCode()) != codes.Unavailable {
		t.Fatalf("report before sync answered %v, want Unavailable (not NotFound, which would delete the edge's pod)", r)
	}
	if _, err := ctrls.Desired("edge-1"); feed.KindOf(err) != feed.ErrUnavailable {
		t.Fatalf("Desired before sync: %v, want Unavailable", err)
	}
}

func TestNewRejectsAnEdgeLabelThatIsNotALabelKey(t *testing.T) {
	_, err := controllers.New(controllers.Config{RESTConfig: &rest.Config{Host: "https://127.0.0.1:1"}, EdgeLabel: "not a label!"})
	if err == nil || !strings.Contains(err.Error(), "not a label!") {
		t.Fatalf("New with a bad edge label: %v, want an error naming it", err)
	}
}
