package controllers_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/devicesync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/feed"
)

// edge is a raw Sync stream acting as one edge node: it acknowledges
// everything and keeps what it was sent.
type edge struct {
	t      *testing.T
	name   string
	stream edgesyncv1.SyncService_SyncClient
	sendMu sync.Mutex // one sender at a time
	nextID atomic.Uint64
	done   chan struct{} // closed when the receive loop ends
	close  func()        // ends the stream and waits for the receive loop

	mu       sync.Mutex // guards the fields below
	held     map[feed.Key]*edgesyncv1.SyncResponse
	deleted  map[feed.Key]bool
	results  map[uint64]*edgesyncv1.StatusResult
	complete *edgesyncv1.SyncComplete
	err      error
	changed  chan struct{}
}

// connect opens node's stream to env, says Hello (holding held) and keeps
// receiving until the test ends or close is called.
func connect(t *testing.T, env *servertest.Env, node string, held ...*edgesyncv1.ObjectRef) *edge {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := edgesyncv1.NewSyncServiceClient(env.DialNode(t, node)).Sync(ctx)
	if err != nil {
		cancel()
		t.Fatalf("open stream for %s: %v", node, err)
	}
	e := &edge{
		t: t, name: node, stream: stream, done: make(chan struct{}),
		held: make(map[feed.Key]*edgesyncv1.SyncResponse), deleted: make(map[feed.Key]bool),
		results: make(map[uint64]*edgesyncv1.StatusResult), changed: make(chan struct{}),
	}
	e.close = func() { cancel(); <-e.done }
	t.Cleanup(e.close)
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{
		NodeName: node, AgentVersion: "controllers-test", HeldObjects: held,
	}}})
	go e.receive()
	return e
}

func (e *edge) send(req *edgesyncv1.SyncRequest) {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	if err := e.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		e.t.Errorf("%s: send: %v", e.name, err)
	}
}

func (e *edge) receive() {
	defer close(e.done)
	for {
		msg, err := e.stream.Recv()
		e.mu.Lock()
		if err != nil {
			e.err = err
		} else {
			e.apply(msg)
		}
		close(e.changed)
		e.changed = make(chan struct{})
		e.mu.Unlock()
		if err != nil {
			return
		}
		e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Ack{Ack: &edgesyncv1.Ack{Sequence: msg.GetSequence()}}})
	}
}

// apply records msg. e.mu must be held.
func (e *edge) apply(msg *edgesyncv1.SyncResponse) {
	var kind edgesyncv1.Kind
	var typ edgesyncv1.EventType
	var meta *metav1pb.ObjectMeta
	switch m := msg.GetMessage().(type) {
	case *edgesyncv1.SyncResponse_SyncComplete:
		e.complete = m.SyncComplete
		return
	case *edgesyncv1.SyncResponse_StatusResult:
		e.results[m.StatusResult.GetRequestId()] = m.StatusResult
		return
	case *edgesyncv1.SyncResponse_PodEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_POD, m.PodEvent.GetType(), m.PodEvent.GetPod().GetMetadata()
	case *edgesyncv1.SyncResponse_ConfigMapEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_CONFIG_MAP, m.ConfigMapEvent.GetType(), m.ConfigMapEvent.GetConfigMap().GetMetadata()
	case *edgesyncv1.SyncResponse_SecretEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_SECRET, m.SecretEvent.GetType(), m.SecretEvent.GetSecret().GetMetadata()
	case *edgesyncv1.SyncResponse_DeviceEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_DEVICE, m.DeviceEvent.GetType(), m.DeviceEvent.GetDevice().GetMetadata()
	case *edgesyncv1.SyncResponse_NodeEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_NODE, m.NodeEvent.GetType(), m.NodeEvent.GetNode().GetMetadata()
	case *edgesyncv1.SyncResponse_ServiceEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_SERVICE, m.ServiceEvent.GetType(), m.ServiceEvent.GetService().GetMetadata()
	case *edgesyncv1.SyncResponse_EndpointSliceEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_ENDPOINT_SLICE, m.EndpointSliceEvent.GetType(), m.EndpointSliceEvent.GetEndpointSlice().GetMetadata()
	case *edgesyncv1.SyncResponse_TokenEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN, m.TokenEvent.GetType(), m.TokenEvent.GetToken().GetMetadata()
	default:
		return
	}
	key := feed.Key{Kind: kind, Namespace: meta.GetNamespace(), Name: meta.GetName()}
	if typ == edgesyncv1.EventType_EVENT_TYPE_DELETE {
		delete(e.held, key)
		e.deleted[key] = true
		return
	}
	e.held[key] = msg
}

