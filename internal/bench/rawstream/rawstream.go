// Package rawstream is the physical limit edgesync is measured against: a
// minimal grpc-go bidirectional stream over the same mTLS, carrying opaque
// byte messages with the same flow control as edgesync (a window of
// unacknowledged messages, cumulative acknowledgements) and nothing else: no
// protobuf, no queues, no sessions.
//
// Two methods share the codec and the server. Stream (Run): the client's
// first message asks for Count messages of Size bytes; the server sends
// them, each prefixed by its sequence number, keeping at most Window
// unacknowledged, and the client acknowledges cumulatively. Heartbeat
// (Heartbeat): the client sends a small message on an interval and the
// server answers each with one small message, as an idle edgesync session
// heartbeats.
package rawstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/edgesync/edgesync/edgeclient"
)

// codecName is the content subtype of the raw stream.
const codecName = "rawbytes"

// message is one opaque frame on the raw stream: b followed by the shared,
// read-only body. Received messages keep only their first maxPrefix bytes
// in b (the sequence number or request) and their full length in n, so
// that the baseline copies no more than it must.
type message struct {
	b    []byte
	body []byte
	n    int
}

const maxPrefix = 24

// codec passes message bytes through untouched.
type codec struct{}

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*message)
	if !ok {
		return nil, fmt.Errorf("rawstream codec: cannot marshal %T", v)
	}
	if m.body == nil {
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	}
	return mem.BufferSlice{mem.SliceBuffer(m.b), mem.SliceBuffer(m.body)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*message)
	if !ok {
		return fmt.Errorf("rawstream codec: cannot unmarshal into %T", v)
	}
	m.n = data.Len()
	m.b = make([]byte, min(m.n, maxPrefix))
	r := data.Reader()
	defer r.Close()
	_, err := io.ReadFull(r, m.b)
	return err
}

func (codec) Name() string { return codecName }

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "edgesyncbench.Raw",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		Handler:       streamHandler,
		ServerStreams: true,
		ClientStreams: true,
	}, {
		StreamName:    "Heartbeat",
		Handler:       heartbeatHandler,
		ServerStreams: true,
		ClientStreams: true,
	}},
}

const (
	fullMethod          = "/edgesyncbench.Raw/Stream"
	heartbeatFullMethod = "/edgesyncbench.Raw/Heartbeat"
)

// Register adds the raw service to s, which must use ServerOption.
func Register(s *grpc.Server) {
	s.RegisterService(&serviceDesc, nil)
}

// ServerOption installs the raw codec on a server.
func ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{})
}

// Request is what a client asks for when it opens a stream.
type Request struct {
	Count  uint64
	Size   uint64
	Window uint64
}

func (r Request) encode() []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b, r.Count)
	binary.BigEndian.PutUint64(b[8:], r.Size)
	binary.BigEndian.PutUint64(b[16:], r.Window)
	return b
}

func decodeRequest(b []byte) (Request, error) {
	if len(b) != 24 {
		return Request{}, status.Errorf(codes.InvalidArgument, "first message must be a 24-byte request, got %d bytes", len(b))
	}
	r := Request{
		Count:  binary.BigEndian.Uint64(b),
		Size:   binary.BigEndian.Uint64(b[8:]),
		Window: binary.BigEndian.Uint64(b[16:]),
	}
	if r.Size < 8 || r.Window == 0 {
		return r, status.Errorf(codes.InvalidArgument, "size must be at least 8 and window positive, got %+v", r)
	}
	return r, nil
}

