package rawstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Heartbeats configures a heartbeat stream: the traffic of an idle edgesync
// session, without protobuf, sessions or controllers.
type Heartbeats struct {
	// Interval is the time between two heartbeats of a stream. The first
	// comes at a random point of the first interval after the server
	// answered the hello, as edgesim's edges phase theirs, so that a
	// fleet's heartbeats spread evenly over the interval.
	Interval time.Duration
	// RequestSize and ReplySize are the sizes in bytes of a heartbeat and
	// of the server's answer to it, 1 to MaxHeartbeatSize.
	RequestSize, ReplySize int
}

// MaxHeartbeatSize is the largest heartbeat or answer the server accepts.
const MaxHeartbeatSize = 64 << 10

// HeartbeatCounters are the running totals of a set of heartbeat streams.
type HeartbeatCounters struct {
	// Connected counts streams whose hello the server answered and that
	// have not ended.
	Connected atomic.Int64
	// Sent counts heartbeats sent; Answered counts the server's answers.
	Sent, Answered atomic.Int64
}

// helloSize is the size of a heartbeat stream's first message: the
// heartbeat size and the answer size, 8 bytes each.
const helloSize = 16

func (h Heartbeats) hello() []byte {
	b := make([]byte, helloSize)
	binary.BigEndian.PutUint64(b, uint64(h.RequestSize))
	binary.BigEndian.PutUint64(b[8:], uint64(h.ReplySize))
	return b
}

func decodeHello(m message) (request, reply int, err error) {
	if m.n != helloSize {
		return 0, 0, status.Errorf(codes.InvalidArgument, "first heartbeat-stream message must be a %d-byte hello (heartbeat size, answer size), got %d bytes", helloSize, m.n)
	}
	req, rep := binary.BigEndian.Uint64(m.b), binary.BigEndian.Uint64(m.b[8:])
	if req < 1 || req > MaxHeartbeatSize || rep < 1 || rep > MaxHeartbeatSize {
		return 0, 0, status.Errorf(codes.InvalidArgument, "heartbeat size %d and answer size %d must each be 1 to %d bytes", req, rep, MaxHeartbeatSize)
	}
	return int(req), int(rep), nil
}

// heartbeatHandler answers the hello with an empty message, then every
// heartbeat with one answer of the announced size. One goroutine receives
// and sends in turn: the least a grpc-go server can do per heartbeat.
func heartbeatHandler(_ any, stream grpc.ServerStream) error {
	var hello message
	if err := stream.RecvMsg(&hello); err != nil {
		return err
	}
	reqSize, replySize, err := decodeHello(hello)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&message{b: []byte{}}); err != nil {
		return err
	}
	// Every answer shares one body, as edgesync's frames share bytes.
	answer := &message{b: make([]byte, replySize)}
	for {
		var m message
		if err := stream.RecvMsg(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if m.n != reqSize {
			return status.Errorf(codes.InvalidArgument, "heartbeat of %d bytes; the hello announced %d", m.n, reqSize)
		}
		if err := stream.SendMsg(answer); err != nil {
			return err
		}
	}
}

// Heartbeat opens a heartbeat stream on conn and holds it until ctx ends:
// it announces the sizes in hb, waits for the server's answer to that, then
// sends a heartbeat every hb.Interval and waits for each answer, counting
// in c. It returns nil when ctx ends, and an error when the stream fails
// or an answer is not hb.ReplySize bytes.
func Heartbeat(ctx context.Context, conn *grpc.ClientConn, hb Heartbeats, c *HeartbeatCounters) error {
	if hb.Interval <= 0 {
		return fmt.Errorf("heartbeat interval must be positive, got %s", hb.Interval)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := conn.NewStream(ctx, &serviceDesc.Streams[1], heartbeatFullMethod, grpc.ForceCodecV2(codec{}))
	if err != nil {
		return fmt.Errorf("open raw heartbeat stream: %w", err)
	}
	// failed turns a stream error into Heartbeat's result: nil once ctx
	// ended, else the stream's status (a send that fails with io.EOF
	// learns why from the next receive).
	failed := func(what string, err error) error {
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, io.EOF) {
			var m message
			if rerr := stream.RecvMsg(&m); rerr != nil && !errors.Is(rerr, io.EOF) {
				err = rerr
			}
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := stream.SendMsg(&message{b: hb.hello()}); err != nil {
		return failed("send hello", err)
	}
	var welcome message
	if err := stream.RecvMsg(&welcome); err != nil {
		return failed("receive answer to hello", err)
	}
	if welcome.n != 0 {
		return fmt.Errorf("answer to hello has %d bytes, want 0", welcome.n)
	}
	c.Connected.Add(1)
	defer c.Connected.Add(-1)

	first := time.NewTimer(rand.N(hb.Interval))
	defer first.Stop()
	beat := first.C
	var ticker *time.Ticker
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	// Every heartbeat shares one body.
	heartbeat := &message{b: make([]byte, hb.RequestSize)}
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return nil
		case <-beat:
		}
		if ticker == nil {
			ticker = time.NewTicker(hb.Interval)
			beat = ticker.C
		}
		if err := stream.SendMsg(heartbeat); err != nil {
			return failed(fmt.Sprintf("send heartbeat %d", n), err)
		}
		c.Sent.Add(1)
		var m message
		if err := stream.RecvMsg(&m); err != nil {
			return failed(fmt.Sprintf("receive answer to heartbeat %d", n), err)
		}
		if m.n != hb.ReplySize {
			return fmt.Errorf("answer to heartbeat %d has %d bytes, want %d", n, m.n, hb.ReplySize)
		}
		c.Answered.Add(1)
	}
}
