package agent

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server/feed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, append(repo.ClientGoLeakOptions(),
		// The controllers' work queues, in the end-to-end tests, end their
		// metrics loop shortly after shutdown.
		goleak.IgnoreAnyFunction("k8s.io/client-go/util/workqueue.(*Typed[...]).updateUnfinishedWorkLoop"))...)
}

func condition(st *corev1.PodStatus, typ corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range st.Conditions {
		if c.Type == typ {
			return c.Status
		}
	}
	return ""
}

func TestPodStatus(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "a", Image: "nginx"}, {Name: "b", Image: "redis"}}},
		Status:     corev1.PodStatus{QOSClass: corev1.PodQOSBestEffort, Phase: corev1.PodPending},
	}
	st := PodStatus(pod, now)
	if st.Phase != corev1.PodRunning || condition(st, corev1.PodReady) != corev1.ConditionTrue || condition(st, corev1.ContainersReady) != corev1.ConditionTrue {
		t.Fatalf("running pod: phase %s ready %s", st.Phase, condition(st, corev1.PodReady))
	}
	if len(st.ContainerStatuses) != 2 || st.ContainerStatuses[1].State.Running == nil || !st.ContainerStatuses[1].Ready {
		t.Errorf("container statuses = %+v, want two running and ready", st.ContainerStatuses)
	}
	if st.QOSClass != corev1.PodQOSBestEffort {
		t.Errorf("QOS class dropped: %q", st.QOSClass)
	}

	// Once the cloud holds that status, the same state reports the same
	// status, however much later.
	pod.Status = *st
	if again := PodStatus(pod, now.Add(time.Hour)); !equality.Semantic.DeepEqual(again, st) {
		t.Errorf("reporting an unchanged pod again produced a different status:\n%+v\n%+v", again, st)
	}

	pod.DeletionTimestamp = &metav1.Time{Time: now}
	term := PodStatus(pod, now.Add(time.Minute))
	if term.Phase != corev1.PodSucceeded || condition(term, corev1.PodReady) != corev1.ConditionFalse {
		t.Errorf("terminating pod: phase %s ready %s, want Succeeded and not ready", term.Phase, condition(term, corev1.PodReady))
	}
	for _, cs := range term.ContainerStatuses {
		if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 || cs.Ready {
			t.Errorf("container %s of a terminating pod: %+v, want terminated with exit code 0", cs.Name, cs.State)
		}
	}
	pod.Status = *term
	if again := PodStatus(pod, now.Add(time.Hour)); !equality.Semantic.DeepEqual(again, term) {
		t.Error("reporting a terminated pod again produced a different status")
	}
}

func TestDescribe(t *testing.T) {
	cm := func(data map[string]string) edgeclient.Object {
		return edgeclient.Object{ConfigMap: &corev1.ConfigMap{Data: data}}
	}
	secret := func(data map[string]string) edgeclient.Object {
		s := &corev1.Secret{Data: map[string][]byte{}}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		return edgeclient.Object{Secret: s}
	}
	pod := func(image string, deleting bool) edgeclient.Object {
		p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: image}}}}
		if deleting {
			p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
		}
		return edgeclient.Object{Pod: p}
	}
	node := func(labels map[string]string, cordoned bool, taints ...corev1.Taint) edgeclient.Object {
		return edgeclient.Object{Node: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.NodeSpec{Unschedulable: cordoned, Taints: taints}}}
	}
	noSchedule := corev1.Taint{Key: "dedicated", Value: "edge", Effect: corev1.TaintEffectNoSchedule}
	ptr := func(o edgeclient.Object) *edgeclient.Object { return &o }
	tests := []struct {
		name string
		obj  edgeclient.Object
		old  *edgeclient.Object
		want string
	}{
		{"new pod", pod("nginx:1", false), nil, "images=nginx:1"},
		{"new image", pod("nginx:2", false), ptr(pod("nginx:1", false)), "images nginx:1 -> nginx:2"},
		{"deleting", pod("nginx:1", true), ptr(pod("nginx:1", false)), "terminating"},
		{"new configmap", cm(map[string]string{"b": "1", "a": "2"}), nil, "keys=a,b"},
		{"configmap change", cm(map[string]string{"a": "1", "b": "3", "c": "4"}), ptr(cm(map[string]string{"a": "1", "b": "2", "d": "5"})), "data ~b +c -d"},
		{"new node", node(map[string]string{"a": "1"}, false), nil, "labels=1 taints=none"},
		{"kubectl label", node(map[string]string{"a": "2", "b": "3"}, false), ptr(node(map[string]string{"a": "1", "c": "4"}, false)), "labels ~a=2 +b=3 -c"},
		{"kubectl cordon", node(nil, true), ptr(node(nil, false)), "cordoned"},
		{"kubectl uncordon", node(nil, false), ptr(node(nil, true)), "uncordoned"},
		{"kubectl taint", node(nil, false, noSchedule), ptr(node(nil, false)), "taints none -> dedicated=edge:NoSchedule"},
		{"secret change hides values", secret(map[string]string{"pw": "new-secret"}), ptr(secret(map[string]string{"pw": "old-secret"})), "data ~pw"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Describe(tt.obj, tt.old); got != tt.want {
				t.Errorf("describe = %q, want %q", got, tt.want)
			}
		})
	}
}

