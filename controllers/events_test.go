package controllers_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/eventsync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/testcluster"
)

func eventAbout(kind edgesyncv1.Kind, namespace, name, uid, reason, note string) *edgesyncv1.SyncRequest {
	return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_EventReport{EventReport: &edgesyncv1.EventReport{
		Regarding: &edgesyncv1.ObjectRef{Kind: kind, Namespace: namespace, Name: name, Uid: uid},
		Type:      corev1.EventTypeNormal, Reason: reason, Action: reason, Note: note,
		EventTime: timestamppb.Now(),
	}}}
}

func TestEdgeEventsBecomeKubernetesEvents(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)
	node1, node2 := edgeNode(t, client, "edge-1"), edgeNode(t, client, "edge-2")
	reg := prometheus.NewRegistry()
	_, env := startWithServer(t, controllers.Config{DisableDevices: true, Registerer: reg, NodeEventRate: 2, NodeEventBurst: 10})
	edge1, edge2 := connect(t, env, node1), connect(t, env, node2)
	edge1.waitSynced()
	edge2.waitSynced()
	pod, err := client.CoreV1().Pods(ns).Create(t.Context(), podUsing("web", node1, "", ""), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	edge1.waitHeld(podKey(ns, "web"))

	// Three reports of the same event: one Event, its series counting 3.
	for range 3 {
		if r := edge1.report(eventAbout(edgesyncv1.Kind_KIND_POD, ns, "web", string(pod.UID), "Started", "Started container app")); r.GetCode() != 0 {
			t.Fatalf("edge-1's event about its pod answered %v", r)
		}
	}
	// What kubectl describe pod lists: the pod's events by involved object.
	var described []corev1.Event
	eventually(t, "the pod's Started event to count 3", func() (bool, error) {
		list, err := client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: fields.Set{
			"involvedObject.name": "web", "involvedObject.kind": "Pod", "involvedObject.uid": string(pod.UID),
		}.AsSelector().String()})
		if err != nil {
			return false, err
		}
		described = list.Items
		// kubectl describe shows a series as "(x3 over ...)".
		return len(list.Items) == 1 && list.Items[0].Series != nil && list.Items[0].Series.Count == 3, nil
	})
	if ev := described[0]; ev.Reason != "Started" || ev.Message != "Started container app" || ev.ReportingInstance != node1 || ev.ReportingController != eventsync.ReportingController {
		t.Errorf("event reason %q message %q reported by %s/%s, want Started by %s/%s", ev.Reason, ev.Message,
			ev.ReportingController, ev.ReportingInstance, eventsync.ReportingController, node1)
	}
	var written *eventsv1.Event
	if written, err = client.EventsV1().Events(ns).Get(t.Context(), described[0].Name, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	if written.Series == nil || written.Series.Count != 3 {
		t.Errorf("events.k8s.io series = %+v, want count 3", written.Series)
	}

	// A node may report only about itself, its pods and devices.
	for what, req := range map[string]*edgesyncv1.SyncRequest{
		"edge-1's pod": eventAbout(edgesyncv1.Kind_KIND_POD, ns, "web", "", "Killing", "Stopping container app"),
		"edge-1":       eventAbout(edgesyncv1.Kind_KIND_NODE, "", node1, "", "Rebooted", "rebooted"),
	} {
		if r := edge2.report(req); codes.Code(r.GetCode()) != codes.PermissionDenied || !strings.Contains(r.GetMessage(), node2) {
			t.Errorf("edge-2's event about %s answered %v, want PermissionDenied naming edge-2", what, r)
		}
	}

	// A flood of events from edge-1 about itself: beyond its budget they
	// are dropped and counted; the stream stays, and its pod status
	// report is still written.
	const flood = 300 // more than the stream's report burst (200)
	first := edge1.nextID.Load() + 1
	for i := range flood {
		req := eventAbout(edgesyncv1.Kind_KIND_NODE, "", node1, "", "Flood", fmt.Sprintf("event %d", i))
		req.RequestId = edge1.nextID.Add(1)
		edge1.send(req)
	}
	edge1.waitFor("answers to the flood", func() bool {
		for id := first; id < first+flood; id++ {
			if edge1.results[id] == nil {
				return false
			}
		}
		return true
	})
	dropped := 0
	edge1.mu.Lock()
	for id := first; id < first+flood; id++ {
		switch codes.Code(edge1.results[id].GetCode()) {
		case codes.OK:
		case codes.ResourceExhausted:
			dropped++
		default:
			t.Errorf("flood event answered %v", edge1.results[id])
		}
	}
	edge1.mu.Unlock()
	t.Logf("%d of %d flood events dropped (budget %g/s, bursts of %d)", dropped, flood, 2.0, 10)
	if dropped == 0 || dropped == flood {
		t.Errorf("%d of %d flood events dropped; want the budget to pass some and drop the rest", dropped, flood)
	}
	if got := metric(t, reg, "edgesync_edge_events_total", "rate_limited"); got != float64(dropped) {
		t.Errorf("edgesync_edge_events_total{result=rate_limited} = %v, want %d", got, dropped)
	}
	st := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.9.8.7"}
	if r := edge1.report(podStatusReport(0, pod, st)); r.GetCode() != 0 {
		t.Fatalf("edge-1's pod status after the flood answered %v", r)
	}
	if got, err := client.CoreV1().Pods(ns).Get(t.Context(), "web", metav1.GetOptions{}); err != nil || got.Status.PodIP != "10.9.8.7" {
		t.Fatalf("pod status after the flood: %+v, %v", got.Status, err)
	}
}
