package edgeclient

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
)

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web", Namespace: "shop", UID: "uid-1", ResourceVersion: "42",
			Labels: map[string]string{"app": "web"},
		},
		Spec: corev1.PodSpec{
			NodeName: "edge-1",
			Containers: []corev1.Container{{
				Name: "nginx", Image: "nginx:1.27",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}},
				EnvFrom:   []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
			}},
		},
	}
}

func podEvent(t *testing.T, typ edgesyncv1.EventType, pod *corev1.Pod) *edgesyncv1.SyncResponse {
	t.Helper()
	pb := &corev1pb.Pod{}
	if err := toProto(pod, pb); err != nil {
		t.Fatal(err)
	}
	return &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{Type: typ, Pod: pb}}}
}

func TestPodRoundTrip(t *testing.T) {
	pod := testPod()
	ev, isObj, err := splitEvent(podEvent(t, edgesyncv1.EventType_EVENT_TYPE_APPLY, pod))
	if err != nil || !isObj {
		t.Fatalf("splitEvent: object=%v err=%v", isObj, err)
	}
	want := store.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "shop", Name: "web"}
	if ev.key != want || ev.record.UID != "uid-1" || ev.record.ResourceVersion != "42" {
		t.Fatalf("record = %v %+v, want key %v uid-1 @42", ev.key, ev.record, want)
	}
	obj, err := Decode(ev.record)
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(obj.Pod, pod) {
		t.Errorf("decoded pod differs:\n got %+v\nwant %+v", obj.Pod, pod)
	}
}

func TestDeviceRoundTrip(t *testing.T) {
	name, ns, uid, rv := "thermo", "plant", "d-1", "9"
	msg := &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_DeviceEvent{DeviceEvent: &edgesyncv1.DeviceEvent{
		Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
		Device: &edgesyncv1.Device{
			Metadata:  &metav1pb.ObjectMeta{Name: &name, Namespace: &ns, Uid: &uid, ResourceVersion: &rv},
			ModelName: "thermometer", NodeName: "edge-1",
			Properties: []*edgesyncv1.DeviceProperty{{Name: "temperature", Desired: &edgesyncv1.TwinValue{Value: "21"}}},
		},
		Model: &edgesyncv1.DeviceModel{Protocol: "modbus"},
	}}}
	ev, _, err := splitEvent(msg)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := Decode(ev.record)
	if err != nil {
		t.Fatal(err)
	}
	d := obj.Device
	if d == nil || d.Device.GetModelName() != "thermometer" || d.Device.GetProperties()[0].GetDesired().GetValue() != "21" || d.Model.GetProtocol() != "modbus" {
		t.Errorf("decoded device = %v", d)
	}
}

func TestNodeRoundTrip(t *testing.T) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "edge-1", UID: "n-1", ResourceVersion: "77", Labels: map[string]string{"zone": "north"}},
		Spec: corev1.NodeSpec{
			Unschedulable: true,
			Taints:        []corev1.Taint{{Key: "dedicated", Value: "edge", Effect: corev1.TaintEffectNoSchedule}},
		},
	}
	pb := &corev1pb.Node{}
	if err := toProto(n, pb); err != nil {
		t.Fatal(err)
	}
	ev, isObj, err := splitEvent(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_NodeEvent{NodeEvent: &edgesyncv1.NodeEvent{
		Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Node: pb,
	}}})
	if err != nil || !isObj {
		t.Fatalf("splitEvent: object=%v err=%v", isObj, err)
	}
	// Cluster-scoped: no namespace.
	want := store.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: "edge-1"}
	if ev.key != want || ev.record.UID != "n-1" || ev.record.ResourceVersion != "77" {
		t.Fatalf("record = %v %+v, want key %v n-1 @77", ev.key, ev.record, want)
	}
	obj, err := Decode(ev.record)
	if err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(obj.Node, n) {
		t.Errorf("decoded node differs:\n got %+v\nwant %+v", obj.Node, n)
	}
}

func TestMalformedEvents(t *testing.T) {
	noName := testPod()
	noName.Name = ""
	tests := []struct {
		name string
		msg  *edgesyncv1.SyncResponse
	}{
		{"no name", podEvent(t, edgesyncv1.EventType_EVENT_TYPE_APPLY, noName)},
		{"no event type", podEvent(t, edgesyncv1.EventType_EVENT_TYPE_UNSPECIFIED, testPod())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, isObj, err := splitEvent(tt.msg); !isObj || err == nil {
				t.Errorf("splitEvent accepted a malformed event (object=%v)", isObj)
			}
		})
	}
	if _, isObj, err := splitEvent(&edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_SyncComplete{}}); isObj || err != nil {
		t.Errorf("SyncComplete taken for an object event (object=%v, err=%v)", isObj, err)
	}
}
