package edgesim

import (
	"errors"
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// Field numbers read by the shallow decoder: SyncResponse, its events
// (type 1, object 2, in every event message), the objects (metadata 1,
// ConfigMap data 2), ResourceEvent (metadata, group, version, resource of
// its own) and ObjectMeta, as the protos define them.
const (
	responseSequence     = 1
	responseWelcome      = 10
	responsePodEvent     = 11
	responseConfigMap    = 12
	responseSecretEvent  = 13
	responseDeviceEvent  = 14
	responseSyncComplete = 15
	responseStatusResult = 16
	responseNodeEvent    = 17
	responseTokenEvent   = 18
	responseServiceEvent = 19
	responseSliceEvent   = 20
	responseResource     = 23
	responseEventBatch   = 25

	batchEvents = 1

	eventType   = 1
	eventObject = 2

	resourceMetadata = 2
	resourceGroup    = 3
	resourceVersion  = 4
	resourceResource = 5

	objectMetadata = 1
	configMapData  = 2
	mapKey         = 1
	mapValue       = 2

	metaName            = 1
	metaNamespace       = 3
	metaUID             = 5
	metaResourceVersion = 6
)

// response is a SyncResponse as a lean edge reads it: the sequence, which
// message it carries, and for an object event only the object's identity
// (and one ConfigMap value, for latency). Objects are not decoded, as the
// raw baseline's client reads only its sequence: the simulator's CPU is
// shared with the server under test, so it spends as little as an edge
// can while still acknowledging and tracking exactly what it holds.
type response struct {
	sequence     uint64
	welcome      *edgesyncv1.Welcome
	syncComplete bool
	statusResult bool
	ref          *edgesyncv1.ObjectRef // set for object events
	deleted      bool
	sentAt       string // the ConfigMap's SentAtKey value, if any
	// events are the object events of an EventBatch, in order; sequence
	// is then the last one's.
	events []response
}

// shallowCodec marshals requests as protobuf and reads responses into a
// *response. It is forced on the simulator's streams only.
type shallowCodec struct{}

func (shallowCodec) Name() string { return "proto" }

func (shallowCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("edgesim codec: cannot marshal %T", v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (shallowCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*response)
	if !ok {
		return fmt.Errorf("edgesim codec: cannot unmarshal into %T", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	*r = response{events: r.events[:0]}
	return r.decode(buf.ReadOnlyData())
}

var _ encoding.CodecV2 = shallowCodec{}

var errTruncated = errors.New("edgesim: truncated protobuf")

// fields calls fn for every field of the message b; bytes fields get
// their contents, varints their value.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v uint64, sub []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		var v uint64
		var sub []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			sub, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		if err := fn(num, typ, v, sub); err != nil {
			return err
		}
	}
	return nil
}

func (r *response) decode(b []byte) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, v uint64, sub []byte) error {
		switch num {
		case responseSequence:
			r.sequence = v
		case responseWelcome:
			r.welcome = new(edgesyncv1.Welcome)
			return proto.Unmarshal(sub, r.welcome)
		case responseSyncComplete:
			r.syncComplete = true
		case responseStatusResult:
			r.statusResult = true
		case responsePodEvent:
			return r.event(edgesyncv1.Kind_KIND_POD, sub)
		case responseConfigMap:
			return r.event(edgesyncv1.Kind_KIND_CONFIG_MAP, sub)
		case responseSecretEvent:
			return r.event(edgesyncv1.Kind_KIND_SECRET, sub)
		case responseDeviceEvent:
			return r.event(edgesyncv1.Kind_KIND_DEVICE, sub)
		case responseNodeEvent:
			return r.event(edgesyncv1.Kind_KIND_NODE, sub)
		case responseServiceEvent:
			return r.event(edgesyncv1.Kind_KIND_SERVICE, sub)
		case responseSliceEvent:
			return r.event(edgesyncv1.Kind_KIND_ENDPOINT_SLICE, sub)
		case responseTokenEvent:
			return r.event(edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN, sub)
		case responseResource:
			return r.resource(sub)
		case responseEventBatch:
			return r.batch(sub)
		}
		return nil
	})
}

// batch reads an EventBatch: each event a SyncResponse of its own.
func (r *response) batch(b []byte) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
		if num != batchEvents {
			return nil
		}
		var ev response
		if err := ev.decode(sub); err != nil {
			return err
		}
		switch {
		case len(ev.events) > 0:
			return errors.New("edgesim: an EventBatch holds no EventBatch")
		case ev.ref == nil:
			// An object event this simulator does not read (a
			// SubscriptionEvent, say): skipped, as it is when it comes
			// alone; the batch's sequence still acknowledges it.
			return nil
		}
		r.events = append(r.events, ev)
		return nil
	})
}

func (r *response) event(kind edgesyncv1.Kind, b []byte) error {
	r.ref = &edgesyncv1.ObjectRef{Kind: kind}
	return fields(b, func(num protowire.Number, _ protowire.Type, v uint64, sub []byte) error {
		switch num {
		case eventType:
			r.deleted = edgesyncv1.EventType(v) == edgesyncv1.EventType_EVENT_TYPE_DELETE
		case eventObject:
			return r.object(kind, sub)
		}
		return nil
	})
}

// resource reads a ResourceEvent: its metadata is the event's own, and
// its key names the resource (feed.ResourceName).
func (r *response) resource(b []byte) error {
	r.ref = &edgesyncv1.ObjectRef{Kind: edgesyncv1.Kind_KIND_RESOURCE}
	var group, version, resource string
	err := fields(b, func(num protowire.Number, _ protowire.Type, v uint64, sub []byte) error {
		switch num {
		case eventType:
			r.deleted = edgesyncv1.EventType(v) == edgesyncv1.EventType_EVENT_TYPE_DELETE
		case resourceMetadata:
			return r.meta(sub)
		case resourceGroup:
			group = string(sub)
		case resourceVersion:
			version = string(sub)
		case resourceResource:
			resource = string(sub)
		}
		return nil
	})
	r.ref.Name = feed.ResourceName(group, version, resource, r.ref.Name)
	return err
}

func (r *response) object(kind edgesyncv1.Kind, b []byte) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
		switch {
		case num == objectMetadata:
			return r.meta(sub)
		case num == configMapData && kind == edgesyncv1.Kind_KIND_CONFIG_MAP:
			return r.dataEntry(sub)
		}
		return nil
	})
}

func (r *response) meta(b []byte) error {
	return fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
		switch num {
		case metaName:
			r.ref.Name = string(sub)
		case metaNamespace:
			r.ref.Namespace = string(sub)
		case metaUID:
			r.ref.Uid = string(sub)
		case metaResourceVersion:
			r.ref.ResourceVersion = string(sub)
		}
		return nil
	})
}

func (r *response) dataEntry(b []byte) error {
	var key, value []byte
	err := fields(b, func(num protowire.Number, _ protowire.Type, _ uint64, sub []byte) error {
		switch num {
		case mapKey:
			key = sub
		case mapValue:
			value = sub
		}
		return nil
	})
	if err == nil && string(key) == SentAtKey {
		r.sentAt = string(value)
	}
	return err
}
