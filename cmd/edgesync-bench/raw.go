package main

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/netx"
	"github.com/edgesync/edgesync/internal/bench/rawstream"
	"github.com/edgesync/edgesync/internal/bench/simfeed"
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
	var dialer netx.Dialer
	conns := make([]*grpc.ClientConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var got atomic.Int64
	b.prog.watchCounter("throughput raw", &got, int64(n*m))
	// Connect every stream first (a request for nothing), as edgesync's
	// sessions were connected before its measurement.
	var g errgroup.Group
	g.SetLimit(64)
	for i := range n {
		c, err := grpc.NewClient(srv.ready.GRPC, append(edgesim.TransportOptions(),
			grpc.WithTransportCredentials(credentials.NewTLS(b.certs.ClientTLS(b.nodes[i]))),
			grpc.WithContextDialer(dialer.DialContext))...)
		if err != nil {
			return err
		}
		conns[i] = c
		g.Go(func() error {
			return rawstream.Run(ctx, c, rawstream.Request{Count: 0, Size: size, Window: rawWindow}, func() {})
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
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
	t.RawSeconds = elapsed.Seconds()
	t.RawPerSecond = float64(n*m) / elapsed.Seconds()
	t.RawServerCPUSeconds = cpu1.CPUSeconds - cpu0.CPUSeconds
	t.RawBenchCPUSeconds = selfCPU() - self0
	t.RawMessageBytes = int(size)
	t.EdgesyncMessageBytes = len(obj.Payload) + 3
	b.prog.say("raw grpc-go: %d messages in %.2fs: %.0f/s", n*m, elapsed.Seconds(), t.RawPerSecond)
	return nil
}

// rawWindow is edgesync's default acknowledgement window (server.Options).
const rawWindow = 128
