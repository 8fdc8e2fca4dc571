package tunnel_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/pki"
	"github.com/edgesync/edgesync/server/tunnel"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// world is a broker served over real mTLS on a real port, with a CA that
// issues node certificates.
type world struct {
	broker *tunnel.Broker
	addr   string
	ca     *pki.CA
	opened chan open // what the broker asked of which node
}

type open struct{ node, id string }

func newWorld(t *testing.T, opts tunnel.Options) *world {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	serverKP, err := ca.IssueServer([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := serverKP.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	w := &world{ca: ca, opened: make(chan open, 10)}
	if opts.Open == nil {
		opts.Open = func(node, id string) error {
			w.opened <- open{node, id}
			return nil
		}
	}
	if w.broker, err = tunnel.New(opts); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	})))
	edgesyncv1.RegisterTunnelServiceServer(srv, w.broker)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.addr = lis.Addr().String()
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return w
}

// edge returns a TunnelService client with node's certificate.
func (w *world) edge(t *testing.T, node string) edgesyncv1.TunnelServiceClient {
	t.Helper()
	kp, err := w.ca.IssueNode(node)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(w.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: w.ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return edgesyncv1.NewTunnelServiceClient(cc)
}

// dial runs Dial in the background.
func (w *world) dial(ctx context.Context, node string) <-chan dialed {
	ch := make(chan dialed, 1)
	go func() {
		c, err := w.broker.Dial(ctx, node)
		ch <- dialed{c, err}
	}()
	return ch
}

type dialed struct {
	conn net.Conn
	err  error
}

// openTunnel opens the Tunnel stream for id as the edge would.
func openTunnel(t *testing.T, client edgesyncv1.TunnelServiceClient, id string) grpc.BidiStreamingClient[edgesyncv1.TunnelRequest, edgesyncv1.TunnelResponse] {
	t.Helper()
	stream, err := client.Tunnel(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&edgesyncv1.TunnelRequest{TunnelId: id}); err != nil {
		t.Fatal(err)
	}
	return stream
}

func TestTunnelCarriesBytesBothWays(t *testing.T) {
	reg := prometheus.NewRegistry()
	w := newWorld(t, tunnel.Options{Registerer: reg})
	res := w.dial(t.Context(), "node-a")
	asked := <-w.opened
	if asked.node != "node-a" {
		t.Fatalf("asked node %q, want node-a", asked.node)
	}
	stream := openTunnel(t, w.edge(t, "node-a"), asked.id)
	d := <-res
	if d.err != nil {
		t.Fatal(d.err)
	}
	defer d.conn.Close()

	if _, err := d.conn.Write([]byte("GET /containerLogs/ns/pod/c HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	msg, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(msg.GetData()); got != "GET /containerLogs/ns/pod/c HTTP/1.1\r\n\r\n" {
		t.Errorf("the edge received %q", got)
	}
	if err := stream.Send(&edgesyncv1.TunnelRequest{Data: []byte("HTTP/1.1 200 OK\r\n")}); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil { // the edge closed its end
		t.Fatal(err)
	}
	got, err := io.ReadAll(d.conn)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "HTTP/1.1 200 OK\r\n" {
		t.Errorf("the caller read %q", got)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after the edge closed its end, the stream ended with %v, want OK", err)
	}
	for name, want := range map[string]float64{
		`edgesync_tunnel_bytes_total{direction="to_edge"}`:   40,
		`edgesync_tunnel_bytes_total{direction="from_edge"}`: 17,
		`edgesync_tunnels_opened_total`:                      1,
	} {
		if got := gathered(t, reg)[name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// A node's certificate cannot open the tunnel asked of another node: the
// stream is refused and the tunnel still waits for its node.
func TestTunnelIsBoundToItsNode(t *testing.T) {
	reg := prometheus.NewRegistry()
	w := newWorld(t, tunnel.Options{Registerer: reg})
	res := w.dial(t.Context(), "node-a")
	asked := <-w.opened

	intruder := openTunnel(t, w.edge(t, "node-b"), asked.id)
	_, err := intruder.Recv()
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("node-b opening node-a's tunnel: %v, want PERMISSION_DENIED", err)
	}
	if want := `node "node-b" may not open a tunnel asked of node "node-a"`; status.Convert(err).Message() != want {
		t.Errorf("message %q, want %q", status.Convert(err).Message(), want)
	}

	stream := openTunnel(t, w.edge(t, "node-a"), asked.id)
	d := <-res
	if d.err != nil {
		t.Fatalf("node-a's own tunnel after node-b's attempt: %v", d.err)
	}
	d.conn.Close()
	if _, err := stream.Recv(); err != nil && !errors.Is(err, io.EOF) {
		t.Errorf("after the caller closed, the stream ended with %v, want OK", err)
	}

	// Once opened, the id is spent.
	again := openTunnel(t, w.edge(t, "node-a"), asked.id)
	if _, err := again.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("opening a spent tunnel: %v, want NOT_FOUND", err)
	}
	if got := gathered(t, reg)[`edgesync_tunnel_errors_total{reason="refused"}`]; got != 2 {
		t.Errorf("edgesync_tunnel_errors_total{reason=\"refused\"} = %v, want 2", got)
	}
}

func TestDialFailures(t *testing.T) {
	t.Run("not connected", func(t *testing.T) {
		notHere := errors.New(`node "node-a" is not connected`)
		w := newWorld(t, tunnel.Options{Open: func(string, string) error { return notHere }})
		if _, err := w.broker.Dial(t.Context(), "node-a"); !errors.Is(err, notHere) {
			t.Errorf("Dial: %v, want Open's error", err)
		}
		if w.broker.Open() != 0 {
			t.Errorf("%d tunnels counted open after a failed Dial", w.broker.Open())
		}
	})
	t.Run("edge does not answer", func(t *testing.T) {
		w := newWorld(t, tunnel.Options{OpenTimeout: 50 * time.Millisecond})
		if _, err := w.broker.Dial(t.Context(), "node-a"); !errors.Is(err, tunnel.ErrOpenTimeout) {
			t.Errorf("Dial: %v, want ErrOpenTimeout", err)
		}
	})
	t.Run("limit per node", func(t *testing.T) {
		w := newWorld(t, tunnel.Options{MaxPerNode: 1})
		res := w.dial(t.Context(), "node-a")
		asked := <-w.opened
		openTunnel(t, w.edge(t, "node-a"), asked.id)
		d := <-res
		if d.err != nil {
			t.Fatal(d.err)
		}
		if _, err := w.broker.Dial(t.Context(), "node-a"); !errors.Is(err, tunnel.ErrLimit) {
			t.Errorf("second Dial to node-a: %v, want ErrLimit", err)
		}
		// node-b is not limited by node-a's tunnel, and node-a has room
		// again once its tunnel closed: both are asked of their edges.
		ctx, cancel := context.WithCancel(t.Context())
		other := w.dial(ctx, "node-b")
		if asked := <-w.opened; asked.node != "node-b" {
			t.Errorf("asked %q, want node-b", asked.node)
		}
		d.conn.Close()
		again := w.dial(ctx, "node-a")
		if asked := <-w.opened; asked.node != "node-a" {
			t.Errorf("asked %q, want node-a", asked.node)
		}
		cancel()
		<-other
		<-again
	})
}

// A tunnel through which nothing passes for IdleTimeout ends: the caller
// reads EOF and the edge's stream ends.
func TestIdleTunnelEnds(t *testing.T) {
	w := newWorld(t, tunnel.Options{IdleTimeout: 100 * time.Millisecond})
	res := w.dial(t.Context(), "node-a")
	asked := <-w.opened
	stream := openTunnel(t, w.edge(t, "node-a"), asked.id)
	d := <-res
	if d.err != nil {
		t.Fatal(d.err)
	}
	defer d.conn.Close()
	if got, err := io.ReadAll(d.conn); err != nil || len(got) != 0 {
		t.Errorf("reading an idle tunnel: %q, %v; want EOF", got, err)
	}
	if _, err := stream.Recv(); err != nil && !errors.Is(err, io.EOF) {
		t.Errorf("the idle tunnel's stream ended with %v, want OK", err)
	}
}

// gathered flattens reg's counters and gauges into name{labels} -> value.
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			if len(m.GetLabel()) > 0 {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
				}
				name += "{" + strings.Join(labels, ",") + "}"
			}
			out[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}
