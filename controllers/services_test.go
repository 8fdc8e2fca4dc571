package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/servicesync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

const groupLabel = "edgesync.test/group"

// readyEdgeNode creates an edge Node that the scheduler places pods on: in
// group, with the labels a kubelet sets and a Ready status with room for
// pods, as an edge agent registers it.
func readyEdgeNode(t *testing.T, client kubernetes.Interface, prefix, group string) string {
	t.Helper()
	name := testcluster.UniqueName(prefix)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		controllers.DefaultEdgeLabel: "", corev1.LabelHostname: name, groupLabel: group,
	}}}
	created, err := client.CoreV1().Nodes().Create(t.Context(), node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	deleteNodeAtCleanup(t, client, name)
	capacity := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110"),
	}
	now := metav1.Now()
	st, err := json.Marshal(map[string]any{"status": corev1.NodeStatus{
		Capacity: capacity, Allocatable: capacity,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "EdgeReady", LastHeartbeatTime: now, LastTransitionTime: now}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().Patch(t.Context(), created.Name, types.StrategicMergePatchType, st, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("node %s status: %v", name, err)
	}
	return name
}

// heartbeat keeps e's node Lease renewed until the test ends, as an edge
// agent does, so the node stays Ready and its pods with it.
func (e *edge) heartbeat() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	e.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			e.send(&edgesyncv1.SyncRequest{RequestId: e.nextID.Add(1), Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// pods returns the pods e holds in namespace ns.
func (e *edge) pods(ns string) []*corev1.Pod {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.podsLocked(ns)
}

// podsLocked is pods with e.mu held.
func (e *edge) podsLocked(ns string) []*corev1.Pod {
	var out []*corev1.Pod
	for key, msg := range e.held {
		if key.Kind != edgesyncv1.Kind_KIND_POD || key.Namespace != ns {
			continue
		}
		m := msg.GetPodEvent().GetPod().GetMetadata()
		out = append(out, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: m.GetNamespace(), Name: m.GetName(), UID: types.UID(m.GetUid())}})
	}
	return out
}

// runPods reports every pod e holds in ns that has no address yet Running
// and Ready at a new address, as a container runtime would, and returns
// the address of every pod by name.
func (e *edge) runPods(ns string, addrs map[string]string) {
	e.t.Helper()
	for _, p := range e.pods(ns) {
		if addrs[p.Name] != "" {
			continue
		}
		addrs[p.Name] = fmt.Sprintf("10.77.%d.%d", len(addrs)/200, len(addrs)%200+1)
		e.reportPod(p, addrs[p.Name], true)
	}
}

// reportPod reports pod Running at ip, ready or not.
func (e *edge) reportPod(pod *corev1.Pod, ip string, ready bool) {
	e.t.Helper()
	now := metav1.Now()
	readiness := corev1.ConditionTrue
	if !ready {
		readiness = corev1.ConditionFalse
	}
	st := corev1.PodStatus{
		Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: readiness, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: readiness, LastTransitionTime: now},
		},
	}
	if r := e.report(podStatusReport(0, pod, st)); r.GetCode() != 0 {
		e.t.Fatalf("%s: status of pod %s answered %v", e.name, pod.Name, r)
	}
}

// routes returns the addresses e routes to for Service ns/svc: those of
// the EndpointSlices it holds of it.
// e.mu is held.
func (e *edge) routes(ns, svc string) []string {
	var out []string
	for key, msg := range e.held {
		s := msg.GetEndpointSliceEvent().GetEndpointSlice()
		if key.Kind != edgesyncv1.Kind_KIND_ENDPOINT_SLICE || key.Namespace != ns || s.GetMetadata().GetLabels()[discoveryv1.LabelServiceName] != svc {
			continue
		}
		for _, ep := range s.GetEndpoints() {
			out = append(out, ep.GetAddresses()...)
		}
	}
	slices.Sort(out)
	return out
}

// waitRoutes waits until e routes to exactly want for ns/svc.
func (e *edge) waitRoutes(ns, svc string, want []string) {
	e.t.Helper()
	want = slices.Sorted(slices.Values(want))
	e.waitFor(fmt.Sprintf("routing %s/%s to %v", ns, svc, want), func() bool {
		return slices.Equal(e.routes(ns, svc), want)
	})
}

// knowsService tells whether e was ever sent anything of Service ns/svc
// or its slices.
func (e *edge) knowsService(ns, svc string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_SERVICE, Namespace: ns, Name: svc}
	if e.held[key] != nil || e.deleted[key] {
		return true
	}
	for key, msg := range e.held {
		if key.Kind == edgesyncv1.Kind_KIND_ENDPOINT_SLICE && msg.GetEndpointSliceEvent().GetEndpointSlice().GetMetadata().GetLabels()[discoveryv1.LabelServiceName] == svc {
			return true
		}
	}
	return false
}

