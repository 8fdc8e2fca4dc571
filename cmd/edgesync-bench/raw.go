package main

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/netx"
	"github.com/edgesync/edgesync/internal/bench/rawstream"
	"github.com/edgesync/edgesync/internal/bench/simfeed"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// throughputRaw measures the raw grpc-go baseline: n connections, each its
// own node certificate, each receiving m messages of the same size as
// edgesync's events with the same window, acknowledged the same way.
func (b *bench) throughputRaw(ctx context.Context, n, m int) error {
	t := &b.result.Throughput
	srv, err := startChild(ctx, filepath.Join(b.out, "server-raw.log"), "--kind", "raw", "--certs", b.certs.Dir)
	if err != nil {
		return err
	}
	defer srv.stop()
	obj, err := simfeed.ConfigMap("size", 1, b.sc.Size, nil)
	if err != nil {
		return err
	}
	// edgesync's frame is a sequence varint and the payload; the raw
	// message is an 8-byte sequence and a payload of the same length.
	size := uint64(len(obj.Payload) + 8)
	conns, err := b.dialRaw(srv.ready.GRPC, n)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	var got atomic.Int64
	b.prog.watchCounter("throughput raw", &got, int64(n*m))
	// Connect every stream first (a request for nothing), as edgesync's
	// sessions were connected before its measurement.
	var g errgroup.Group
	g.SetLimit(64)
	for _, c := range conns {
		g.Go(func() error {
			return rawstream.Run(ctx, c, rawstream.Request{Count: 0, Size: size, Window: rawWindow}, func() {})
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	// As for edgesync, the median of throughputRuns bursts.
	type burst struct{ seconds, serverCPU, benchCPU float64 }
	var bursts []burst
	for range throughputRuns {
		got.Store(0)
		cpu0, _ := srv.proc()
		self0 := selfCPU()
		start := time.Now()
		g = errgroup.Group{}
		for _, c := range conns {
			g.Go(func() error {
				return rawstream.Run(ctx, c, rawstream.Request{Count: uint64(m), Size: size, Window: rawWindow}, func() { got.Add(1) })
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		elapsed := time.Since(start)
		cpu1, _ := srv.proc()
		bursts = append(bursts, burst{elapsed.Seconds(), cpu1.CPUSeconds - cpu0.CPUSeconds, selfCPU() - self0})
		t.RawRuns = append(t.RawRuns, float64(n*m)/elapsed.Seconds())
	}
	slices.SortFunc(bursts, func(a, b burst) int { return cmp.Compare(a.seconds, b.seconds) })
	median := bursts[len(bursts)/2]
	elapsed := time.Duration(median.seconds * float64(time.Second))
	t.RawSeconds = median.seconds
	t.RawPerSecond = float64(n*m) / median.seconds
	t.RawServerCPUSeconds = median.serverCPU
	t.RawBenchCPUSeconds = median.benchCPU
	t.RawMessageBytes = int(size)
	t.EdgesyncMessageBytes = len(obj.Payload) + 3
	b.prog.say("raw grpc-go: %d messages in %.2fs: %.0f/s", n*m, elapsed.Seconds(), t.RawPerSecond)
	return nil
}

// dialRaw makes n client connections to the raw server at addr, each with
// its own node certificate and the simulated edges' transport settings,
// spread over 127.0.0.x source addresses. Connecting is lazy: streams
// open them.
func (b *bench) dialRaw(addr string, n int) ([]*grpc.ClientConn, error) {
	var dialer netx.Dialer
	conns := make([]*grpc.ClientConn, 0, n)
	for i := range n {
		c, err := grpc.NewClient(addr, append(edgesim.TransportOptions(),
			grpc.WithTransportCredentials(credentials.NewTLS(b.certs.ClientTLS(b.nodes[i]))),
			grpc.WithContextDialer(dialer.DialContext))...)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		c.Close()
	}
}

// rawWindow is edgesync's default acknowledgement window (server.Options).
const rawWindow = 128

// heartbeatSizes returns the encoded sizes of what an idle edgesync session
// puts on the wire per heartbeat: the edge's Heartbeat SyncRequest and the
// server's StatusResult SyncResponse, carrying the request_id and sequence
// of a session's beats-th heartbeat after an initial sync of objects
// objects (Welcome, one event per object and SyncComplete come first).
func heartbeatSizes(objects, beats int) (request, reply int) {
	id := uint64(beats)
	req := &edgesyncv1.SyncRequest{RequestId: id, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}}
	resp := &edgesyncv1.SyncResponse{
		Sequence: uint64(1+objects+1) + id,
		Message:  &edgesyncv1.SyncResponse_StatusResult{StatusResult: &edgesyncv1.StatusResult{RequestId: id}},
	}
	return proto.Size(req), proto.Size(resp)
}

// idleRaw measures the raw grpc-go baseline of the idle window: n
// connections, each its own node certificate, each sending a message the
// size of edgesync's Heartbeat every heartbeatInterval (randomly phased,
// as the simulated edges do) and answered with one the size of its
// StatusResult, while the raw server's CPU is read over a window as long
// as edgesync's. Call it only once the edgesync fleet is closed.
func (b *bench) idleRaw(ctx context.Context, n int) error {
	d := &b.result.Density
	// The sizes of the last heartbeat of edgesync's idle window; their
	// varints are as long as those of every earlier one.
	beats := int((idleSettle+b.sc.IdleWindow)/heartbeatInterval) + 1
	hb := rawstream.Heartbeats{Interval: heartbeatInterval}
	hb.RequestSize, hb.ReplySize = heartbeatSizes(b.sc.ObjectsPerNode, beats)
	d.RawHeartbeatBytes, d.RawAnswerBytes = hb.RequestSize, hb.ReplySize

	srv, err := startChild(ctx, filepath.Join(b.out, "server-raw-idle.log"), "--kind", "raw", "--certs", b.certs.Dir)
	if err != nil {
		return err
	}
	defer srv.stop()
	base, err := srv.proc()
	if err != nil {
		return err
	}
	conns, err := b.dialRaw(srv.ready.GRPC, n)
	if err != nil {
		return err
	}
	defer closeAll(conns)

	// Connect as the simulated fleet does: at most connectConcurrency
	// handshakes at once, each stream heartbeating as soon as it is up.
	var counters rawstream.HeartbeatCounters
	hctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(hctx)
	defer func() {
		cancel()
		_ = g.Wait()
	}()
	ramp := make(chan struct{}, connectConcurrency())
	for _, c := range conns {
		g.Go(func() error {
			select {
			case ramp <- struct{}{}:
			case <-gctx.Done():
				return nil
			}
			err := waitReady(gctx, c)
			<-ramp
			if err != nil {
				return nil // gctx ended
			}
			return rawstream.Heartbeat(gctx, c, hb, &counters)
		})
	}
	b.prog.watchLine("raw heartbeats", rawHeartbeatLine(&counters, n))
	start := time.Now()
	err = waitFor(ctx, time.Duration(n/50+60)*time.Second, "raw streams connected", func() bool {
		return int(counters.Connected.Load()) == n || gctx.Err() != nil
	})
	if gctx.Err() != nil && ctx.Err() == nil {
		cancel()
		return fmt.Errorf("connect: %w", g.Wait())
	}
	if err != nil {
		return fmt.Errorf("%w (%d of %d)", err, counters.Connected.Load(), n)
	}
	d.RawConnectSeconds = time.Since(start).Seconds()
	b.prog.say("raw grpc-go: %d heartbeat streams connected in %.1fs; idle window of %s", n, d.RawConnectSeconds, b.sc.IdleWindow)

	if err := hold(ctx, idleSettle); err != nil {
		return err
	}
	cpu0, err := srv.proc()
	if err != nil {
		return err
	}
	// Memory as edgesync's is measured: after the settle, less the RSS
	// before the first connection.
	d.RawRSSPerSessionBytes = float64(cpu0.RSSBytes-base.RSSBytes) / float64(n)
	answered0 := counters.Answered.Load()
	if err := hold(ctx, b.sc.IdleWindow); err != nil {
		return err
	}
	cpu1, err := srv.proc()
	if err != nil {
		return err
	}
	answered := counters.Answered.Load() - answered0
	// A stream that failed during the window makes the figure wrong.
	if gctx.Err() != nil {
		cancel()
		return fmt.Errorf("during the idle window: %w", g.Wait())
	}
	d.RawIdleCPUPercent = 100 * (cpu1.CPUSeconds - cpu0.CPUSeconds) / b.sc.IdleWindow.Seconds()
	d.RawHeartbeatsPerNodePer10s = float64(answered) / float64(n) / (b.sc.IdleWindow.Seconds() / 10)
	if d.RawIdleCPUPercent > 0 {
		d.IdleCPURatioToRaw = d.IdleCPUPercent / d.RawIdleCPUPercent
	}
	d.RawIdleDone = true
	b.prog.say("raw grpc-go: idle CPU %.1f %% with %.2f heartbeats/node/10 s (edgesync %.1f %%)", d.RawIdleCPUPercent, d.RawHeartbeatsPerNodePer10s, d.IdleCPUPercent)
	return nil
}

// waitReady connects c and waits until it is ready or ctx ends.
func waitReady(ctx context.Context, c *grpc.ClientConn) error {
	c.Connect()
	for s := c.GetState(); s != connectivity.Ready; s = c.GetState() {
		if !c.WaitForStateChange(ctx, s) {
			return ctx.Err()
		}
	}
	return nil
}

// rawHeartbeatLine is the progress line of the raw heartbeat fleet.
func rawHeartbeatLine(c *rawstream.HeartbeatCounters, n int) func(every time.Duration) string {
	last := c.Answered.Load()
	return func(every time.Duration) string {
		answered := c.Answered.Load()
		line := fmt.Sprintf("connected %d/%d heartbeats answered %d (%.0f/s)", c.Connected.Load(), n, answered, float64(answered-last)/every.Seconds())
		last = answered
		return line
	}
}
