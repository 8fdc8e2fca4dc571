package server_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/feed"
)

func cm(name, rv string) *feed.Object {
	return feedtest.ConfigMap("default", name, rv, map[string]string{"version": rv})
}

func TestInitialSyncThenLiveEvents(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	ctrls.Put("node-a", cm("a", "1"), feedtest.Pod("default", "p", "node-a", "3"))
	ctrls.Put("node-b", cm("other-node", "1"))

	e := openStream(t, env.DialNode(t, "node-a"), "node-a")
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "node-a"}}})
	welcome := e.recv()
	w := welcome.GetWelcome()
	if w == nil || welcome.GetSequence() != 1 {
		t.Fatalf("first message = %v, want Welcome with sequence 1", welcome)
	}
	if w.GetServerId() != "test-server" || w.GetSessionId() == "" || w.GetAckWindow() == 0 || w.GetMaxMessageBytes() == 0 || w.GetHeartbeatInterval().AsDuration() <= 0 {
		t.Fatalf("Welcome lacks settings: %v", w)
	}

	got, sc, scSeq := e.recvInitial()
	slices.SortFunc(got, func(a, b event) int { return strings.Compare(a.key.Name, b.key.Name) })
	if want := []string{"a@1", "p@3"}; !slices.Equal(names(got), want) {
		t.Fatalf("initial objects %v, want %v (and nothing of node-b)", names(got), want)
	}
	if sc.GetObjectsSent() != 2 || sc.GetObjectsDeleted() != 0 || scSeq != 4 {
		t.Fatalf("SyncComplete %v at sequence %d, want 2 sent, 0 deleted, sequence 4", sc, scSeq)
	}
	seqs := []uint64{got[0].seq, got[1].seq}
	slices.Sort(seqs)
	if seqs[0] != 2 || seqs[1] != 3 {
		t.Fatalf("object sequences %v, want [2 3]", seqs)
	}
	e.ack(scSeq)

	// A live event arrives as the very message the controllers encoded,
	// with the session's sequence number.
	a2 := cm("a", "2")
	ctrls.Put("node-a", a2)
	msg := e.recv()
	want := &edgesyncv1.SyncResponse{}
	if err := proto.Unmarshal(a2.Payload, want); err != nil {
		t.Fatal(err)
	}
	want.Sequence = 5
	if !proto.Equal(msg, want) {
		t.Fatalf("live event %v, want %v", msg, want)
	}
	ctrls.Delete("node-a", got[1].key)
	if del := e.recvObjects(1); names(del)[0] != "p(deleted)" {
		t.Fatalf("live delete %v, want p(deleted)", names(del))
	}
}

func TestReconnectReceivesOnlyTheDifference(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	ctrls.Put("node-a", cm("same", "1"), cm("changed", "1"), cm("gone", "1"))

	e := connect(t, env, "node-a")
	first, _, seq := e.recvInitial()
	e.ack(seq)
	e.cancel()
	if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
		t.Fatal(err)
	}

	// While the edge is away: one object changes, one goes, one is new.
	ctrls.Set("node-a", cm("same", "1"), cm("changed", "2"), cm("new", "1"))
	held := make([]*edgesyncv1.ObjectRef, len(first))
	for i, ev := range first {
		held[i] = ev.ref()
	}
	e = connect(t, env, "node-a", held...)
	got, sc, _ := e.recvInitial()
	if sc.GetObjectsSent() != 2 || sc.GetObjectsDeleted() != 1 {
		t.Fatalf("SyncComplete %v, want 2 sent and 1 deleted", sc)
	}
	gotNames := names(got)
	// Applies come before the deletes of the initial sync.
	if len(gotNames) != 3 || gotNames[2] != "gone(deleted)" {
		t.Fatalf("resume sent %v, want changed@2 and new@1 then gone(deleted)", gotNames)
	}
	applies := slices.Sorted(slices.Values(gotNames[:2]))
	if !slices.Equal(applies, []string{"changed@2", "new@1"}) {
		t.Fatalf("resume applied %v, want [changed@2 new@1]", applies)
	}
}