// syncBuffer is an io.Writer safe for the agent and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// deletingPod is a pod the cloud is deleting, as controllers send it.
func deletingPod(t *testing.T, ns, name, node, rv string) *feed.Object {
	meta := &metav1pb.ObjectMeta{
		Namespace: proto.String(ns), Name: proto.String(name), Uid: proto.String("uid-" + ns + "-" + name),
		ResourceVersion: proto.String(rv), DeletionTimestamp: &metav1pb.Time{Seconds: proto.Int64(time.Now().Unix())},
	}
	obj, err := feed.Encode(feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: ns, Name: name}, meta.GetUid(), rv, false,
		&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
			Pod: &corev1pb.Pod{Metadata: meta, Spec: &corev1pb.PodSpec{
				NodeName:   proto.String(node),
				Containers: []*corev1pb.Container{{Name: proto.String("main"), Image: proto.String("registry.k8s.io/pause:3.10")}},
			}},
		}}})
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// TestAgentAgainstServer runs the agent against the real sync server: it
// registers, reports node status, reports each pod Running and Ready, a
// deleted pod terminated, prints one line per event, and `list` shows the
// store afterwards.
func TestAgentAgainstServer(t *testing.T) {
	const node = "edge-agent"
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	certFile, keyFile := env.NodeCert(t, node)
	dir := t.TempDir()
	ctrls.Set(node, feedtest.Pod("ns", "web", node, "1"), feedtest.ConfigMap("ns", "cfg", "7", map[string]string{"k": "v"}),
		nodeObject(t, node, "8", map[string]string{"site": "lab"}, false))

	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Client: edgeclient.Config{
				Server: env.Addr, CAFile: env.CAFile, CertFile: certFile, KeyFile: keyFile,
				NodeName: node, StoreDir: dir, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
			},
			Version: "test", Labels: map[string]string{"site": "lab"}, StatusInterval: time.Hour, Out: out,
		})
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
	}
	defer stop()

	wctx, wcancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer wcancel()
	podPhase := func(name string) func(feedtest.Report) bool {
		return func(r feedtest.Report) bool {
			ps := r.Request.GetPodStatus()
			return ps.GetName() == name && ps.GetStatus().GetPhase() == "Running" && ps.GetUid() == "uid-ns-"+name &&
				hasCondition(ps.GetStatus(), "Ready", "True")
		}
	}
	waitReport(t, wctx, ctrls, "Running and Ready status of ns/web", podPhase("web"))
	waitReport(t, wctx, ctrls, "node registration with the configured and a kubelet's labels", func(r feedtest.Report) bool {
		labels := r.Request.GetNodeRegistration().GetLabels()
		return labels["site"] == "lab" && labels["kubernetes.io/hostname"] == node && labels["kubernetes.io/os"] == runtime.GOOS
	})
	waitReport(t, wctx, ctrls, "node status", func(r feedtest.Report) bool {
		return r.Request.GetNodeStatus().GetStatus().GetNodeInfo().GetArchitecture() != ""
	})

	ctrls.Put(node, deletingPod(t, "ns", "web", node, "2"))
	waitReport(t, wctx, ctrls, "terminated status of ns/web", func(r feedtest.Report) bool {
		ps := r.Request.GetPodStatus()
		return ps.GetName() == "web" && ps.GetStatus().GetPhase() == "Succeeded"
	})
	ctrls.Put(node, feedtest.Pod("ns", "db", node, "3"))
	waitReport(t, wctx, ctrls, "Running and Ready status of ns/db", podPhase("db"))
	ctrls.Put(node, device(t, "ns", "thermo", "4", "21"))
	waitReport(t, wctx, ctrls, "status of device ns/thermo", func(r feedtest.Report) bool {
		ds := r.Request.GetDeviceStatus()
		return ds.GetName() == "thermo" && ds.GetState() == "online" && len(ds.GetTwins()) == 1 &&
			ds.GetTwins()[0].GetReported().GetValue() == "21"
	})
	// A new version with the same desired value (as after the cloud wrote
	// the status) is not reported again; a new desired value is.
	ctrls.Put(node, device(t, "ns", "thermo", "5", "21"))
	// kubectl label and cordon, before a pod whose report shows they
	// were applied.
	ctrls.Put(node, nodeObject(t, node, "9", map[string]string{"site": "lab", "zone": "north"}, true))
	ctrls.Put(node, feedtest.Pod("ns", "cache", node, "6"))
	waitReport(t, wctx, ctrls, "Running and Ready status of ns/cache", podPhase("cache"))
	ctrls.Put(node, device(t, "ns", "thermo", "7", "22"))
	waitReport(t, wctx, ctrls, "status of device ns/thermo at 22", func(r feedtest.Report) bool {
		twins := r.Request.GetDeviceStatus().GetTwins()
		return len(twins) == 1 && twins[0].GetReported().GetValue() == "22"
	})
	deviceReports := 0
	for _, r := range ctrls.Reports() {
		if r.Request.GetDeviceStatus() != nil {
			deviceReports++
		}
	}
	if deviceReports != 2 {
		t.Errorf("%d device status reports, want 2: one per desired value", deviceReports)
	}
	stop()

	lines := out.String()
	for _, want := range []string{"ADDED    Pod       ns/web rv=1 images=", "ADDED    ConfigMap ns/cfg rv=7 keys=k", "MODIFIED Pod       ns/web rv=2 terminating", "ADDED    Pod       ns/db rv=3", "ADDED    Device    ns/thermo rv=4 model=thermometer properties=1",
		"ADDED    Node      edge-agent rv=8 labels=1 taints=none", "MODIFIED Node      edge-agent rv=9 labels +zone=north cordoned"} {
		if !strings.Contains(lines, want) {
			t.Errorf("output lacks %q:\n%s", want, lines)
		}
	}

	s, err := store.Open(dir, store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var listed bytes.Buffer
	if err := List(&listed, s, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"KIND", "Pod         ns          db", "ConfigMap   ns          cfg", "terminating"} {
		if !strings.Contains(listed.String(), want) {
			t.Errorf("list output lacks %q:\n%s", want, listed.String())
		}
	}
}

