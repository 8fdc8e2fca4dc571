package server_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
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