func TestSlowEdgeDoesNotDelayOthers(t *testing.T) {
	const others, objects, window = 50, 10, 2
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = window })

	slow := connect(t, env, "slow")
	if _, _, seq := slow.recvInitial(); seq == 0 {
		t.Fatal("no SyncComplete")
	}
	fast := make([]*edge, others)
	for i := range fast {
		fast[i] = connect(t, env, fmt.Sprintf("fast-%d", i))
		fast[i].recvInitial()
	}

	for i := range objects {
		obj := cm(fmt.Sprintf("cm-%d", i), "1")
		ctrls.Put("slow", obj)
		for j := range fast {
			ctrls.Put(fmt.Sprintf("fast-%d", j), obj)
		}
	}
	// The slow edge gets its window's worth and never acknowledges.
	slow.recvObjects(window)

	var wg sync.WaitGroup
	errs := make(chan error, others)
	for _, e := range fast {
		wg.Go(func() {
			for range objects {
				msg, err := e.stream.Recv()
				if err != nil {
					errs <- fmt.Errorf("%s: %w", e.node, err)
					return
				}
				if err := e.stream.Send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Ack{Ack: &edgesyncv1.Ack{Sequence: msg.GetSequence()}}}); err != nil {
					errs <- fmt.Errorf("%s: ack: %w", e.node, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	admin := edgesyncv1.NewAdminServiceClient(env.DialAdmin(t))
	resp, err := admin.GetSession(t.Context(), &edgesyncv1.GetSessionRequest{NodeName: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	if s := resp.GetSession(); s.GetUnacknowledged() != window || s.GetQueueDepth() != objects-window {
		t.Fatalf("slow session: %d unacknowledged, %d queued; want %d and %d", s.GetUnacknowledged(), s.GetQueueDepth(), window, objects-window)
	}
}

func TestUpdatesWhileBlockedArriveAsOne(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = 1 })
	ctrls.Put("node-a", cm("first", "1"))
	e := connect(t, env, "node-a")
	initial, _, _ := e.recvInitial()

	// The window is full until the edge acknowledges "first".
	for v := 1; v <= 20; v++ {
		ctrls.Put("node-a", cm("hot", strconv.Itoa(v)))
	}
	e.ack(initial[0].seq)
	got := e.recvObjects(1)
	if names(got)[0] != "hot@20" {
		t.Fatalf("after unblocking got %v, want hot@20", names(got))
	}
	ctrls.Put("node-a", cm("after", "1"))
	e.ack(got[0].seq)
	if next := e.recvObjects(1); names(next)[0] != "after@1" {
		t.Fatalf("next event %v, want after@1: the 20 updates must arrive as one message", names(next))
	}
}

func TestReportsAreAnswered(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	ctrls.Respond(func(_ string, req *edgesyncv1.SyncRequest) error {
		if req.GetPodStatus() != nil {
			return status.Error(codes.NotFound, "pod default/x not found")
		}
		return nil
	})
	e := connect(t, env, "node-a")
	e.recvInitial()
	hb := e.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
	ps := e.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_PodStatus{PodStatus: &edgesyncv1.PodStatus{Namespace: "default", Name: "x"}}})
	results := map[uint64]*edgesyncv1.StatusResult{}
	for len(results) < 2 {
		r := e.recv().GetStatusResult()
		if r == nil {
			t.Fatal("want StatusResult")
		}
		results[r.GetRequestId()] = r
	}
	if results[hb].GetCode() != int32(codes.OK) {
		t.Errorf("heartbeat answered %v, want OK", results[hb])
	}
	if results[ps].GetCode() != int32(codes.NotFound) || results[ps].GetMessage() != "pod default/x not found" {
		t.Errorf("pod status answered %v, want NotFound with the controller's message", results[ps])
	}
	reports, err := ctrls.WaitReports(t.Context(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if reports[0].Node != "node-a" || reports[0].Request.GetHeartbeat() == nil {
		t.Errorf("first report %v from %q, want heartbeat from node-a", reports[0].Request, reports[0].Node)
	}
}

func TestAnswersAreNotHeldBackByTheWindow(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = 1 })
	ctrls.Put("node-a", cm("a", "1"), cm("b", "1"))
	e := connect(t, env, "node-a")
	e.recvObjects(1) // window full, nothing acknowledged
	id := e.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
	if r := e.recv().GetStatusResult(); r.GetRequestId() != id {
		t.Fatalf("want the heartbeat's StatusResult while the window is full, got %v", r)
	}
}

func TestBadInput(t *testing.T) {
	hello := func(node string) *edgesyncv1.SyncRequest {
		return &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: node}}}
	}
	heartbeat := func(id uint64) *edgesyncv1.SyncRequest {
		return &edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
	}
	tests := []struct {
		name     string
		opts     func(*server.Options)
		send     []*edgesyncv1.SyncRequest
		want     codes.Code
		contains string
	}{
		{name: "no hello", opts: func(o *server.Options) { o.HelloTimeout = 50 * time.Millisecond }, want: codes.DeadlineExceeded, contains: "no Hello"},
		{name: "first message not hello", send: []*edgesyncv1.SyncRequest{heartbeat(1)}, want: codes.FailedPrecondition, contains: "must be hello"},
		{name: "hello for another node", send: []*edgesyncv1.SyncRequest{hello("node-b")}, want: codes.PermissionDenied, contains: `"node-b"`},
		{name: "empty first message", send: []*edgesyncv1.SyncRequest{{}}, want: codes.InvalidArgument, contains: "no message"},
		{name: "empty message after hello", send: []*edgesyncv1.SyncRequest{hello("node-a"), {RequestId: 3}}, want: codes.InvalidArgument, contains: "no message"},
		{name: "second hello", send: []*edgesyncv1.SyncRequest{hello("node-a"), hello("node-a")}, want: codes.InvalidArgument, contains: "only once"},
		{name: "report without request id", send: []*edgesyncv1.SyncRequest{hello("node-a"), heartbeat(0)}, want: codes.InvalidArgument, contains: "request_id"},
		{name: "ack for a sequence never sent", send: []*edgesyncv1.SyncRequest{hello("node-a"), {Message: &edgesyncv1.SyncRequest_Ack{Ack: &edgesyncv1.Ack{Sequence: 99}}}}, want: codes.InvalidArgument, contains: "sequence 99"},
		{name: "nack for a sequence never sent", send: []*edgesyncv1.SyncRequest{hello("node-a"), {Message: &edgesyncv1.SyncRequest_Nack{Nack: &edgesyncv1.Nack{Sequence: 42}}}}, want: codes.InvalidArgument, contains: "sequence 42"},
		{name: "held object without kind", send: []*edgesyncv1.SyncRequest{{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "node-a", HeldObjects: []*edgesyncv1.ObjectRef{{Name: "x"}}}}}}, want: codes.InvalidArgument, contains: "held_objects[0]"},
		{
			name: "oversized message",
			opts: func(o *server.Options) { o.MaxMessageBytes = 1024 },
			send: []*edgesyncv1.SyncRequest{hello("node-a"), {RequestId: 1, Message: &edgesyncv1.SyncRequest_NodeRegistration{NodeRegistration: &edgesyncv1.NodeRegistration{
				Labels: map[string]string{"big": strings.Repeat("x", 4096)},
			}}}},
			want: codes.ResourceExhausted, contains: "larger than max",
		},
		{
			name: "report flood",
			opts: func(o *server.Options) { o.ReportsPerSecond, o.ReportBurst = 1, 3 },
			send: []*edgesyncv1.SyncRequest{hello("node-a"), heartbeat(1), heartbeat(2), heartbeat(3), heartbeat(4), heartbeat(5), heartbeat(6)},
			want: codes.ResourceExhausted, contains: "too many reports",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []servertest.Option
			if tt.opts != nil {
				opts = append(opts, tt.opts)
			}
			ctrls := feedtest.New()
			env := servertest.Start(t, ctrls, opts...)
			e := openStream(t, env.DialNode(t, "node-a"), "node-a")
			for _, req := range tt.send {
				e.send(req)
			}
			st := e.expectEnd(tt.want)
			if !strings.Contains(st.Message(), tt.contains) {
				t.Errorf("status message %q does not mention %q", st.Message(), tt.contains)
			}
		})
	}
}

