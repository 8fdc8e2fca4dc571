package simfeed

import (
	"testing"

	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

type recorder struct{ got map[string]int }

func (r *recorder) Publish(node string, _ *feed.Object) { r.got[node]++ }

func TestConfigMapHasTheRequestedSize(t *testing.T) {
	for _, size := range []int{256, 1024, 4096} {
		obj, err := ConfigMap("cm", 7, size, map[string]string{"k": "v"})
		if err != nil {
			t.Fatal(err)
		}
		if d := len(obj.Payload) - size; d < -20 || d > 20 {
			t.Errorf("size %d: payload is %d bytes", size, len(obj.Payload))
		}
		var msg edgesyncv1.SyncResponse
		if err := proto.Unmarshal(obj.Payload, &msg); err != nil {
			t.Fatal(err)
		}
		cm := msg.GetConfigMapEvent().GetConfigMap()
		if cm.GetMetadata().GetResourceVersion() != "7" || cm.GetData()["k"] != "v" {
			t.Errorf("decoded %v", cm)
		}
	}
}

func TestPutPublishesAndIsDesired(t *testing.T) {
	c := New()
	rec := &recorder{got: map[string]int{}}
	c.SetPublisher(rec)
	obj, err := ConfigMap("cm", 1, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Put([]string{"a", "b"}, obj)
	if rec.got["a"] != 1 || rec.got["b"] != 1 {
		t.Fatalf("published %v", rec.got)
	}
	for node, want := range map[string]int{"a": 1, "c": 0} {
		d, _ := c.Desired(node)
		if len(d) != want {
			t.Errorf("Desired(%s) has %d objects, want %d", node, len(d), want)
		}
	}
	var answered *edgesyncv1.StatusResult
	c.HandleReport("a", &edgesyncv1.SyncRequest{RequestId: 9, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}, func(r *edgesyncv1.StatusResult) { answered = r })
	if answered.GetRequestId() != 9 || answered.GetCode() != 0 || c.Counts().Heartbeats != 1 {
		t.Fatalf("answer %v, counts %+v", answered, c.Counts())
	}
}

func TestPublishIsNotDesired(t *testing.T) {
	c := New()
	rec := &recorder{got: map[string]int{}}
	c.SetPublisher(rec)
	obj, err := ConfigMap("cm", 1, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Publish([]string{"a"}, obj)
	if d, _ := c.Desired("a"); rec.got["a"] != 1 || len(d) != 0 {
		t.Fatalf("published %v, desired %d objects; want 1 published, none desired", rec.got, len(d))
	}
}
