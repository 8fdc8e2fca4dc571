package frame

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

func configMapEvent(t *testing.T, name string, size int) (*edgesyncv1.SyncResponse, *feed.Object) {
	t.Helper()
	event := &edgesyncv1.SyncResponse{Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{
		Type: edgesyncv1.EventType_EVENT_TYPE_APPLY,
		ConfigMap: &corev1pb.ConfigMap{
			Metadata: &metav1pb.ObjectMeta{Namespace: proto.String("ns"), Name: proto.String(name), ResourceVersion: proto.String("7")},
			Data:     map[string]string{"k": string(make([]byte, size))},
		},
	}}}
	obj, err := feed.Encode(feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "ns", Name: name}, "uid", "7", false, event)
	if err != nil {
		t.Fatal(err)
	}
	return event, obj
}

// A batch decodes, with the generated code any client uses, as one
// SyncResponse whose EventBatch holds each event with its own sequence,
// and whose sequence is the last event's.
func TestBatchDecodesAsEventBatch(t *testing.T) {
	codec := NewCodec()
	for _, first := range []uint64{1, 126, 1 << 40} {
		for _, n := range []int{1, 2, 5} {
			t.Run(fmt.Sprintf("first %d, %d events", first, n), func(t *testing.T) {
				var b Batch
				var want []*edgesyncv1.SyncResponse
				bound := BatchOverhead
				for i := range n {
					event, obj := configMapEvent(t, fmt.Sprintf("cm-%d", i), 100*i+200*(i%2)) // sizes across a varint boundary
					b.Frames = append(b.Frames, Frame{Sequence: first + uint64(i), Payload: obj.Payload})
					w := proto.CloneOf(event)
					w.Sequence = first + uint64(i)
					want = append(want, w)
					bound += EventOverhead + len(obj.Payload)
				}
				data, err := codec.Marshal(&b)
				if err != nil {
					t.Fatal(err)
				}
				raw := data.Materialize()
				if len(raw) != b.Size() || len(raw) > bound {
					t.Fatalf("encoded %d bytes; Size says %d, the bound %d", len(raw), b.Size(), bound)
				}
				var got edgesyncv1.SyncResponse
				if err := proto.Unmarshal(raw, &got); err != nil {
					t.Fatalf("decode batch: %v", err)
				}
				if got.GetSequence() != first+uint64(n-1) {
					t.Fatalf("batch sequence %d, want the last event's, %d", got.GetSequence(), first+uint64(n-1))
				}
				events := got.GetEventBatch().GetEvents()
				if len(events) != n {
					t.Fatalf("%d events, want %d", len(events), n)
				}
				for i := range events {
					if !proto.Equal(events[i], want[i]) {
						t.Fatalf("event %d: %v, want %v", i, events[i], want[i])
					}
				}
			})
		}
	}
}