func TestPanicInReportHandlerEndsOnlyThatSession(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	ctrls.Respond(func(node string, _ *edgesyncv1.SyncRequest) error {
		if node == "bad" {
			panic("controller bug")
		}
		return nil
	})
	good := connect(t, env, "good")
	good.recvInitial()
	bad := connect(t, env, "bad")
	bad.recvInitial()
	bad.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
	bad.expectEnd(codes.Internal)

	ctrls.Put("good", cm("still-served", "1"))
	if got := good.recvObjects(1); names(got)[0] != "still-served@1" {
		t.Fatalf("good node got %v after another node's panic", names(got))
	}
}

func TestCertificatesAreChecked(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)

	t.Run("admin certificate cannot sync", func(t *testing.T) {
		e := openStream(t, env.DialAdmin(t), "admin")
		e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "admin"}}})
		e.expectEnd(codes.PermissionDenied)
	})
	t.Run("node certificate cannot administer", func(t *testing.T) {
		admin := edgesyncv1.NewAdminServiceClient(env.DialNode(t, "node-a"))
		_, err := admin.ListSessions(t.Context(), &edgesyncv1.ListSessionsRequest{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("ListSessions with a node certificate: %v, want PermissionDenied", err)
		}
	})
	t.Run("no client certificate is refused", func(t *testing.T) {
		conn := env.Dial(t, &tls.Config{RootCAs: env.CA.Pool(), MinVersion: tls.VersionTLS12})
		_, err := grpc_health_v1.NewHealthClient(conn).Check(t.Context(), &grpc_health_v1.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("health check without a certificate: %v, want Unavailable (handshake refused)", err)
		}
	})
	t.Run("TLS 1.1 is refused", func(t *testing.T) {
		cfg := env.NodeTLS(t, "node-a")
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		_, err := grpc_health_v1.NewHealthClient(env.Dial(t, cfg)).Check(t.Context(), &grpc_health_v1.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("health check over TLS 1.1: %v, want Unavailable (handshake refused)", err)
		}
		if !strings.Contains(err.Error(), "protocol version") {
			t.Fatalf("health check over TLS 1.1: %v, want the server to refuse the protocol version", err)
		}
	})
	t.Run("certificate from another CA is refused", func(t *testing.T) {
		other := servertest.Start(t, feedtest.New())
		conn := env.Dial(t, other.NodeTLS(t, "node-a"))
		conn.Connect()
		_, err := grpc_health_v1.NewHealthClient(conn).Check(t.Context(), &grpc_health_v1.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("health check with a foreign certificate: %v, want Unavailable (handshake refused)", err)
		}
	})
}

