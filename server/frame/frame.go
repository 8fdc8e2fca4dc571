// Package frame sends pre-encoded objects over gRPC without encoding them
// again. A Frame is a SyncResponse whose event was encoded once by the
// controllers (feed.Object.Payload); the Codec writes the session's sequence
// number (field 1, varint) in front of those bytes, which protobuf decodes as
// the same message with that sequence set. A Batch carries several frames
// in one SyncResponse (EventBatch) with the same shared bytes. Every other
// message goes through the standard proto codec.
package frame

import (
	"sync"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Frame is one SyncResponse: Sequence followed by Payload, an encoded
// SyncResponse without a sequence.
type Frame struct {
	Sequence uint64
	Payload  []byte
}

// Codec is a grpc encoding.CodecV2 named "proto" that passes *Frame and
// *Batch through and uses the proto codec for everything else. Install it with
// grpc.ForceServerCodecV2.
type Codec struct {
	proto encoding.CodecV2
}

// NewCodec returns the codec.
func NewCodec() *Codec {
	return &Codec{proto: encoding.GetCodecV2(grpcproto.Name)}
}

// Marshal encodes v. The payloads of a *Frame or a *Batch are shared, not
// copied: they must not change afterwards.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(*Batch); ok {
		return b.marshal(), nil
	}
	f, ok := v.(*Frame)
	if !ok {
		return c.proto.Marshal(v)
	}
	hdr := make([]byte, 0, 1+protowire.SizeVarint(f.Sequence))
	hdr = protowire.AppendTag(hdr, 1, protowire.VarintType)
	hdr = protowire.AppendVarint(hdr, f.Sequence)
	return mem.BufferSlice{mem.SliceBuffer(hdr), mem.SliceBuffer(f.Payload)}, nil
}

// Unmarshal decodes with the proto codec. A SyncRequest that does not
// decode is returned empty, without an error: DecodeError tells why.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.proto.Unmarshal(data, v)
	if req, ok := v.(*edgesyncv1.SyncRequest); ok && err != nil {
		proto.Reset(req)
		undecodable.Store(req, err)
		return nil
	}
	return err
}

// undecodable holds, by message, why a received SyncRequest did not decode,
// until DecodeError takes it.
var undecodable sync.Map // *edgesyncv1.SyncRequest -> error

// DecodeError returns why req, received through the codec, did not decode
// (nil when it did), and forgets it. Call it once after every receive. The
// reason: grpc-go answers a message its codec cannot decode with INTERNAL
// and ends the stream before the handler can say anything, although bad
// bytes from an edge are the edge's mistake (INVALID_ARGUMENT, with what was
// wrong).
func DecodeError(req *edgesyncv1.SyncRequest) error {
	err, ok := undecodable.LoadAndDelete(req)
	if !ok {
		return nil
	}
	return err.(error)
}

// Name is "proto": on the wire a Frame is an ordinary protobuf message.
func (c *Codec) Name() string { return grpcproto.Name }
