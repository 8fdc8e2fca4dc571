package frame

import (
	"testing"

	"google.golang.org/protobuf/proto"

	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

func TestFrameDecodesAsSyncResponse(t *testing.T) {
	event := &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{
		Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
		ConfigMap: &corev1pb.ConfigMap{
			Metadata: &metav1pb.ObjectMeta{Namespace: proto.String("ns"), Name: proto.String("cm"), ResourceVersion: proto.String("7")},
			Data:     map[string]string{"k": "v"},
		},
	}}}
	obj, err := feed.Encode(feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "ns", Name: "cm"}, "uid", "7", false, event)
	if err != nil {
		t.Fatal(err)
	}
	codec := NewCodec()
	for _, seq := range []uint64{1, 127, 128, 1 << 40} {
		data, err := codec.Marshal(&Frame{Sequence: seq, Payload: obj.Payload})
		if err != nil {
			t.Fatal(err)
		}
		var got edgesyncv1.SyncResponse
		if err := proto.Unmarshal(data.Materialize(), &got); err != nil {
			t.Fatalf("sequence %d: decode frame: %v", seq, err)
		}
		want := proto.CloneOf(event)
		want.Sequence = seq
		if !proto.Equal(&got, want) {
			t.Fatalf("sequence %d: decoded %v, want %v", seq, &got, want)
		}
	}
	// The shared payload is untouched.
	var again edgesyncv1.SyncResponse
	if err := proto.Unmarshal(obj.Payload, &again); err != nil || again.GetSequence() != 0 {
		t.Fatalf("payload changed: sequence %d, err %v", again.GetSequence(), err)
	}
}

func TestOtherMessagesUseProto(t *testing.T) {
	codec := NewCodec()
	msg := &edgesyncv1.SyncResponse{Sequence: 3, Message: &edgesyncv1.SyncResponse_SyncComplete{SyncComplete: &edgesyncv1.SyncComplete{ObjectsSent: 2}}}
	data, err := codec.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	var got edgesyncv1.SyncResponse
	if err := codec.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, msg) {
		t.Fatalf("round trip gave %v, want %v", &got, msg)
	}
	if codec.Name() != "proto" {
		t.Fatalf("Name = %q, want proto", codec.Name())
	}
}
