package frame

import (
	"encoding/binary"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of the batch framing, as api/edgesync/v1/sync.proto
// defines them: SyncResponse.sequence, SyncResponse.event_batch and
// EventBatch.events.
const (
	responseSequence   = 1
	responseEventBatch = 25
	batchEvents        = 1
)

// Batch is one SyncResponse carrying an EventBatch of Frames, whose
// sequences are consecutive; its own sequence is the last frame's. The
// Codec composes it from the frames' shared payloads and a few bytes of
// framing per frame: no event is encoded again.
type Batch struct {
	Frames []Frame
}

// Room bounds for one batch: BatchOverhead is the most bytes a batch adds
// around its events, EventOverhead the most a frame adds around its
// payload inside a batch. A batch of payloads p1..pn is at most
// BatchOverhead + Σ (EventOverhead + len(pi)) bytes.
const (
	BatchOverhead = 1 + binary.MaxVarintLen64 + 2 + binary.MaxVarintLen32
	EventOverhead = 1 + binary.MaxVarintLen32 + 1 + binary.MaxVarintLen64
)

// eventSize is the size of f as a SyncResponse of its own (sequence, then
// payload).
func eventSize(f Frame) int {
	return 1 + protowire.SizeVarint(f.Sequence) + len(f.Payload)
}

// Size returns the encoded size of the batch.
func (b *Batch) Size() int {
	inner := b.eventsSize()
	return b.headerSize(inner) + inner
}

func (b *Batch) eventsSize() int {
	n := 0
	for _, f := range b.Frames {
		n += protowire.SizeBytes(eventSize(f)) + 1
	}
	return n
}

func (b *Batch) sequence() uint64 {
	if len(b.Frames) == 0 {
		return 0
	}
	return b.Frames[len(b.Frames)-1].Sequence
}

func (b *Batch) headerSize(inner int) int {
	return protowire.SizeTag(responseSequence) + protowire.SizeVarint(b.sequence()) +
		protowire.SizeTag(responseEventBatch) + protowire.SizeVarint(uint64(inner))
}

// marshal writes every byte of framing into one buffer and returns it
// interleaved with the shared payloads.
func (b *Batch) marshal() mem.BufferSlice {
	inner := b.eventsSize()
	hdr := make([]byte, 0, b.headerSize(inner)+len(b.Frames)*EventOverhead)
	hdr = protowire.AppendTag(hdr, responseSequence, protowire.VarintType)
	hdr = protowire.AppendVarint(hdr, b.sequence())
	hdr = protowire.AppendTag(hdr, responseEventBatch, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(inner))
	out := make(mem.BufferSlice, 0, 2*len(b.Frames))
	start := 0
	for _, f := range b.Frames {
		// hdr never grows past its capacity, so the slices handed out
		// stay valid.
		hdr = protowire.AppendTag(hdr, batchEvents, protowire.BytesType)
		hdr = protowire.AppendVarint(hdr, uint64(eventSize(f)))
		hdr = protowire.AppendTag(hdr, responseSequence, protowire.VarintType)
		hdr = protowire.AppendVarint(hdr, f.Sequence)
		out = append(out, mem.SliceBuffer(hdr[start:len(hdr):len(hdr)]), mem.SliceBuffer(f.Payload))
		start = len(hdr)
	}
	return out
}
