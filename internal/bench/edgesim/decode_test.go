package edgesim

import (
	"testing"
	"time"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
	"github.com/edgesync/edgesync/server/feed"
)

func meta(ns, name, uid, rv string) *metav1pb.ObjectMeta {
	return &metav1pb.ObjectMeta{Namespace: proto.String(ns), Name: proto.String(name), Uid: proto.String(uid), ResourceVersion: proto.String(rv),
		Labels: map[string]string{"app": "x"}}
}

// The shallow decoder must read from real encoded responses what the full
// decoder would.
func TestShallowCodecReadsWhatTheFullDecoderWould(t *testing.T) {
	tests := []struct {
		name string
		msg  *edgesyncv1.SyncResponse
		want response
	}{{
		name: "welcome",
		msg:  &edgesyncv1.SyncResponse{Sequence: 1, Message: &edgesyncv1.SyncResponse_Welcome{Welcome: &edgesyncv1.Welcome{SessionId: "s1", HeartbeatInterval: durationpb.New(10 * time.Second)}}},
		want: response{sequence: 1, welcome: &edgesyncv1.Welcome{SessionId: "s1", HeartbeatInterval: durationpb.New(10 * time.Second)}},
	}, {
		name: "config map with sent-at",
		msg: &edgesyncv1.SyncResponse{Sequence: 300, Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{
			Type:      edgesyncv1.EventType_EVENT_TYPE_APPLY,
			ConfigMap: &corev1pb.ConfigMap{Metadata: meta("ns", "cm", "u1", "42"), Data: map[string]string{"a": "b", SentAtKey: "123456789"}},
		}}},
		want: response{sequence: 300, sentAt: "123456789", ref: &edgesyncv1.ObjectRef{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "ns", Name: "cm", Uid: "u1", ResourceVersion: "42"}},
	}, {
		name: "pod delete",
		msg: &edgesyncv1.SyncResponse{Sequence: 7, Message: &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_DELETE,
			Pod:  &corev1pb.Pod{Metadata: meta("ns", "p", "u2", "9"), Spec: &corev1pb.PodSpec{NodeName: proto.String("edge-1")}},
		}}},
		want: response{sequence: 7, deleted: true, ref: &edgesyncv1.ObjectRef{Kind: edgesyncv1.Kind_KIND_POD, Namespace: "ns", Name: "p", Uid: "u2", ResourceVersion: "9"}},
	}, {
		name: "device",
		msg: &edgesyncv1.SyncResponse{Sequence: 8, Message: &edgesyncv1.SyncResponse_DeviceEvent{DeviceEvent: &edgesyncv1.DeviceEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Device: &edgesyncv1.Device{Metadata: meta("ns", "d", "u3", "5/6"), ModelName: "m"},
		}}},
		want: response{sequence: 8, ref: &edgesyncv1.ObjectRef{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: "ns", Name: "d", Uid: "u3", ResourceVersion: "5/6"}},
	}, {
		name: "node",
		msg: &edgesyncv1.SyncResponse{Sequence: 11, Message: &edgesyncv1.SyncResponse_NodeEvent{NodeEvent: &edgesyncv1.NodeEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Node: &corev1pb.Node{Metadata: meta("", "edge-1", "u4", "77"), Spec: &corev1pb.NodeSpec{Unschedulable: proto.Bool(true)}},
		}}},
		want: response{sequence: 11, ref: &edgesyncv1.ObjectRef{Kind: edgesyncv1.Kind_KIND_NODE, Name: "edge-1", Uid: "u4", ResourceVersion: "77"}},
	}, {
		name: "token",
		msg: &edgesyncv1.SyncResponse{Sequence: 12, Message: &edgesyncv1.SyncResponse_TokenEvent{TokenEvent: &edgesyncv1.TokenEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Token: &edgesyncv1.ServiceAccountToken{Metadata: meta("ns", "p/kube-api-access-x/token", "u5", "ab12"), Token: "jwt"},
		}}},
		want: response{sequence: 12, ref: &edgesyncv1.ObjectRef{Kind: edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN, Namespace: "ns", Name: "p/kube-api-access-x/token", Uid: "u5", ResourceVersion: "ab12"}},
	}, {
		name: "subscribed resource",
		msg: &edgesyncv1.SyncResponse{Sequence: 13, Message: &edgesyncv1.SyncResponse_ResourceEvent{ResourceEvent: &edgesyncv1.ResourceEvent{
			Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Metadata: meta("ns", "g1", "u6", "88"),
			Group: "bench.edgesync.io", Version: "v1", Resource: "gadgets", Object: []byte(`{"kind":"Gadget"}`),
		}}},
		want: response{sequence: 13, ref: &edgesyncv1.ObjectRef{Kind: edgesyncv1.Kind_KIND_RESOURCE, Namespace: "ns",
			Name: feed.ResourceName("bench.edgesync.io", "v1", "gadgets", "g1"), Uid: "u6", ResourceVersion: "88"}},
	}, {
		name: "status result",
		msg:  &edgesyncv1.SyncResponse{Sequence: 9, Message: &edgesyncv1.SyncResponse_StatusResult{StatusResult: &edgesyncv1.StatusResult{RequestId: 3}}},
		want: response{sequence: 9, statusResult: true},
	}, {
		name: "sync complete",
		msg:  &edgesyncv1.SyncResponse{Sequence: 10, Message: &edgesyncv1.SyncResponse_SyncComplete{SyncComplete: &edgesyncv1.SyncComplete{ObjectsSent: 4}}},
		want: response{sequence: 10, syncComplete: true},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := proto.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			var got response
			if err := (shallowCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
				t.Fatal(err)
			}
			if got.sequence != tt.want.sequence || got.deleted != tt.want.deleted || got.sentAt != tt.want.sentAt ||
				got.syncComplete != tt.want.syncComplete || got.statusResult != tt.want.statusResult ||
				!proto.Equal(got.ref, tt.want.ref) || !proto.Equal(got.welcome, tt.want.welcome) {
				t.Errorf("decoded %+v (ref %v, welcome %v), want %+v (ref %v, welcome %v)", got, got.ref, got.welcome, tt.want, tt.want.ref, tt.want.welcome)
			}
		})
	}
}

