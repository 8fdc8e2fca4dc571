// Package frame sends pre-encoded objects over gRPC without encoding them
// again. A Frame is a SyncResponse whose event was encoded once by the
// controllers (feed.Object.Payload); the Codec writes the session's sequence
// number (field 1, varint) in front of those bytes, which protobuf decodes as
// the same message with that sequence set. Every other message goes through
// the standard proto codec.
package frame

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Frame is one SyncResponse: Sequence followed by Payload, an encoded
// SyncResponse without a sequence.
type Frame struct {
	Sequence uint64
	Payload  []byte
}

// Codec is a grpc encoding.CodecV2 named "proto" that passes *Frame through
// and uses the proto codec for everything else. Install it with
// grpc.ForceServerCodecV2.
type Codec struct {
	proto encoding.CodecV2
}

// NewCodec returns the codec.
func NewCodec() *Codec {
	return &Codec{proto: encoding.GetCodecV2(proto.Name)}
}

// Marshal encodes v. The payload of a *Frame is shared, not copied: it must
// not change afterwards.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*Frame)
	if !ok {
		return c.proto.Marshal(v)
	}
	hdr := make([]byte, 0, 1+protowire.SizeVarint(f.Sequence))
	hdr = protowire.AppendTag(hdr, 1, protowire.VarintType)
	hdr = protowire.AppendVarint(hdr, f.Sequence)
	return mem.BufferSlice{mem.SliceBuffer(hdr), mem.SliceBuffer(f.Payload)}, nil
}

// Unmarshal decodes with the proto codec.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	return c.proto.Unmarshal(data, v)
}

// Name is "proto": on the wire a Frame is an ordinary protobuf message.
func (c *Codec) Name() string { return proto.Name }