// waitFor waits until cond holds on the edge's state.
func (e *edge) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		e.mu.Lock()
		ok, err, ch := cond(), e.err, e.changed
		e.mu.Unlock()
		if ok {
			return
		}
		if err != nil {
			e.t.Fatalf("%s: stream ended (%v) before %s", e.name, err, what)
		}
		select {
		case <-ch:
		case <-deadline:
			e.t.Fatalf("%s: %s did not happen within 30s", e.name, what)
		}
	}
}

func (e *edge) waitSynced() {
	e.t.Helper()
	e.waitFor("initial sync", func() bool { return e.complete != nil })
}

// ref returns what the edge holds of key, as Hello lists it.
func (e *edge) ref(key feed.Key) *edgesyncv1.ObjectRef {
	e.t.Helper()
	msg := e.waitHeld(key)
	var meta *metav1pb.ObjectMeta
	switch m := msg.GetMessage().(type) {
	case *edgesyncv1.SyncResponse_PodEvent:
		meta = m.PodEvent.GetPod().GetMetadata()
	case *edgesyncv1.SyncResponse_ConfigMapEvent:
		meta = m.ConfigMapEvent.GetConfigMap().GetMetadata()
	case *edgesyncv1.SyncResponse_SecretEvent:
		meta = m.SecretEvent.GetSecret().GetMetadata()
	case *edgesyncv1.SyncResponse_DeviceEvent:
		meta = m.DeviceEvent.GetDevice().GetMetadata()
	case *edgesyncv1.SyncResponse_NodeEvent:
		meta = m.NodeEvent.GetNode().GetMetadata()
	case *edgesyncv1.SyncResponse_TokenEvent:
		meta = m.TokenEvent.GetToken().GetMetadata()
	case *edgesyncv1.SyncResponse_ServiceEvent:
		meta = m.ServiceEvent.GetService().GetMetadata()
	case *edgesyncv1.SyncResponse_EndpointSliceEvent:
		meta = m.EndpointSliceEvent.GetEndpointSlice().GetMetadata()
	}
	return &edgesyncv1.ObjectRef{Kind: key.Kind, Namespace: key.Namespace, Name: key.Name, Uid: meta.GetUid(), ResourceVersion: meta.GetResourceVersion()}
}

func (e *edge) waitHeld(key feed.Key) *edgesyncv1.SyncResponse {
	e.t.Helper()
	e.waitFor("holding "+key.String(), func() bool { return e.held[key] != nil })
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.held[key]
}

func (e *edge) waitGone(key feed.Key) {
	e.t.Helper()
	e.waitFor("deleting "+key.String(), func() bool { return e.held[key] == nil && e.deleted[key] })
}

func (e *edge) holds(key feed.Key) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.held[key] != nil
}

// report sends req as a report and waits for its StatusResult.
func (e *edge) report(req *edgesyncv1.SyncRequest) *edgesyncv1.StatusResult {
	e.t.Helper()
	id := e.nextID.Add(1)
	req.RequestId = id
	e.send(req)
	e.waitFor("the answer to report "+req.String(), func() bool { return e.results[id] != nil })
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.results[id]
}

// startWithServer runs controllers behind a real server with mTLS.
func startWithServer(t *testing.T, cfg controllers.Config) (*controllers.Controllers, *servertest.Env) {
	t.Helper()
	ctrls := build(t, cfg)
	env := servertest.Start(t, ctrls)
	run(t, ctrls, env.Server)
	return ctrls, env
}

