package frame_test

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/frame"
)

// FuzzCodec: whatever bytes arrive, Unmarshal returns a message or an error;
// a message framed again with any sequence decodes to itself with that
// sequence.
func FuzzCodec(f *testing.F) {
	for _, msg := range []*edgesyncv1.SyncResponse{
		{Sequence: 7, Message: &edgesyncv1.SyncResponse_SyncComplete{SyncComplete: &edgesyncv1.SyncComplete{ObjectsSent: 3}}},
		{Message: &edgesyncv1.SyncResponse_Welcome{Welcome: &edgesyncv1.Welcome{SessionId: "s", AckWindow: 128}}},
	} {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint64(1))
	}
	f.Add([]byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, uint64(1<<63))
	codec := frame.NewCodec()
	f.Fuzz(func(t *testing.T, data []byte, seq uint64) {
		var msg edgesyncv1.SyncResponse
		if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, &msg); err != nil {
			return
		}
		msg.Sequence = 0
		payload, err := proto.Marshal(&msg)
		if err != nil {
			t.Fatalf("re-encode a decoded message: %v", err)
		}
		framed, err := codec.Marshal(&frame.Frame{Sequence: seq, Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		var back edgesyncv1.SyncResponse
		if err := codec.Unmarshal(framed, &back); err != nil {
			t.Fatalf("a frame does not decode: %v", err)
		}
		if back.GetSequence() != seq {
			t.Fatalf("sequence %d came back as %d", seq, back.GetSequence())
		}
		back.Sequence = 0
		if !proto.Equal(&back, &msg) {
			t.Fatalf("framed message changed: %v, want %v", &back, &msg)
		}
	})
}
