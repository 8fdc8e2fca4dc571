package server_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
)

// rawCodec sends bytes as they are, so that the server receives exactly
// what the fuzzer made; it reads answers as bytes too.
type rawCodec struct{}

type rawMessage []byte

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*rawMessage))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*rawMessage) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

var syncStream = &grpc.StreamDesc{StreamName: "Sync", ServerStreams: true, ClientStreams: true}

// FuzzSyncRequest sends arbitrary bytes as a SyncRequest on a real stream
// over mTLS, as the first message or after a valid Hello. Whatever they
// hold, the server answers with a status the edge can act on (never
// INTERNAL or UNKNOWN, which would mean a bug or a recovered panic) and
// keeps serving: a valid Hello still gets its Welcome afterwards.
func FuzzSyncRequest(f *testing.F) {
	const node = "node-fuzz"
	hello, err := proto.Marshal(&edgesyncv1.SyncRequest{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: node}}})
	if err != nil {
		f.Fatal(err)
	}
	for _, req := range []*edgesyncv1.SyncRequest{
		{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: node, HeldObjects: []*edgesyncv1.ObjectRef{
			{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "default", Name: "a", ResourceVersion: "1"},
		}}}},
		{Message: &edgesyncv1.SyncRequest_Hello{Hello: &edgesyncv1.Hello{NodeName: "another-node"}}},
		{RequestId: 1, Message: &edgesyncv1.SyncRequest_Heartbeat{Heartbeat: &edgesyncv1.Heartbeat{}}},
		{Message: &edgesyncv1.SyncRequest_Ack{Ack: &edgesyncv1.Ack{Sequence: 1}}},
		{Message: &edgesyncv1.SyncRequest_Nack{Nack: &edgesyncv1.Nack{Sequence: 1, Reason: "bad"}}},
		{RequestId: 2, Message: &edgesyncv1.SyncRequest_PodStatus{PodStatus: &edgesyncv1.PodStatus{Namespace: "default", Name: "p"}}},
		{},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(true, b)
		f.Add(false, b)
	}
	f.Add(true, []byte{0xff, 0xff, 0xff})

	ctrls := feedtest.New()
	ctrls.Put(node, cm("a", "2"))
	// The fuzz target may not log to f: the server logs nowhere.
	env := servertest.Start(f, ctrls, func(o *server.Options) { o.Logger = zap.NewNop() })
	conn := env.DialNode(f, node, grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))

	// exchange opens a stream, sends msgs, closes its side (after the
	// first answer, with waitFirst) and reads until the server ends the
	// stream; it returns the first message received and the final status.
	exchange := func(t *testing.T, waitFirst bool, msgs ...[]byte) (first rawMessage, err error) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		stream, err := conn.NewStream(ctx, syncStream, "/edgesync.v1.SyncService/Sync")
		if err != nil {
			t.Fatalf("open stream: %v", err)
		}
		for _, m := range msgs {
			msg := rawMessage(m)
			if err := stream.SendMsg(&msg); err != nil {
				break // the server ended the stream; RecvMsg tells why
			}
		}
		if !waitFirst {
			_ = stream.CloseSend()
		}
		for n := 0; ; n++ {
			var msg rawMessage
			if err := stream.RecvMsg(&msg); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				return first, err
			}
			if n == 0 {
				first = msg
				_ = stream.CloseSend()
			}
		}
	}

	f.Fuzz(func(t *testing.T, afterHello bool, data []byte) {
		msgs := [][]byte{data}
		if afterHello {
			msgs = [][]byte{hello, data}
		}
		_, err := exchange(t, false, msgs...)
		switch code := status.Code(err); code {
		case codes.Internal, codes.Unknown, codes.DeadlineExceeded:
			t.Fatalf("the server answered %v to %x", err, data)
		}
		// Still serving: a valid Hello is welcomed.
		first, err := exchange(t, true, hello)
		if err != nil {
			t.Fatalf("after %x a valid Hello ends with %v", data, err)
		}
		var resp edgesyncv1.SyncResponse
		if err := proto.Unmarshal(first, &resp); err != nil || resp.GetWelcome() == nil {
			t.Fatalf("after %x a valid Hello gets %v (%v), want Welcome", data, &resp, err)
		}
	})
}
