package controllers_test

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/devicesync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

// TestRBACIsEnough runs every flow as the server's ServiceAccount, bound
// only by what deploy/ grants it (deploy/rbac and deploy/namespace.yaml,
// applied by testcluster.ApplyRBAC): a missing permission fails a write or
// an informer.
func TestRBACIsEnough(t *testing.T) {
	admin := testcluster.RESTConfig(t)
	client := testcluster.Client(t)
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	testcluster.ApplyRBAC(t, admin, repo.Root(t))
	asServer := testcluster.AsServer(admin)
	// Without the binding, the ServiceAccount may not even list pods.
	probe, err := dynamic.NewForConfig(asServer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Resource(corev1.SchemeGroupVersion.WithResource("serviceaccounts")).List(t.Context(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("listing serviceaccounts as the server: %v, want Forbidden (is impersonation in effect?)", err)
	}

	ns := testcluster.Namespace(t, client)
	edge1 := edgeNode(t, client, "edge-1")
	rec := newRecorder()
	// Node ownership between replicas: the replica Lease is created and
	// renewed, and the ownership records watched, before the caches count
	// as synced.
	// A renew interval of a millisecond renews the Lease at each
	// heartbeat: the second one updates the Lease the first created.
	logCore, logs := observer.New(zapcore.WarnLevel)
	ctrls := start(t, controllers.Config{RESTConfig: asServer, Ownership: controllers.OwnershipConfig{
		Namespace: "edgesync-system", Replica: testcluster.UniqueName("rbac-replica"),
	}, LeaseRenewInterval: time.Millisecond, Logger: zap.New(zapcore.NewTee(logCore, zaptest.NewLogger(t).Core()))}, rec)
	if err := ctrls.Claim(t.Context(), edge1); err != nil {
		t.Fatalf("claim %s: %v", edge1, err)
	}
	report := func(node string, req *edgesyncv1.SyncRequest) {
		t.Helper()
		results := make(answers, 1)
		ctrls.HandleReport(node, req, results.answer)
		if r := results.wait(t); r.GetCode() != 0 {
			t.Fatalf("%T from %s answered %v", req.GetMessage(), node, r)
		}
	}

	// The node's own Node.
	rec.waitApplied(t, edge1, nodeKey(edge1), nil)

	// A Service meant for edges and its EndpointSlice.
	createService(t, client, ns, webService("web", true))
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(t.Context(), &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "web-manual", Labels: map[string]string{
			discoveryv1.LabelServiceName: "web", discoveryv1.LabelManagedBy: "edgesync-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.40"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, serviceKey(ns, "web"), nil)
	rec.waitApplied(t, edge1, feed.Key{Kind: edgesyncv1.Kind_KIND_ENDPOINT_SLICE, Namespace: ns, Name: "web-manual"}, nil)

	// Pods, ConfigMaps, Secrets; pod status; deleting a terminated pod.
	createConfig(t, client, ns, "app")
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", edge1, "app", "app"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, secretKey(ns, "app"), nil)
	rec.waitApplied(t, edge1, podKey(ns, "web"), nil)
	// The pod's ServiceAccount token (serviceaccounts/token create),
	// obtained while the node holds a session.
	if _, err := ctrls.Desired(edge1); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, apiAccessKey(t, pod), nil)
	// Events the edge reports, and their series (events create, patch).
	for range 2 {
		report(edge1, eventAbout(edgesyncv1.Kind_KIND_POD, ns, "web", string(pod.UID), "Started", "Started container app"))
	}
	report(edge1, podStatusReport(1, pod, corev1.PodStatus{Phase: corev1.PodRunning}))
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	report(edge1, podStatusReport(2, pod, corev1.PodStatus{Phase: corev1.PodSucceeded}))
	rec.waitDeleted(t, edge1, podKey(ns, "web"))

	// Node registration, status and lease.
	fresh := testcluster.UniqueName("edge-new")
	deleteNodeAtCleanup(t, client, fresh)
	if err := ctrls.Claim(t.Context(), fresh); err != nil {
		t.Fatalf("claim %s: %v", fresh, err)
	}
	report(fresh, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: &edgesyncv1.NodeRegistration{}}})
	report(fresh, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_NodeStatus{NodeStatus: &edgesyncv1.NodeStatus{Status: toProto(t,
		&corev1.NodeStatus{Phase: corev1.NodeRunning}, &corev1pb.NodeStatus{})}}})
	report(fresh, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
	report(fresh, &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
	if refused := logs.FilterMessageSnippet("refused to update a node Lease").All(); len(refused) > 0 {
		t.Errorf("the server's RBAC lets it patch node Leases but not update them: %v", refused[0].ContextMap())
	}

	// Device status.
	if _, err := dyn.Resource(devicesync.DeviceModels).Namespace(ns).Create(t.Context(), object(t, modelYAML), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(devicesync.Devices).Namespace(ns).Create(t.Context(), object(t, strings.Replace(deviceYAML, "NODE", edge1, 1)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.waitApplied(t, edge1, deviceKey(ns, "thermo-1"), nil)
	for id := uint64(3); id <= 4; id++ {
		report(edge1, &edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_DeviceStatus{DeviceStatus: &edgesyncv1.DeviceStatus{
			Namespace: ns, Name: "thermo-1", State: "online",
			Twins: []*edgesyncv1.Twin{{PropertyName: "temperature", Reported: &edgesyncv1.TwinValue{Value: "23"}}},
		}}})
	}

	// An operator's disconnect of a node another replica owns.
	if err := ctrls.Release(t.Context(), fresh, "rbac test"); err != nil {
		t.Fatalf("release %s: %v", fresh, err)
	}
}
