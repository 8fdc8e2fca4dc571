package rawstream

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestHeartbeatsAreAnsweredOverMTLS(t *testing.T) {
	set, addr := start(t)
	const streams, answers = 5, 4
	hb := Heartbeats{Interval: 10 * time.Millisecond, RequestSize: 4, ReplySize: 7}
	var c HeartbeatCounters
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var g errgroup.Group
	for i := range streams {
		conn := dial(t, set, addr, fmt.Sprintf("edge-%d", i))
		g.Go(func() error { return Heartbeat(ctx, conn, hb, &c) })
	}
	// Observe the fleet until every stream could have had its answers.
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for c.Answered.Load() < streams*answers || c.Connected.Load() < streams {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("after 30 s: %d streams connected, %d heartbeats sent, %d answered; want %d streams, %d answers (Heartbeat: %v)",
				c.Connected.Load(), c.Sent.Load(), c.Answered.Load(), streams, streams*answers, g.Wait())
		}
		<-tick.C
	}
	cancel()
	if err := g.Wait(); err != nil {
		t.Fatalf("Heartbeat after its context ended: %v, want nil", err)
	}
	if n := c.Connected.Load(); n != 0 {
		t.Errorf("%d streams still counted as connected after Heartbeat returned", n)
	}
	// Each stream has at most one heartbeat unanswered when it ends.
	if sent, answered := c.Sent.Load(), c.Answered.Load(); answered > sent || sent-answered > streams {
		t.Errorf("%d heartbeats sent and %d answered: want every heartbeat but at most one per stream answered", sent, answered)
	}
}

func TestHeartbeatBadInputIsInvalidArgument(t *testing.T) {
	set, addr := start(t)
	conn := dial(t, set, addr, "edge-a")
	tests := []struct {
		name string
		hb   Heartbeats
	}{
		{"empty heartbeat", Heartbeats{Interval: time.Millisecond, RequestSize: 0, ReplySize: 7}},
		{"empty answer", Heartbeats{Interval: time.Millisecond, RequestSize: 4, ReplySize: 0}},
		{"answer too large", Heartbeats{Interval: time.Millisecond, RequestSize: 4, ReplySize: MaxHeartbeatSize + 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c HeartbeatCounters
			err := Heartbeat(t.Context(), conn, tt.hb, &c)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("Heartbeat(%+v) = %v, want InvalidArgument", tt.hb, err)
			}
			if c.Sent.Load() != 0 || c.Connected.Load() != 0 {
				t.Errorf("a rejected stream counted %d heartbeats sent, %d connected; want 0, 0", c.Sent.Load(), c.Connected.Load())
			}
		})
	}
}

func TestHeartbeatOfAnotherSizeThanAnnouncedIsInvalidArgument(t *testing.T) {
	set, addr := start(t)
	conn := dial(t, set, addr, "edge-a")
	stream, err := conn.NewStream(t.Context(), &serviceDesc.Streams[1], heartbeatFullMethod, grpc.ForceCodecV2(codec{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&message{b: Heartbeats{RequestSize: 4, ReplySize: 7}.hello()}); err != nil {
		t.Fatal(err)
	}
	var m message
	if err := stream.RecvMsg(&m); err != nil {
		t.Fatalf("answer to hello: %v", err)
	}
	if err := stream.SendMsg(&message{b: make([]byte, 5)}); err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(&m); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("answer to a 5-byte heartbeat after announcing 4: %v, want InvalidArgument", err)
	}
}