func TestSecondStreamReplacesFirst(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	first := connect(t, env, "node-a")
	first.recvInitial()
	second := connect(t, env, "node-a")
	second.recvInitial()
	st := first.expectEnd(codes.Aborted)
	if !strings.Contains(st.Message(), "replaced by a newer stream") {
		t.Errorf("first stream ended with %q, want it to say it was replaced", st.Message())
	}
	ctrls.Put("node-a", cm("a", "1"))
	if got := second.recvObjects(1); names(got)[0] != "a@1" {
		t.Fatalf("second stream got %v", names(got))
	}
	if ended := ctrls.Ended(); len(ended) != 0 {
		t.Fatalf("SessionEnded called for %v although the node is still connected", ended)
	}
	second.cancel()
	if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
		t.Fatal(err)
	}
}

func TestNodeLimit(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.NodeLimit = 2 })
	connect(t, env, "a").recvInitial()
	connect(t, env, "b").recvInitial()

	e := openStream(t, env.DialNode(t, "c"), "c")
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "c"}}})
	e.expectEnd(codes.ResourceExhausted)

	// A node already connected may replace its stream at the limit.
	connect(t, env, "a").recvInitial()
}

func TestNoGoroutineLeftAfterSessionEnds(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	ctrls.Put("node-a", cm("a", "1"))
	conn := env.DialNode(t, "node-a")
	// Establish the connection first: only the session's goroutines count.
	if _, err := grpc_health_v1.NewHealthClient(conn).Check(t.Context(), &grpc_health_v1.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	before := goleak.IgnoreCurrent()

	for _, end := range []string{"edge cancels", "edge closes its side", "operator disconnects"} {
		e := openStream(t, conn, "node-a")
		e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "node-a"}}})
		e.recv()
		_, _, seq := e.recvInitial()
		e.ack(seq)
		e.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
		e.recv()
		ends := len(ctrls.Ended()) + 1
		switch end {
		case "edge cancels":
			e.cancel()
		case "edge closes its side":
			if err := e.stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			e.expectEnd(codes.OK)
		case "operator disconnects":
			admin := edgesyncv1.NewAdminServiceClient(env.DialAdmin(t))
			if _, err := admin.DisconnectNode(t.Context(), &edgesyncv1.DisconnectNodeRequest{NodeName: "node-a"}); err != nil {
				t.Fatal(err)
			}
			e.expectEnd(codes.Unavailable)
		}
		if err := ctrls.WaitSessionEnded(t.Context(), "node-a", ends); err != nil {
			t.Fatalf("%s: %v", end, err)
		}
		if end == "operator disconnects" {
			break // the admin connection's goroutines are not the session's
		}
		if err := goleak.Find(before); err != nil {
			t.Fatalf("%s: goroutines left after the session ended: %v", end, err)
		}
	}
}