func TestThroughServerPodsAndReports(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	node1, node2 := edgeNode(t, client, "edge-1"), edgeNode(t, client, "edge-2")
	_, env := startWithServer(t, controllers.Config{DisableDevices: true})
	edge1, edge2 := connect(t, env, node1), connect(t, env, node2)
	edge1.waitSynced()
	edge2.waitSynced()

	createConfig(t, client, ns, "app")
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", node1, "app", "app"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	edge1.waitHeld(podKey(ns, "web"))
	edge1.waitHeld(configMapKey(ns, "app"))
	if s := edge1.waitHeld(secretKey(ns, "app")).GetSecretEvent().GetSecret(); string(s.GetData()["password"]) != "s3cret" {
		t.Errorf("edge-1 got the secret without its data")
	}
	for _, key := range []feed.Key{podKey(ns, "web"), configMapKey(ns, "app"), secretKey(ns, "app")} {
		if edge2.holds(key) {
			t.Errorf("edge-2 holds %s of a pod on edge-1", key)
		}
	}

	// edge-2 may not report for edge-1's pod; the status stays as it was.
	st := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.2.3"}
	if r := edge2.report(podStatusReport(0, pod, st)); codes.Code(r.GetCode()) != codes.PermissionDenied || !strings.Contains(r.GetMessage(), node2) {
		t.Fatalf("edge-2's report for edge-1's pod answered %v, want PermissionDenied naming the node", r)
	}
	if got, err := client.CoreV1().Pods(ns).Get(t.Context(), "web", metav1.GetOptions{}); err != nil || got.Status.PodIP != "" {
		t.Fatalf("pod status after a refused report: %+v, %v", got.Status, err)
	}
	if r := edge1.report(podStatusReport(0, pod, st)); r.GetCode() != 0 {
		t.Fatalf("edge-1's report for its pod answered %v", r)
	}
	if got, err := client.CoreV1().Pods(ns).Get(t.Context(), "web", metav1.GetOptions{}); err != nil || got.Status.PodIP != "10.1.2.3" {
		t.Fatalf("pod status after edge-1's report: %+v, %v", got.Status, err)
	}

	// Deleting the pod deletes it, its ConfigMap and its Secret on edge-1.
	if err := client.CoreV1().Pods(ns).Delete(t.Context(), "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	edge1.waitGone(podKey(ns, "web"))
	edge1.waitGone(configMapKey(ns, "app"))
	edge1.waitGone(secretKey(ns, "app"))
}

func TestThroughServerNodeRegistrationStatusAndHeartbeat(t *testing.T) {
	client := testcluster.Client(t)
	node := testcluster.UniqueName("edge-new")
	deleteNodeAtCleanup(t, client, node)
	_, env := startWithServer(t, controllers.Config{DisableDevices: true})
	e := connect(t, env, node)
	e.waitSynced()

	ready := corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "EdgeReady", LastHeartbeatTime: metav1.Now()}}}
	for _, req := range []*edgesyncv1.SyncRequest{
		{Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: &edgesyncv1.NodeRegistration{Labels: map[string]string{"site": "plant-3"}}}},
		{Message: &edgesyncv1.SyncRequest_NodeStatus{NodeStatus: &edgesyncv1.NodeStatus{Status: toProto(t, &ready, &corev1pb.NodeStatus{})}}},
		{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}},
	} {
		if r := e.report(req); r.GetCode() != 0 {
			t.Fatalf("%T answered %v", req.GetMessage(), r)
		}
	}
	got, err := client.CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("registered node: %v", err)
	}
	if _, edge := got.Labels[controllers.DefaultEdgeLabel]; !edge || len(got.Status.Conditions) != 1 || got.Status.Conditions[0].Reason != "EdgeReady" {
		t.Fatalf("node labels %v conditions %v, want the edge label and the reported Ready condition", got.Labels, got.Status.Conditions)
	}
	lease, err := client.CoordinationV1().Leases("kube-node-lease").Get(t.Context(), node, metav1.GetOptions{})
	if err != nil || lease.Spec.RenewTime == nil || time.Since(lease.Spec.RenewTime.Time) > time.Minute {
		t.Fatalf("lease after heartbeat: %+v, %v", lease, err)
	}
}

