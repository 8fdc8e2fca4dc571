package rawstream

import (
	"net"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/edgesync/edgesync/internal/bench/certs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T) (*certs.Set, string) {
	t.Helper()
	set, err := certs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := certs.ServerTLS(set.Dir)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), ServerOption())
	Register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return set, lis.Addr().String()
}

func dial(t *testing.T, set *certs.Set, addr, node string) *grpc.ClientConn {
	t.Helper()
	cs, err := set.IssueNodes([]string{node})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(set.ClientTLS(cs[0]))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestStreamsDeliverEveryMessageOverMTLS(t *testing.T) {
	set, addr := start(t)
	const streams, count = 5, 1000
	var got atomic.Int64
	var g errgroup.Group
	for i := range streams {
		conn := dial(t, set, addr, "edge-"+string(rune('a'+i)))
		g.Go(func() error {
			return Run(t.Context(), conn, Request{Count: count, Size: 512, Window: 16}, func() { got.Add(1) })
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if got.Load() != streams*count {
		t.Fatalf("received %d messages, want %d", got.Load(), streams*count)
	}
}

func TestBadRequestIsInvalidArgument(t *testing.T) {
	set, addr := start(t)
	conn := dial(t, set, addr, "edge-a")
	err := Run(t.Context(), conn, Request{Count: 1, Size: 4, Window: 1}, func() {})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Run with a 4-byte size: %v, want InvalidArgument", err)
	}
}
