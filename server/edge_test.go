package server_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server/feed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// streamTimeout only keeps a broken test from hanging; no test relies on it.
const streamTimeout = 2 * time.Minute

// edge is a minimal edge agent speaking the protocol by hand.
type edge struct {
	t      testing.TB
	node   string
	stream grpc.BidiStreamingClient[edgesyncv1.SyncRequest, edgesyncv1.SyncResponse]
	cancel context.CancelFunc
	nextID uint64
}

// openStream opens a Sync stream on conn without sending anything.
func openStream(t testing.TB, conn *grpc.ClientConn, node string) *edge {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), streamTimeout)
	t.Cleanup(cancel)
	stream, err := edgesyncv1.NewSyncServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatalf("open Sync stream for %s: %v", node, err)
	}
	return &edge{t: t, node: node, stream: stream, cancel: cancel}
}

// connect dials as node, sends Hello with held and expects Welcome.
func connect(t testing.TB, env *servertest.Env, node string, held ...*edgesyncv1.ObjectRef) *edge {
	t.Helper()
	e := openStream(t, env.DialNode(t, node), node)
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{
		NodeName: node, AgentVersion: "test-edge/0", HeldObjects: held,
	}}})
	w := e.recv().GetWelcome()
	if w == nil {
		t.Fatalf("%s: first message is not Welcome", node)
	}
	return e
}

func (e *edge) send(req *edgesyncv1.SyncRequest) {
	e.t.Helper()
	if err := e.stream.Send(req); err != nil && !errors.Is(err, context.Canceled) {
		// The server may already have ended the stream; the status shows
		// up on the next Recv.
		e.t.Logf("%s: send: %v", e.node, err)
	}
}

func (e *edge) recv() *edgesyncv1.SyncResponse {
	e.t.Helper()
	msg, err := e.stream.Recv()
	if err != nil {
		e.t.Fatalf("%s: recv: %v", e.node, err)
	}
	return msg
}

func (e *edge) ack(seq uint64) {
	e.t.Helper()
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Ack{Ack: &edgesyncv1.Ack{Sequence: seq}}})
}

func (e *edge) report(req *edgesyncv1.SyncRequest) uint64 {
	e.t.Helper()
	e.nextID++
	req.RequestId = e.nextID
	e.send(req)
	return e.nextID
}

// recvObjects receives n object events, acknowledging none.
func (e *edge) recvObjects(n int) []event {
	e.t.Helper()
	var got []event
	for len(got) < n {
		msg := e.recv()
		ev, ok := toEvent(msg)
		if !ok {
			e.t.Fatalf("%s: want object event %d of %d, got %v", e.node, len(got)+1, n, msg)
		}
		got = append(got, ev)
	}
	return got
}

// recvInitial receives the initial sync up to SyncComplete.
func (e *edge) recvInitial() ([]event, *edgesyncv1.SyncComplete, uint64) {
	e.t.Helper()
	var got []event
	for {
		msg := e.recv()
		if sc := msg.GetSyncComplete(); sc != nil {
			return got, sc, msg.GetSequence()
		}
		ev, ok := toEvent(msg)
		if !ok {
			e.t.Fatalf("%s: during initial sync got %v", e.node, msg)
		}
		got = append(got, ev)
	}
}

// waitEnd reads until the stream ends and returns its status.
func (e *edge) waitEnd() *status.Status {
	e.t.Helper()
	for {
		_, err := e.stream.Recv()
		if errors.Is(err, io.EOF) {
			return status.New(codes.OK, "")
		}
		if err != nil {
			return status.Convert(err)
		}
	}
}

func (e *edge) expectEnd(code codes.Code) *status.Status {
	e.t.Helper()
	st := e.waitEnd()
	if st.Code() != code {
		e.t.Fatalf("%s: stream ended with %v %q, want %v", e.node, st.Code(), st.Message(), code)
	}
	return st
}

// event is an object event as an edge sees it.
type event struct {
	seq     uint64
	key     feed.Key
	rv      string
	uid     string
	deleted bool
}

func (ev event) ref() *edgesyncv1.ObjectRef {
	return &edgesyncv1.ObjectRef{Kind: ev.key.Kind, Namespace: ev.key.Namespace, Name: ev.key.Name, Uid: ev.uid, ResourceVersion: ev.rv}
}

func toEvent(msg *edgesyncv1.SyncResponse) (event, bool) {
	ev := event{seq: msg.GetSequence()}
	var typ edgesyncv1.EventType
	switch m := msg.GetMessage().(type) {
	case *edgesyncv1.SyncResponse_ConfigMapEvent:
		typ = m.ConfigMapEvent.GetType()
		meta := m.ConfigMapEvent.GetConfigMap().GetMetadata()
		ev.key = feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: meta.GetNamespace(), Name: meta.GetName()}
		ev.rv, ev.uid = meta.GetResourceVersion(), meta.GetUid()
	case *edgesyncv1.SyncResponse_PodEvent:
		typ = m.PodEvent.GetType()
		meta := m.PodEvent.GetPod().GetMetadata()
		ev.key = feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: meta.GetNamespace(), Name: meta.GetName()}
		ev.rv, ev.uid = meta.GetResourceVersion(), meta.GetUid()
	default:
		return event{}, false
	}
	ev.deleted = typ == edgesyncv1.EventType_EVENT_TYPE_DELETE
	return ev, true
}

// names renders events as "name@rv" or "name(deleted)", in arrival order.
func names(evs []event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		if ev.deleted {
			out[i] = ev.key.Name + "(deleted)"
		} else {
			out[i] = ev.key.Name + "@" + ev.rv
		}
	}
	return out
}