func TestAdminService(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	admin := edgesyncv1.NewAdminServiceClient(env.DialAdmin(t))
	ctrls.Put("node-b", cm("a", "1"))
	b := connect(t, env, "node-b")
	objs, _, seq := b.recvInitial()
	b.ack(seq)
	a := connect(t, env, "node-a")
	a.recvInitial()

	nack := &edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Nack{Nack: &edgesyncv1.Nack{Sequence: objs[0].seq, Object: objs[0].ref(), Reason: "disk full"}}}
	b.send(nack)
	b.send(nack) // a repeated Nack is recorded once
	// The Nack is recorded and the session continues.
	ctrls.Put("node-b", cm("b", "1"))
	next := b.recvObjects(1)
	b.ack(next[0].seq)

	list, err := admin.ListSessions(t.Context(), &edgesyncv1.ListSessionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, s := range list.GetSessions() {
		nodes = append(nodes, s.GetNodeName())
	}
	if !slices.Equal(nodes, []string{"node-a", "node-b"}) {
		t.Fatalf("ListSessions nodes %v, want [node-a node-b]", nodes)
	}

	got, err := admin.GetSession(t.Context(), &edgesyncv1.GetSessionRequest{NodeName: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	s := got.GetSession()
	if s.GetNacks() != 1 || s.GetLastNack().GetReason() != "disk full" || !proto.Equal(s.GetLastNack().GetObject(), objs[0].ref()) {
		t.Errorf("session shows nacks %d, last %v; want the one Nack", s.GetNacks(), s.GetLastNack())
	}
	if !s.GetInitialSyncComplete() || s.GetAgentVersion() != "test-edge/0" || s.GetServerId() != "test-server" || s.GetPeerAddress() == "" {
		t.Errorf("session view incomplete: %v", s)
	}

	_, err = admin.GetSession(t.Context(), &edgesyncv1.GetSessionRequest{NodeName: "nobody"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetSession of an unconnected node: %v, want NotFound", err)
	}

	// ResyncNode sends what the controllers want and the edge lacks, even
	// when it was never published.
	ctrls.SetPublisher(nil)
	ctrls.Put("node-b", cm("unpublished", "1"))
	ctrls.SetPublisher(env.Server)
	rs, err := admin.ResyncNode(t.Context(), &edgesyncv1.ResyncNodeRequest{NodeName: "node-b"})
	if err != nil {
		t.Fatal(err)
	}
	if rs.GetObjectsQueued() != 1 {
		t.Errorf("ResyncNode queued %d objects, want 1", rs.GetObjectsQueued())
	}
	if got := b.recvObjects(1); names(got)[0] != "unpublished@1" {
		t.Errorf("after ResyncNode got %v, want unpublished@1", names(got))
	}

	if _, err := admin.DisconnectNode(t.Context(), &edgesyncv1.DisconnectNodeRequest{NodeName: "node-a", Reason: "maintenance"}); err != nil {
		t.Fatal(err)
	}
	if st := a.expectEnd(codes.Unavailable); !strings.Contains(st.Message(), "maintenance") {
		t.Errorf("disconnected edge saw %q, want the reason", st.Message())
	}
}

func TestShutdownTellsEdgesToGoAway(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	e := connect(t, env, "node-a")
	e.recvInitial()
	env.Stop()
	if st := e.expectEnd(codes.Unavailable); !strings.Contains(st.Message(), "dial again") {
		t.Errorf("edge saw %q at shutdown, want to be told to dial again", st.Message())
	}
	if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
		t.Fatal(err)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	ctrls.Put("node-a", cm("a", "1"))
	e := connect(t, env, "node-a")
	objs, _, seq := e.recvInitial()
	e.ack(seq)
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Nack{Nack: &edgesyncv1.Nack{Sequence: objs[0].seq, Object: objs[0].ref(), Reason: "bad"}}})
	// The answer to a report comes after the Ack and Nack were handled.
	e.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
	if e.recv().GetStatusResult() == nil {
		t.Fatal("want StatusResult")
	}

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + env.HTTPAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/healthz", "/readyz", "/debug/pprof/"} {
		if code, _ := get(path); code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", path, code)
		}
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	for _, want := range []string{
		"edgesync_sessions_connected 1",
		`edgesync_messages_sent_total{kind="welcome"} 1`,
		`edgesync_messages_sent_total{kind="config_map"} 1`,
		`edgesync_messages_sent_total{kind="sync_complete"} 1`,
		`edgesync_messages_acked_total{kind="config_map"} 1`,
		`edgesync_messages_nacked_total{kind="config_map"} 1`,
		`edgesync_upstream_results_total{kind="heartbeat",outcome="OK"} 1`,
		"edgesync_delivery_latency_seconds_count 1",
		"edgesync_queue_depth 0",
		`grpc_server_started_total{grpc_method="Sync",grpc_service="edgesync.v1.SyncService",grpc_type="bidi_stream"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	env.Stop()
	if _, err := http.Get("http://" + env.HTTPAddr + "/readyz"); err == nil {
		t.Error("HTTP listener still serving after Stop")
	}
}

func TestReadyzFollowsReadyHook(t *testing.T) {
	ready := make(chan struct{})
	env := servertest.Start(t, feedtest.New(), func(o *server.Options) {
		o.Ready = func() error {
			select {
			case <-ready:
				return nil
			default:
				return fmt.Errorf("caches not synced")
			}
		}
	})
	readyz := func() int {
		resp, err := http.Get("http://" + env.HTTPAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := readyz(); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready: %d, want 503", got)
	}
	close(ready)
	if got := readyz(); got != http.StatusOK {
		t.Errorf("/readyz when ready: %d, want 200", got)
	}
}

func TestWelcomeComesBeforeAnswersToEarlyReports(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	for range 20 {
		e := openStream(t, env.DialNode(t, "node-a"), "node-a")
		e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "node-a"}}})
		e.report(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
		if first := e.recv(); first.GetWelcome() == nil || first.GetSequence() != 1 {
			t.Fatalf("first message %v, want Welcome with sequence 1", first)
		}
		e.cancel()
	}
}

// loadingControllers are controllers whose caches load until synced closes.
type loadingControllers struct {
	*feedtest.Controllers
	synced chan struct{}
}

func (c loadingControllers) Synced() <-chan struct{} { return c.synced }

func TestHealthWaitsForControllerCaches(t *testing.T) {
	ctrls := loadingControllers{Controllers: feedtest.New(), synced: make(chan struct{})}
	env := servertest.Start(t, ctrls)
	watch, err := grpc_health_v1.NewHealthClient(env.DialAdmin(t)).Watch(t.Context(),
		&grpc_health_v1.HealthCheckRequest{Service: edgesyncv1.SyncService_ServiceDesc.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetStatus() != grpc_health_v1.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while the caches load: %v, want NOT_SERVING", first.GetStatus())
	}
	resp, err := http.Get("http://" + env.HTTPAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz while the caches load: %d, want 503", resp.StatusCode)
	}

	close(ctrls.synced)
	next, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if next.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("health once the caches loaded: %v, want SERVING", next.GetStatus())
	}
}

func TestServesWithoutHTTPListener(t *testing.T) {
	env := servertest.Start(t, feedtest.New(), func(o *server.Options) {
		o.HTTPListener.Close()
		o.HTTPListener = nil
	})
	// A session completes its initial sync; Stop fails the test if Serve
	// returned an error (it must run until its context ends).
	connect(t, env, "node-a").recvInitial()
	env.Stop()
}

// slowSource holds Desired until released, or for two seconds.
type slowSource struct {
	*feedtest.Controllers
	release <-chan struct{}
}

func (s slowSource) Desired(node string) ([]*feed.Object, error) {
	select {
	case <-s.release:
	case <-time.After(2 * time.Second): // the deadline of what the test observes
	}
	return s.Controllers.Desired(node)
}

// Reports are handled only once the session's initial objects are queued:
// while the controllers cannot say what a node holds (caches loading), a
// report sent right after Hello never reaches them, and the session ends
// with their UNAVAILABLE, so the edge sends the report again on its next
// session instead of taking a refusal for an answer. (Desired is held
// until a report reaches the controllers, so a server that handled reports
// early would answer this one.)
func TestReportsWaitForTheInitialSync(t *testing.T) {
	ctrls := feedtest.New()
	ctrls.SetDesiredError(status.Error(codes.Unavailable, "the caches are still loading"))
	release := make(chan struct{})
	var once sync.Once
	ctrls.Respond(func(string, *edgesyncv1.SyncRequest) error {
		once.Do(func() { close(release) })
		return status.Error(codes.Unavailable, "the caches are still loading")
	})
	env := servertest.Start(t, slowSource{Controllers: ctrls, release: release})
	e := openStream(t, env.DialNode(t, "node-a"), "node-a")
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "node-a"}}})
	e.send(&edgesyncv1.SyncRequest{RequestId: 1, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}})
	for {
		msg, err := e.stream.Recv()
		if err != nil {
			if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "still loading") {
				t.Fatalf("stream ended with %v, want UNAVAILABLE saying the caches are loading", st)
			}
			break
		}
		if msg.GetStatusResult() != nil {
			t.Fatalf("report answered %v before the session could say what the node holds", msg.GetStatusResult())
		}
	}
	if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
		t.Fatal(err)
	}
	if r := ctrls.Reports(); len(r) != 0 {
		t.Fatalf("controllers got %d reports from a session that never synced", len(r))
	}
}
