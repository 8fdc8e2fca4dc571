// Package tunnel carries connections from the cloud to edge nodes over
// streams the edges open (edgesync.v1.TunnelService): the edge dials out,
// nothing dials the edge. A Broker is both ends' meeting point on one
// replica: Dial asks a node, over its Sync stream, to open a tunnel (the
// server's OpenTunnel), waits for the node's Tunnel stream, and returns it
// as a net.Conn; the Tunnel handler accepts the stream only from the
// certificate of the node the tunnel was asked of, so a node can never
// answer for another.
//
// The bytes are those of one connection, both ways, with gRPC's flow
// control: a reader that stops reading stops the writer at the other end,
// through an unbuffered pipe here and the stream's window there, so memory
// per tunnel is bounded by the stream window and one 32 KiB message.
// Tunnels are limited per node and in total, and end when idle for
// Options.IdleTimeout.
//
// # Metrics
//
// edgesync_tunnels_open, edgesync_tunnels_opened_total,
// edgesync_tunnel_bytes_total{direction="to_edge|from_edge"} and
// edgesync_tunnel_errors_total{reason}.
package tunnel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/pki"
)

// chunk is the most bytes one stream message carries.
const chunk = 32 << 10

// Errors Dial returns, wrapped with the node's name.
var (
	// ErrLimit: the node or the replica has its most tunnels open.
	ErrLimit = errors.New("too many tunnels open")
	// ErrOpenTimeout: the edge did not open the tunnel in time.
	ErrOpenTimeout = errors.New("the edge did not open the tunnel in time")
)

// Options configure a Broker. Zero fields take the defaults listed.
type Options struct {
	// Open asks node to open the tunnel id (the server's OpenTunnel). It
	// returns an error when node has no session on this replica.
	Open func(node, id string) error
	// OpenTimeout bounds the wait for the edge's stream. Default 10s.
	OpenTimeout time.Duration
	// IdleTimeout ends a tunnel through which no byte passed for this long.
	// Default 4h, the kubelet's streaming-connection-idle-timeout.
	IdleTimeout time.Duration
	// MaxPerNode and MaxTotal bound the tunnels open at once for one node
	// and on this replica. Defaults 32 and 1024.
	MaxPerNode int
	MaxTotal   int
	// Logger receives the broker's logs. Default: none.
	Logger *zap.Logger
	// Registerer receives the metrics. Default: none.
	Registerer prometheus.Registerer
}

// Broker pairs Dial calls with the edges' Tunnel streams. It implements
// edgesyncv1.TunnelServiceServer: give it to server.Options.Tunnel.
type Broker struct {
	edgesyncv1.UnimplementedTunnelServiceServer
	opts    Options
	log     *zap.Logger
	metrics metrics

	mu      sync.Mutex // guards the fields below
	pending map[string]*pending
	open    map[string]int // tunnels open or opening, by node
	total   int
}

// pending is a Dial waiting for its stream.
type pending struct {
	node string
	conn chan net.Conn // capacity 1: the handler's end of the pipe
}