func streamHandler(_ any, stream grpc.ServerStream) error {
	var first message
	if err := stream.RecvMsg(&first); err != nil {
		return err
	}
	if first.n != len(first.b) {
		return status.Errorf(codes.InvalidArgument, "first message must be a 24-byte request, got %d bytes", first.n)
	}
	req, err := decodeRequest(first.b)
	if err != nil {
		return err
	}
	// One goroutine receives acknowledgements; this one sends.
	acked := make(chan uint64, 1)
	recvErr := make(chan error, 1)
	go func() {
		defer close(acked)
		for {
			var m message
			if err := stream.RecvMsg(&m); err != nil {
				recvErr <- err
				return
			}
			if m.n != 8 {
				recvErr <- status.Error(codes.InvalidArgument, "acknowledgements are 8 bytes")
				return
			}
			seq := binary.BigEndian.Uint64(m.b)
			select {
			case <-acked:
			default:
			}
			acked <- seq
		}
	}()
	// Every message shares one payload; only its 8-byte header differs, as
	// edgesync's frames share the encoded object.
	body := make([]byte, req.Size-8)
	var lastAck uint64
	for seq := uint64(1); seq <= req.Count; seq++ {
		for seq-lastAck > req.Window {
			a, ok := <-acked
			if !ok {
				return <-recvErr
			}
			lastAck = max(lastAck, a)
		}
		hdr := make([]byte, 8)
		binary.BigEndian.PutUint64(hdr, seq)
		if err := stream.SendMsg(&message{b: hdr, body: body}); err != nil {
			return err
		}
	}
	// Wait for the final acknowledgement so "delivered" means acknowledged.
	for lastAck < req.Count {
		a, ok := <-acked
		if !ok {
			return <-recvErr
		}
		lastAck = max(lastAck, a)
	}
	return nil
}

// Run opens one stream on conn, receives req.Count messages and acknowledges
// them, calling onMessage after each. It returns when every message has been
// received and acknowledged.
func Run(ctx context.Context, conn *grpc.ClientConn, req Request, onMessage func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := conn.NewStream(ctx, &serviceDesc.Streams[0], fullMethod, grpc.ForceCodecV2(codec{}))
	if err != nil {
		return fmt.Errorf("open raw stream: %w", err)
	}
	if err := stream.SendMsg(&message{b: req.encode()}); err != nil {
		return fmt.Errorf("send raw request: %w", err)
	}
	// The receiving goroutine (this one) hands the newest sequence to the
	// sending goroutine, which acknowledges as edgeclient does: at once
	// when half the window is unacknowledged, otherwise within
	// edgeclient.DefaultAckDelay, covering whatever is newest by then.
	latest := make(chan uint64, 1)
	sendErr := make(chan error, 1)
	go func() {
		defer close(sendErr)
		sendErr <- acknowledge(stream, latest, max(req.Window/2, 1))
	}()
	var got uint64
	var rerr error
	for got < req.Count {
		var m message
		if err := stream.RecvMsg(&m); err != nil {
			rerr = fmt.Errorf("receive raw message %d: %w", got+1, err)
			break
		}
		got = binary.BigEndian.Uint64(m.b)
		onMessage()
		select {
		case <-latest:
		default:
		}
		latest <- got
	}
	close(latest)
	if err := <-sendErr; err != nil && rerr == nil {
		rerr = fmt.Errorf("acknowledge: %w", err)
	}
	if rerr != nil {
		return rerr
	}
	// The server ends the stream once it has the final acknowledgement.
	var m message
	if err := stream.RecvMsg(&m); !errors.Is(err, io.EOF) {
		return fmt.Errorf("end of raw stream: %v", err)
	}
	return nil
}

// acknowledge sends cumulative acknowledgements for the sequences received
// on latest until it is closed, then closes the sending side.
func acknowledge(stream grpc.ClientStream, latest <-chan uint64, half uint64) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var received, acked uint64
	armed := false
	send := func() error {
		ack := make([]byte, 8)
		binary.BigEndian.PutUint64(ack, received)
		acked = received
		return stream.SendMsg(&message{b: ack})
	}
	for {
		select {
		case seq, ok := <-latest:
			if !ok {
				if received > acked {
					if err := send(); err != nil {
						return err
					}
				}
				return stream.CloseSend()
			}
			received = seq
			if received-acked >= half {
				if err := send(); err != nil {
					return err
				}
			} else if !armed {
				armed = true
				timer.Reset(edgeclient.DefaultAckDelay)
			}
		case <-timer.C:
			armed = false
			if received > acked {
				if err := send(); err != nil {
					return err
				}
			}
		}
	}
}