// createService creates svc in ns and deletes it when the test ends: a
// Service meant for edges that outlived its test (namespaces are deleted
// in the background) would reach the edge nodes of later tests.
func createService(t *testing.T, client kubernetes.Interface, ns string, svc *corev1.Service) *corev1.Service {
	t.Helper()
	created, err := client.CoreV1().Services(ns).Create(t.Context(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s/%s: %v", ns, svc.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Services(ns).Delete(ctx, svc.Name, metav1.DeleteOptions{})
	})
	return created
}

func serviceKey(ns, name string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_SERVICE, Namespace: ns, Name: name}
}

// webService is a Service over the pods labelled app=web, meant for edges
// when optIn.
func webService(name string, optIn bool) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
	if optIn {
		svc.Labels = map[string]string{servicesync.OptInLabel: "true"}
	}
	return svc
}

// webDeployment spreads replicas of app=web over the nodes of group, one
// node at most one pod ahead of another.
func webDeployment(group string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": "web"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{groupLabel: group},
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{Name: "web", Image: "registry.k8s.io/pause:3.10", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
				},
			},
		},
	}
}

// TestServicesReachEdges: a Service meant for edges over a Deployment's
// pods on two edge nodes reaches both, with its EndpointSlices; scaling
// and a pod turning not-ready change what both route to;
// internalTrafficPolicy Local leaves each node its own pods; a Service
// without the label never reaches an edge; removing the label deletes the
// Service and its slices on the edges.
func TestServicesReachEdges(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	group := testcluster.UniqueName("svc")
	n1, n2 := readyEdgeNode(t, client, "svc-edge-1", group), readyEdgeNode(t, client, "svc-edge-2", group)
	ctrls, env := startWithServer(t, controllers.Config{DisableDevices: true})
	e1, e2 := connect(t, env, n1), connect(t, env, n2)
	edges := []*edge{e1, e2}
	for _, e := range edges {
		e.waitSynced()
		e.heartbeat()
	}
	ctx := t.Context()

	createService(t, client, ns, webService("internal", false))
	svc := createService(t, client, ns, webService("web", true))
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, webDeployment(group, 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{} // by pod name
	// run waits until the edges hold want pods (one node at most one
	// ahead), runs them and returns what each node runs.
	run := func(want int) map[*edge][]string {
		t.Helper()
		for _, e := range edges {
			e.waitFor(fmt.Sprintf("%d pods of web", (want+1)/2), func() bool {
				n := len(e.podsLocked(ns))
				return n == want/2 || n == (want+1)/2
			})
		}
		byEdge := map[*edge][]string{}
		total := 0
		for _, e := range edges {
			e.runPods(ns, addrs)
			for _, p := range e.pods(ns) {
				byEdge[e] = append(byEdge[e], addrs[p.Name])
			}
			total += len(byEdge[e])
		}
		if total != want {
			t.Fatalf("the edges run %d pods, want %d", total, want)
		}
		return byEdge
	}
	allAddrs := func() []string { return slices.Collect(maps.Values(addrs)) }

	run(2)
	for _, e := range edges {
		got := e.waitHeld(serviceKey(ns, "web")).GetServiceEvent().GetService()
		if got.GetSpec().GetClusterIP() != svc.Spec.ClusterIP || len(got.GetSpec().GetPorts()) != 1 || got.GetMetadata().GetManagedFields() != nil {
			t.Errorf("%s holds Service %v, want the cluster IP %s and one port, without managed fields", e.name, got, svc.Spec.ClusterIP)
		}
		e.waitRoutes(ns, "web", allAddrs())
	}

	// Scaling up: both nodes route to the new pods.
	if _, err := client.AppsV1().Deployments(ns).Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":4}}`), metav1.PatchOptions{}, "scale"); err != nil {
		t.Fatal(err)
	}
	byEdge := run(4)
	for _, e := range edges {
		e.waitRoutes(ns, "web", allAddrs())
	}

	// A pod turning not-ready is routed to by no node.
	sick := e1.pods(ns)[0]
	e1.reportPod(sick, addrs[sick.Name], false)
	var healthy []string
	for name, ip := range addrs {
		if name != sick.Name {
			healthy = append(healthy, ip)
		}
	}
	for _, e := range edges {
		e.waitRoutes(ns, "web", healthy)
	}

	// internalTrafficPolicy Local: each node routes to its own ready pods.
	local := corev1.ServiceInternalTrafficPolicyLocal
	patchService(t, client, ns, "web", func(s *corev1.Service) { s.Spec.InternalTrafficPolicy = &local })
	for _, e := range edges {
		var own []string
		for _, ip := range byEdge[e] {
			if ip != addrs[sick.Name] {
				own = append(own, ip)
			}
		}
		e.waitRoutes(ns, "web", own)
	}

	// The Service without the label never reached an edge, nor is it in
	// what an edge connecting now would get.
	for _, e := range edges {
		if e.knowsService(ns, "internal") {
			t.Errorf("%s was sent the Service %s/internal, which is not meant for edges", e.name, ns)
		}
	}
	desired, err := ctrls.Desired(n1)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range desired {
		if o.Key == serviceKey(ns, "internal") {
			t.Errorf("Desired(%s) holds the Service %s/internal", n1, ns)
		}
	}

	// Dropping the label deletes the Service and its slices on the edges.
	patchService(t, client, ns, "web", func(s *corev1.Service) { delete(s.Labels, servicesync.OptInLabel) })
	for _, e := range edges {
		e.waitGone(serviceKey(ns, "web"))
		e.waitRoutes(ns, "web", nil)
	}
}

