package edgeclient

import (
	"context"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/server/pki"
)

// FuzzSyncResponse hands arbitrary SyncResponse bytes to a session as the
// stream would: whatever they hold, the client stores an object, refuses
// it (a Nack) or ignores a message it does not know, and never panics;
// every object it stored decodes for the agent, and applying the same
// message again changes nothing.
func FuzzSyncResponse(f *testing.F) {
	meta := func(name, rv string) *metav1pb.ObjectMeta {
		return &metav1pb.ObjectMeta{Namespace: proto.String("default"), Name: proto.String(name), Uid: proto.String("u-" + name), ResourceVersion: proto.String(rv)}
	}
	apply, del := edgesyncv1.EventType_EVENT_TYPE_APPLY, edgesyncv1.EventType_EVENT_TYPE_DELETE
	for _, msg := range []*edgesyncv1.SyncResponse{
		{Sequence: 1, Message: &edgesyncv1.SyncResponse_Welcome{Welcome: &edgesyncv1.Welcome{SessionId: "s", AckWindow: 128}}},
		{Sequence: 2, Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{Type: apply, Pod: &corev1pb.Pod{Metadata: meta("p", "3"),
			Spec: &corev1pb.PodSpec{NodeName: proto.String("edge-1"), Containers: []*corev1pb.Container{{Name: proto.String("c"), Image: proto.String("i")}}}}}}},
		{Sequence: 3, Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{Type: apply, ConfigMap: &corev1pb.ConfigMap{Metadata: meta("c", "4"), Data: map[string]string{"k": "v"}}}}},
		{Sequence: 4, Message: &edgesyncv1.SyncResponse_SecretEvent{SecretEvent: &edgesyncv1.SecretEvent{Type: del, Secret: &corev1pb.Secret{Metadata: meta("s", "")}}}},
		{Sequence: 5, Message: &edgesyncv1.SyncResponse_NodeEvent{NodeEvent: &edgesyncv1.NodeEvent{Type: apply, Node: &corev1pb.Node{Metadata: &metav1pb.ObjectMeta{Name: proto.String("edge-1")}}}}},
		{Sequence: 6, Message: &edgesyncv1.SyncResponse_DeviceEvent{DeviceEvent: &edgesyncv1.DeviceEvent{Type: apply, Device: &edgesyncv1.Device{Metadata: meta("d", "1")}}}},
		{Sequence: 7, Message: &edgesyncv1.SyncResponse_SyncComplete{SyncComplete: &edgesyncv1.SyncComplete{ObjectsSent: 2}}},
		{Sequence: 8, Message: &edgesyncv1.SyncResponse_StatusResult{StatusResult: &edgesyncv1.StatusResult{RequestId: 9, Code: 5}}},
		{Sequence: 9, Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{Type: edgesyncv1.EventType(7), Pod: &corev1pb.Pod{Metadata: meta("p", "5")}}}},
	} {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}

	dir := f.TempDir()
	ca, err := pki.NewCA("fuzz-ca")
	if err != nil {
		f.Fatal(err)
	}
	node, err := ca.IssueNode("edge-1")
	if err != nil {
		f.Fatal(err)
	}
	caFile, certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")
	if err := ca.KeyPair().WriteFiles(caFile, filepath.Join(dir, "ca.key"), false); err != nil {
		f.Fatal(err)
	}
	if err := node.WriteFiles(certFile, keyFile, false); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		var msg edgesyncv1.SyncResponse
		if proto.Unmarshal(data, &msg) != nil {
			return // the stream refuses it before the session sees it
		}
		if msg.GetTunnelOpen() != nil {
			return // opens a stream back to the server: the tunnel tests' part
		}
		var events []Event
		c, err := New(Config{
			Server: "127.0.0.1:1", CAFile: caFile, CertFile: certFile, KeyFile: keyFile, NodeName: "edge-1", Store: store.NewMemory(),
			OnEvent: func(_ context.Context, ev Event) error { events = append(events, ev); return nil },
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s := &session{c: c, gen: 1, wake: make(chan struct{}, 1), welcomeCh: make(chan struct{})}
		if err := s.applyBatch(t.Context(), []*edgesyncv1.SyncResponse{&msg}); err != nil {
			t.Fatalf("applying %v: %v", &msg, err)
		}
		held := c.store.(*store.Memory).Len()
		for _, kind := range edgesyncv1.Kind_value {
			objs, err := c.List(edgesyncv1.Kind(kind))
			if err != nil {
				t.Fatalf("an object the client stored does not decode: %v", err)
			}
			_ = objs
		}
		// The same message again, as after a reconnect: no new event.
		events = nil
		if msg.GetWelcome() != nil {
			return // a second Welcome on one stream is ignored, logged
		}
		if err := s.applyBatch(t.Context(), []*edgesyncv1.SyncResponse{&msg}); err != nil {
			t.Fatalf("applying %v again: %v", &msg, err)
		}
		if len(events) != 0 {
			t.Fatalf("applying %v again gave events %v", &msg, events)
		}
		if n := c.store.(*store.Memory).Len(); n != held {
			t.Fatalf("applying %v again changed the store from %d to %d objects", &msg, held, n)
		}
	})
}