// New returns a broker.
func New(opts Options) (*Broker, error) {
	if opts.Open == nil {
		return nil, errors.New("tunnel: Options.Open is required")
	}
	if opts.OpenTimeout <= 0 {
		opts.OpenTimeout = 10 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 4 * time.Hour
	}
	if opts.MaxPerNode <= 0 {
		opts.MaxPerNode = 32
	}
	if opts.MaxTotal <= 0 {
		opts.MaxTotal = 1024
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	b := &Broker{opts: opts, log: opts.Logger, pending: map[string]*pending{}, open: map[string]int{}}
	b.metrics = newMetrics()
	if opts.Registerer != nil {
		if err := b.metrics.register(opts.Registerer); err != nil {
			return nil, fmt.Errorf("tunnel metrics: %w", err)
		}
	}
	return b, nil
}

// Dial opens a tunnel to node's edge and returns its end: the edge serves
// what is written to it as one HTTP connection. Closing the conn ends the
// tunnel. Errors wrap ErrLimit, ErrOpenTimeout, or Options.Open's error.
func (b *Broker) Dial(ctx context.Context, node string) (net.Conn, error) {
	if err := b.acquire(node); err != nil {
		b.metrics.errors.WithLabelValues("limit").Inc()
		return nil, err
	}
	released := false
	defer func() {
		if !released {
			b.release(node)
		}
	}()
	var idBytes [16]byte
	_, _ = rand.Read(idBytes[:])
	id := hex.EncodeToString(idBytes[:])
	p := &pending{node: node, conn: make(chan net.Conn, 1)}
	b.mu.Lock()
	b.pending[id] = p
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.pending, id)
		select {
		case c := <-p.conn: // opened as this Dial gave up
			c.Close()
		default:
		}
		b.mu.Unlock()
	}()
	if err := b.opts.Open(node, id); err != nil {
		b.metrics.errors.WithLabelValues("not_connected").Inc()
		return nil, err
	}
	timer := time.NewTimer(b.opts.OpenTimeout)
	defer timer.Stop()
	select {
	case c := <-p.conn:
		released = true
		b.metrics.opened.Inc()
		return &conn{Conn: c, release: sync.OnceFunc(func() { b.release(node) })}, nil
	case <-timer.C:
		b.metrics.errors.WithLabelValues("open_timeout").Inc()
		return nil, fmt.Errorf("node %q: %w (%s)", node, ErrOpenTimeout, b.opts.OpenTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *Broker) acquire(node string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.open[node] >= b.opts.MaxPerNode:
		return fmt.Errorf("node %q has %d tunnels open, its limit: %w", node, b.open[node], ErrLimit)
	case b.total >= b.opts.MaxTotal:
		return fmt.Errorf("this server has %d tunnels open, its limit: %w", b.total, ErrLimit)
	}
	b.open[node]++
	b.total++
	return nil
}

func (b *Broker) release(node string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total--
	if b.open[node]--; b.open[node] <= 0 {
		delete(b.open, node)
	}
}

// Open returns the number of tunnels open or opening.
func (b *Broker) Open() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total
}

