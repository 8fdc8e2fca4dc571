package server_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
)

// blackhole forwards one TCP connection to target until cut, after which
// it silently drops everything in both directions while keeping both
// sockets open: a half-open connection, as after a network partition.
type blackhole struct {
	lis    net.Listener
	target string
	cut    chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex // guards conns
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{lis: lis, target: target, cut: make(chan struct{})}
	b.wg.Go(b.accept)
	t.Cleanup(func() {
		lis.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *blackhole) accept() {
	for {
		in, err := b.lis.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", b.target)
		if err != nil {
			in.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, in, out)
		b.mu.Unlock()
		b.wg.Go(func() { b.pipe(out, in) })
		b.wg.Go(func() { b.pipe(in, out) })
	}
}

func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		select {
		case <-b.cut:
			continue // dropped
		default:
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// TestHalfOpenConnectionIsDetected: when the network silently drops
// everything, the server's keepalive pings go unanswered and the session
// ends (SessionEnded is called) without the edge saying anything.
func TestHalfOpenConnectionIsDetected(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) {
		o.Keepalive.Time = time.Second // gRPC's minimum
		o.Keepalive.Timeout = time.Second
	})
	hole := newBlackhole(t, env.Addr)
	conn, err := grpc.NewClient(hole.lis.Addr().String(),
		grpc.WithTransportCredentials(credentials.NewTLS(env.NodeTLS(t, "node-a"))),
		grpc.WithAuthority("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := edgesyncv1.NewSyncServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &edge{t: t, node: "node-a", stream: stream, cancel: cancel}
	e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "node-a"}}})
	e.recv()
	e.recvInitial()

	close(hole.cut)
	if err := ctrls.WaitSessionEnded(t.Context(), "node-a", 1); err != nil {
		t.Fatal(err)
	}
}

// TestSilentEdgeIsEndedAfterTheHeartbeatTimeout: an edge that stops sending
// (its connection still up) has its session ended with UNAVAILABLE and a
// message saying why, while an edge that heartbeats keeps its session.
func TestSilentEdgeIsEndedAfterTheHeartbeatTimeout(t *testing.T) {
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) {
		o.HeartbeatInterval = 100 * time.Millisecond
		o.HeartbeatTimeout = 1500 * time.Millisecond
	})
	hello := func(e *edge, node string) {
		e.send(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: node}}})
		e.recv()
		e.recvInitial()
	}
	silent := openStream(t, env.DialNode(t, "node-silent"), "node-silent")
	hello(silent, "node-silent")
	beating := openStream(t, env.DialNode(t, "node-beating"), "node-beating")
	hello(beating, "node-beating")

	// The heartbeating edge reports every 100ms until the silent one is
	// ended; its answers are read so that its stream never backs up.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for id := uint64(1); ; id++ {
			select {
			case <-stop:
				done <- nil
				return
			case <-tick.C:
			}
			if err := beating.stream.Send(&edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}); err != nil {
				done <- err
				return
			}
			if _, err := beating.stream.Recv(); err != nil {
				done <- err
				return
			}
		}
	}()

	st := silent.expectEnd(codes.Unavailable)
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("the heartbeating edge's stream failed: %v", err)
	}
	for _, want := range []string{"node-silent", "heartbeat"} {
		if !strings.Contains(st.Message(), want) {
			t.Errorf("status message %q does not mention %q", st.Message(), want)
		}
	}
	if err := ctrls.WaitSessionEnded(t.Context(), "node-silent", 1); err != nil {
		t.Fatal(err)
	}
}