func TestShallowCodecRefusesTruncatedInput(t *testing.T) {
	b, err := proto.Marshal(&edgesyncv1.SyncResponse{Sequence: 1, Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{
		ConfigMap: &corev1pb.ConfigMap{Metadata: meta("ns", "cm", "u", "1")},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	var got response
	if err := (shallowCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:len(b)-3])}, &got); err == nil {
		t.Fatalf("truncated message decoded without error: %+v", got)
	}
}

// A batch reads as its events, in order, each with its own sequence; the
// message's sequence is the last event's.
func TestShallowCodecReadsBatches(t *testing.T) {
	event := func(seq uint64, name string, typ edgesyncv1.EventType) *edgesyncv1.SyncResponse {
		return &edgesyncv1.SyncResponse{Sequence: seq, Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{
			Type: typ, ConfigMap: &corev1pb.ConfigMap{Metadata: meta("ns", name, "u-"+name, "1")},
		}}}
	}
	// A SubscriptionEvent, which the simulator does not read, is skipped
	// inside a batch as it is alone (the 10,000-node run of 2026-12-06
	// refused whole batches for it, and every edge that got one redialled).
	unread := &edgesyncv1.SyncResponse{Sequence: 5, Message: &edgesyncv1.SyncResponse_SubscriptionEvent{SubscriptionEvent: &edgesyncv1.SubscriptionEvent{
		Type: edgesyncv1.EventType_EVENT_TYPE_APPLY, Metadata: meta("ns", "s", "u-s", "1"),
	}}}
	msg := &edgesyncv1.SyncResponse{Sequence: 7, Message: &edgesyncv1.SyncResponse_EventBatch{EventBatch: &edgesyncv1.EventBatch{Events: []*edgesyncv1.SyncResponse{
		event(4, "a", edgesyncv1.EventType_EVENT_TYPE_APPLY), unread, event(6, "b", edgesyncv1.EventType_EVENT_TYPE_DELETE), event(7, "c", edgesyncv1.EventType_EVENT_TYPE_APPLY),
	}}}}
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	var got response
	if err := (shallowCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
		t.Fatal(err)
	}
	if got.sequence != 7 || len(got.events) != 3 {
		t.Fatalf("decoded sequence %d with %d events, want 7 with the 3 it reads", got.sequence, len(got.events))
	}
	for i, want := range []struct {
		seq     uint64
		name    string
		deleted bool
	}{{4, "a", false}, {6, "b", true}, {7, "c", false}} {
		ev := got.events[i]
		if ev.sequence != want.seq || ev.ref.GetName() != want.name || ev.deleted != want.deleted {
			t.Errorf("event %d: sequence %d %s deleted=%v, want %d %s deleted=%v", i, ev.sequence, ev.ref.GetName(), ev.deleted, want.seq, want.name, want.deleted)
		}
	}
	// A batch in a batch breaks the protocol.
	nested, err := proto.Marshal(&edgesyncv1.SyncResponse{Sequence: 6, Message: &edgesyncv1.SyncResponse_EventBatch{EventBatch: &edgesyncv1.EventBatch{Events: []*edgesyncv1.SyncResponse{msg}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := (shallowCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(nested)}, &got); err == nil {
		t.Fatal("a batch nested in a batch decoded without error")
	}
}
