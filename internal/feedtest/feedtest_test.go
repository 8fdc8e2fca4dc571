package feedtest

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

type published struct {
	mu  sync.Mutex
	got []string
}

func (p *published) Publish(node string, obj *feed.Object) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := node + " " + obj.Key.Name
	if obj.Deleted {
		s += " deleted"
	} else {
		s += "@" + obj.ResourceVersion
	}
	p.got = append(p.got, s)
}

func TestSetPublishesTheDifference(t *testing.T) {
	c := New()
	pub := &published{}
	c.SetPublisher(pub)
	c.Set("n", ConfigMap("ns", "keep", "1", nil), ConfigMap("ns", "change", "1", nil), ConfigMap("ns", "drop", "1", nil))
	pub.got = nil
	c.Set("n", ConfigMap("ns", "keep", "1", nil), ConfigMap("ns", "change", "2", nil))
	slices.Sort(pub.got)
	if want := []string{"n change@2", "n drop deleted"}; !slices.Equal(pub.got, want) {
		t.Fatalf("published %v, want %v", pub.got, want)
	}
	desired, err := c.Desired("n")
	if err != nil || len(desired) != 2 {
		t.Fatalf("Desired = %d objects, %v; want 2", len(desired), err)
	}
	c.SetDesiredError(errors.New("boom"))
	if _, err := c.Desired("n"); err == nil {
		t.Fatal("Desired ignored SetDesiredError")
	}
}

func TestObjectsDecode(t *testing.T) {
	var msg edgesyncv1.SyncResponse
	if err := proto.Unmarshal(Pod("ns", "p", "node-a", "4").Payload, &msg); err != nil {
		t.Fatal(err)
	}
	pod := msg.GetPodEvent().GetPod()
	if pod.GetMetadata().GetName() != "p" || pod.GetSpec().GetNodeName() != "node-a" || pod.GetMetadata().GetResourceVersion() != "4" {
		t.Fatalf("Pod decodes as %v", &msg)
	}
	tomb := Tombstone(feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "ns", Name: "c"}, "u")
	if err := proto.Unmarshal(tomb.Payload, &msg); err != nil {
		t.Fatal(err)
	}
	if !tomb.Deleted || msg.GetConfigMapEvent().GetType() != edgesyncv1.EventType_EVENT_TYPE_DELETE || msg.GetConfigMapEvent().GetConfigMap().GetMetadata().GetUid() != "u" {
		t.Fatalf("Tombstone decodes as %v", &msg)
	}
}

func TestReportsAnsweredAsTold(t *testing.T) {
	c := New()
	var answers []*edgesyncv1.StatusResult
	answer := func(r *edgesyncv1.StatusResult) { answers = append(answers, r) }
	hb := &edgesyncv1.SyncRequest{RequestId: 1, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
	c.HandleReport("n", hb, answer)
	c.Respond(func(string, *edgesyncv1.SyncRequest) error { return status.Error(codes.NotFound, "gone") })
	c.HandleReport("n", hb, answer)
	c.Respond(func(string, *edgesyncv1.SyncRequest) error { return ErrHold })
	c.HandleReport("n", hb, answer)
	if len(answers) != 2 || answers[0].GetCode() != 0 || answers[1].GetCode() != int32(codes.NotFound) || answers[1].GetMessage() != "gone" {
		t.Fatalf("answers %v, want OK then NotFound and nothing for the held one", answers)
	}
	reports, err := c.WaitReports(t.Context(), 3)
	if err != nil || reports[2].Answer == nil {
		t.Fatalf("reports %v, %v", reports, err)
	}
	c.SessionEnded("n")
	if err := c.WaitSessionEnded(t.Context(), "n", 1); err != nil {
		t.Fatal(err)
	}
}