func patchService(t *testing.T, client kubernetes.Interface, ns, name string, change func(*corev1.Service)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := client.CoreV1().Services(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(svc)
		_, err = client.CoreV1().Services(ns).Update(t.Context(), svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("update service %s/%s: %v", ns, name, err)
	}
}

// TestZoneHintsFilterPerNode: with trafficDistribution PreferSameZone and
// zone hints, a node receives its zone's endpoints; nodes of one zone share
// one encoding; a node of a zone no endpoint is hinted for receives them
// all; a node moving to another zone receives that zone's.
func TestZoneHintsFilterPerNode(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	rec := newRecorder()
	ctrls := start(t, controllers.Config{DisableDevices: true}, rec)
	zoned := func(prefix, zone string) string {
		name := edgeNode(t, client, prefix)
		patchNode(t.Context(), t, client, name, map[string]any{"metadata": map[string]any{"labels": map[string]any{corev1.LabelTopologyZone: zone}}})
		return name
	}
	a1, a2, b, c := zoned("zone-a-1", "zone-a"), zoned("zone-a-2", "zone-a"), zoned("zone-b", "zone-b"), zoned("zone-c", "zone-c")

	sameZone := corev1.ServiceTrafficDistributionPreferSameZone
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "sensors", Labels: map[string]string{servicesync.OptInLabel: "true"}},
		Spec: corev1.ServiceSpec{
			TrafficDistribution: &sameZone,
			Ports:               []corev1.ServicePort{{Name: "mqtt", Port: 1883, Protocol: corev1.ProtocolTCP}},
		},
	}
	createService(t, client, ns, svc)
	// Endpoints outside the cluster, in a slice managed by hand.
	hinted := func(ip, zone string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zone}}}}
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "sensors-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "sensors", discoveryv1.LabelManagedBy: "edgesync-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{hinted("192.0.2.1", "zone-a"), hinted("192.0.2.2", "zone-b")},
	}
	slice, err := client.DiscoveryV1().EndpointSlices(ns).Create(t.Context(), slice, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_ENDPOINT_SLICE, Namespace: ns, Name: "sensors-1"}
	routed := func(node string, want ...string) *feed.Object {
		t.Helper()
		rec.waitApplied(t, node, key, func(m *edgesyncv1.SyncResponse) bool {
			var got []string
			for _, ep := range m.GetEndpointSliceEvent().GetEndpointSlice().GetEndpoints() {
				got = append(got, ep.GetAddresses()...)
			}
			return slices.Equal(got, want)
		})
		return rec.last(node, key)
	}
	if x, y := routed(a1, "192.0.2.1"), routed(a2, "192.0.2.1"); x != y {
		t.Errorf("two nodes of zone-a were sent two encodings of the same slice view")
	}
	routed(b, "192.0.2.2")
	routed(c, "192.0.2.1", "192.0.2.2")
	rec.waitApplied(t, c, serviceKey(ns, "sensors"), nil)

	// A new endpoint in zone-b changes the views of zone-b and of nodes
	// without hinted endpoints, not zone-a's: its nodes keep the version
	// they hold, so they are not sent the slice again.
	heldByA := rec.last(a1, key).ResourceVersion
	slice.Endpoints = append(slice.Endpoints, hinted("192.0.2.3", "zone-b"))
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Update(t.Context(), slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	routed(b, "192.0.2.2", "192.0.2.3")
	routed(c, "192.0.2.1", "192.0.2.2", "192.0.2.3")
	desired, err := ctrls.Desired(a1)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range desired {
		if o.Key == key && o.ResourceVersion != heldByA {
			t.Errorf("zone-a's view of the slice changed version (%s -> %s) though its endpoints did not", heldByA, o.ResourceVersion)
		}
	}

	patchNode(t.Context(), t, client, c, map[string]any{"metadata": map[string]any{"labels": map[string]any{corev1.LabelTopologyZone: "zone-b"}}})
	routed(c, "192.0.2.2", "192.0.2.3")
}