// conn is Dial's end of a tunnel; Close releases its place in the limits.
type conn struct {
	net.Conn
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// AuthFuncOverride admits node certificates only (auth interceptor hook).
func (*Broker) AuthFuncOverride(ctx context.Context, _ string) (context.Context, error) {
	if _, err := callerNode(ctx); err != nil {
		return nil, err
	}
	return ctx, nil
}

// callerNode is the node of the call's verified client certificate.
func callerNode(ctx context.Context) (string, error) {
	node, cert := pki.PeerNode(ctx)
	if cert == nil {
		return "", status.Error(codes.Unauthenticated, "a node certificate signed by the server's CA is required")
	}
	if node == "" {
		return "", status.Errorf(codes.PermissionDenied, "Tunnel needs a node certificate (common name %q followed by the node name); certificate %q is not one", pki.NodeCNPrefix, cert.Subject.CommonName)
	}
	return node, nil
}

// Tunnel serves one edge stream (TunnelService). The first message names
// the tunnel; the handler checks that it was asked of the caller's node,
// hands one end of a pipe to the waiting Dial, and copies bytes between
// the pipe and the stream: this goroutine sends, a second one receives.
// It returns when Dial's end closes, the edge half-closes, the tunnel is
// idle for IdleTimeout, or the stream ends.
func (b *Broker) Tunnel(stream grpc.BidiStreamingServer[edgesyncv1.TunnelRequest, edgesyncv1.TunnelResponse]) error {
	ctx := stream.Context()
	node, err := callerNode(ctx)
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return status.Error(codes.InvalidArgument, "the first message must carry tunnel_id")
	}
	id := first.GetTunnelId()
	if id == "" {
		b.metrics.errors.WithLabelValues("refused").Inc()
		return status.Error(codes.InvalidArgument, "the first message must carry tunnel_id, the id of TunnelOpen")
	}
	local, remote := net.Pipe()
	defer remote.Close()
	b.mu.Lock()
	p := b.pending[id]
	mine := p != nil && p.node == node
	if mine {
		delete(b.pending, id) // claimed: opened once
		p.conn <- local       // capacity 1; under mu, so Dial sees it or closes it
	}
	b.mu.Unlock()
	switch {
	case p == nil:
		b.metrics.errors.WithLabelValues("refused").Inc()
		return status.Errorf(codes.NotFound, "no tunnel %q waits for node %q (it timed out or was already opened)", id, node)
	case !mine:
		b.metrics.errors.WithLabelValues("refused").Inc()
		b.log.Warn("tunnel refused: asked of another node", zap.String("node", node), zap.String("asked_of", p.node))
		return status.Errorf(codes.PermissionDenied, "node %q may not open a tunnel asked of node %q", node, p.node)
	}

	idle := time.AfterFunc(b.opts.IdleTimeout, func() { remote.Close() })
	defer idle.Stop()
	b.metrics.openNow.Inc()
	defer b.metrics.openNow.Dec()

	go b.fromEdge(stream, remote, idle) // ends when the stream ends
	buf := make([]byte, chunk)
	for {
		n, err := remote.Read(buf)
		if n > 0 {
			idle.Reset(b.opts.IdleTimeout)
			if err := stream.Send(&edgesyncv1.TunnelResponse{Data: buf[:n]}); err != nil {
				return nil // the edge is gone; fromEdge closes the pipe
			}
			b.metrics.toEdge.Add(float64(n))
		}
		if err != nil {
			// Dial's end closed (or fromEdge closed the pipe: the edge
			// half-closed, or idle): the tunnel is over.
			return nil
		}
	}
}

// fromEdge is the stream's only Recv caller: it writes what the edge sends
// into the pipe, which blocks until Dial's end reads it (backpressure),
// and closes the pipe when the edge half-closes or the stream ends.
func (b *Broker) fromEdge(stream grpc.BidiStreamingServer[edgesyncv1.TunnelRequest, edgesyncv1.TunnelResponse], remote net.Conn, idle *time.Timer) {
	defer remote.Close()
	for {
		msg, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) && status.Code(err) != codes.Canceled {
				b.log.Debug("tunnel stream ended", zap.Error(err))
			}
			return
		}
		if len(msg.GetData()) == 0 {
			continue
		}
		idle.Reset(b.opts.IdleTimeout)
		if _, err := remote.Write(msg.GetData()); err != nil {
			return
		}
		b.metrics.fromEdge.Add(float64(len(msg.GetData())))
	}
}

// metrics are the broker's Prometheus metrics.
type metrics struct {
	openNow  prometheus.Gauge
	opened   prometheus.Counter
	bytes    *prometheus.CounterVec
	toEdge   prometheus.Counter
	fromEdge prometheus.Counter
	errors   *prometheus.CounterVec
}

func newMetrics() metrics {
	m := metrics{
		openNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgesync_tunnels_open",
			Help: "Tunnels to edges open on this replica (kubectl logs, exec, attach, port-forward).",
		}),
		opened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_tunnels_opened_total",
			Help: "Tunnels to edges opened.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_tunnel_bytes_total",
			Help: "Bytes carried through tunnels, by direction (to_edge, from_edge).",
		}, []string{"direction"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_tunnel_errors_total",
			Help: "Tunnels that could not be opened, by reason (not_connected, limit, open_timeout, refused).",
		}, []string{"reason"}),
	}
	m.toEdge = m.bytes.WithLabelValues("to_edge")
	m.fromEdge = m.bytes.WithLabelValues("from_edge")
	for _, r := range []string{"not_connected", "limit", "open_timeout", "refused"} {
		m.errors.WithLabelValues(r)
	}
	return m
}

func (m metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.openNow, m.opened, m.bytes, m.errors} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