func TestThroughServerKubeEdgeDevice(t *testing.T) {
	client := testcluster.Client(t)
	dyn, err := dynamic.NewForConfig(testcluster.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	root := repo.Root(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		installCRDs(ctx, t, dyn, filepath.Join(root, "deploy", "crds"))
	})
	installCRDs(t.Context(), t, dyn, filepath.Join(root, "..", "shared", "kubeedge-crds"))

	ns := testcluster.Namespace(t, client)
	node1 := edgeNode(t, client, "edge-1")
	_, env := startWithServer(t, controllers.Config{})
	e := connect(t, env, node1)
	e.waitSynced()

	if _, err := dyn.Resource(devicesync.DeviceModels).Namespace(ns).Create(t.Context(), object(t, modelYAML), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(devicesync.Devices).Namespace(ns).Create(t.Context(), object(t, strings.Replace(deviceYAML, "NODE", node1, 1)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	key := deviceKey(ns, "thermo-1")
	e.waitFor("the device with its model", func() bool {
		return e.held[key] != nil && e.held[key].GetDeviceEvent().GetModel().GetMetadata().GetName() == "thermometer"
	})

	r := e.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_DeviceStatus{DeviceStatus: &edgesyncv1.DeviceStatus{
		Namespace: ns, Name: "thermo-1", State: "online",
		Twins: []*edgesyncv1.Twin{{PropertyName: "temperature", Reported: &edgesyncv1.TwinValue{Value: "22"}}},
	}}})
	if r.GetCode() != 0 {
		t.Fatalf("device status answered %v", r)
	}
	st, err := dyn.Resource(devicesync.DeviceStatuses).Namespace(ns).Get(t.Context(), "thermo-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	twins, _, _ := unstructured.NestedSlice(st.Object, "status", "twins")
	if len(twins) != 1 {
		t.Fatalf("DeviceStatus twins = %v", twins)
	}
	if v, _, _ := unstructured.NestedString(twins[0].(map[string]any), "reported", "value"); v != "22" {
		t.Fatalf("reported twin value %q, want 22", v)
	}
}

// Resuming costs only the difference: what the edge holds at the current
// version is not sent again, what it should not hold is deleted.
func TestThroughServerResumeSendsOnlyTheDifference(t *testing.T) {
	client := testcluster.Client(t)
	dyn, err := dynamic.NewForConfig(testcluster.RESTConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	ns := testcluster.Namespace(t, client)
	node1 := edgeNode(t, client, "edge-1")
	_, env := startWithServer(t, controllers.Config{})
	createConfig(t, client, ns, "app")
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", node1, "app", "app"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(devicesync.DeviceModels).Namespace(ns).Create(t.Context(), object(t, modelYAML), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := dyn.Resource(devicesync.Devices).Namespace(ns).Create(t.Context(), object(t, strings.Replace(deviceYAML, "NODE", node1, 1)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	first := connect(t, env, node1)
	first.waitSynced()
	first.waitFor("the device with its model", func() bool {
		d := first.held[deviceKey(ns, "thermo-1")]
		return d != nil && d.GetDeviceEvent().GetModel() != nil
	})
	first.waitHeld(podKey(ns, "web"))
	first.waitHeld(configMapKey(ns, "app"))
	first.waitHeld(secretKey(ns, "app"))
	// The pod's token: an edge that holds it is not sent it again.
	first.waitHeld(apiAccessKey(t, pod))
	firstNode := first.waitHeld(nodeKey(node1))
	first.close()
	// The edge lists everything it holds but the secret, and a secret it
	// should not hold.
	held := []*edgesyncv1.ObjectRef{
		{Kind: edgesyncv1.Kind_KIND_SECRET, Namespace: ns, Name: "gone", Uid: "0b5e5c1e-0000-4000-8000-000000000001", ResourceVersion: "1"},
	}
	first.mu.Lock()
	var listed []feed.Key
	for key := range first.held {
		if key != secretKey(ns, "app") {
			listed = append(listed, key)
		}
	}
	first.mu.Unlock()
	for _, key := range listed {
		held = append(held, first.ref(key))
	}

	again := connect(t, env, node1, held...)
	again.waitSynced()
	again.mu.Lock()
	done := again.complete
	// The cluster's own controllers may change the Node meanwhile (taints,
	// annotations): then, and only then, it is sent again.
	var nodeSent uint32
	if m := again.held[nodeKey(node1)]; m != nil {
		nodeSent = 1
		if sameNodeContent(m, firstNode) {
			t.Errorf("resume sent the Node again with the same metadata and spec")
		}
	}
	// Services meant for edges that other tests (other packages, running
	// at the same time) create reach every edge node, during the resync
	// too: they are not this test's to count.
	var othersSent uint32
	for key := range again.held {
		if key.Kind == edgesyncv1.Kind_KIND_SERVICE || key.Kind == edgesyncv1.Kind_KIND_ENDPOINT_SLICE {
			othersSent++
		}
	}
	again.mu.Unlock()
	if sent := done.GetObjectsSent() - nodeSent; sent < 1 || sent > 1+othersSent || done.GetObjectsDeleted() != 1 {
		t.Errorf("resume sent %d objects and deleted %d, want 1 (the secret it did not list) and 1 (the secret it should not hold)",
			sent, done.GetObjectsDeleted())
	}
	again.waitHeld(secretKey(ns, "app"))
	again.waitGone(secretKey(ns, "gone"))
}

// countingTransport counts the reads (GET without watch) sent to the API
// server, and the requests for built-in types that do not ask for
// protobuf.
type countingTransport struct {
	next     http.RoundTripper
	reads    atomic.Int64
	builtins atomic.Int64
	jsonOnly atomic.Int64
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodGet && req.URL.Query().Get("watch") != "true" {
		c.reads.Add(1)
	}
	if strings.HasPrefix(req.URL.Path, "/api/v1/") {
		c.builtins.Add(1)
		if !strings.HasPrefix(req.Header.Get("Accept"), "application/vnd.kubernetes.protobuf") {
			c.jsonOnly.Add(1)
		}
	}
	return c.next.RoundTrip(req)
}

func TestConnectingHundredNodesReadsNothingFromTheAPIServer(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	createConfig(t, client, ns, "app")
	var nodes []string
	for range 100 {
		nodes = append(nodes, edgeNode(t, client, "edge"))
	}
	for i, node := range nodes[:10] {
		if _, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("p"+string(rune('a'+i)), node, "app", "app"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	counter := &countingTransport{}
	cfg := restConfigWith(t, func(next http.RoundTripper) http.RoundTripper { counter.next = next; return counter })
	ctrls, env := startWithServer(t, controllers.Config{RESTConfig: cfg, DisableDevices: true})
	// The caches hold the pods before anyone connects.
	eventually(t, "the caches see the pods", func() (bool, error) {
		objs, err := ctrls.Desired(nodes[9])
		for _, o := range objs {
			if o.Key == podKey(ns, "pj") {
				return true, err
			}
		}
		return false, err
	})
	before := counter.reads.Load()

	edges := make([]*edge, len(nodes))
	for i, node := range nodes {
		edges[i] = connect(t, env, node)
	}
	for i, e := range edges {
		e.waitSynced()
		if i < 10 {
			e.waitHeld(podKey(ns, "p"+string(rune('a'+i))))
		}
	}
	if reads := counter.reads.Load() - before; reads != 0 {
		t.Fatalf("connecting %d nodes made %d GET/LIST calls to the API server, want none", len(nodes), reads)
	}
	// Lists and watches of pods, nodes, configmaps and secrets ask for
	// protobuf (client-go's generated clients do by default), which
	// decodes several times cheaper than JSON: keep it that way.
	if n, json := counter.builtins.Load(), counter.jsonOnly.Load(); n == 0 || json != 0 {
		t.Errorf("%d of %d requests for core objects did not ask for protobuf", json, n)
	}
	// The counter does count reads made with this configuration.
	counted, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := counted.CoreV1().Nodes().Get(t.Context(), nodes[0], metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if counter.reads.Load() == before {
		t.Fatal("a GET through the counting transport was not counted")
	}
}