// nodeObject is the node's own Node as the controllers send it.
func nodeObject(t *testing.T, name, rv string, labels map[string]string, cordoned bool) *feed.Object {
	meta := &metav1pb.ObjectMeta{Name: proto.String(name), Uid: proto.String("uid-" + name), ResourceVersion: proto.String(rv), Labels: labels}
	obj, err := feed.Encode(feed.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: name}, meta.GetUid(), rv, false,
		&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_NodeEvent{NodeEvent: &edgesyncv1.NodeEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
			Node: &corev1pb.Node{Metadata: meta, Spec: &corev1pb.NodeSpec{Unschedulable: proto.Bool(cordoned)}},
		}}})
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// device is a device with one property whose desired value is desired.
func device(t *testing.T, ns, name, rv, desired string) *feed.Object {
	meta := &metav1pb.ObjectMeta{Namespace: proto.String(ns), Name: proto.String(name), Uid: proto.String("uid-" + name), ResourceVersion: proto.String(rv)}
	obj, err := feed.Encode(feed.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: ns, Name: name}, meta.GetUid(), rv, false,
		&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_DeviceEvent{DeviceEvent: &edgesyncv1.DeviceEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
			Device: &edgesyncv1.Device{Metadata: meta, ModelName: "thermometer", Properties: []*edgesyncv1.DeviceProperty{
				{Name: "temperature", Desired: &edgesyncv1.TwinValue{Value: desired}},
			}},
		}}})
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func hasCondition(st *corev1pb.PodStatus, typ, status string) bool {
	for _, c := range st.GetConditions() {
		if c.GetType() == typ && c.GetStatus() == status {
			return true
		}
	}
	return false
}

func waitReport(t *testing.T, ctx context.Context, ctrls *feedtest.Controllers, what string, match func(feedtest.Report) bool) {
	t.Helper()
	for n := 1; ; n++ {
		reports, err := ctrls.WaitReports(ctx, n)
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		for _, r := range reports {
			if match(r) {
				return
			}
		}
		n = len(reports)
	}
}
