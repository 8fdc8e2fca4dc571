// Package store keeps the objects an edge node holds: every pod, configmap,
// secret and device the cloud sent, and the node's own Node, with the uid and resourceVersion it was
// sent at. It is what lets an edge work offline and resume with only the
// difference: the edge client lists it in Hello on every connect and updates
// it before acknowledging a message.
//
// Two implementations share the Store interface: Open (bbolt, persistent,
// for agents) and NewMemory (for simulators and tests).
package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Key names one object on the node.
type Key struct {
	Kind      edgesyncv1.Kind
	Namespace string
	Name      string
}

func (k Key) String() string {
	return fmt.Sprintf("%s %s/%s", KindName(k.Kind), k.Namespace, k.Name)
}

// KindName is the Kubernetes-style name of kind ("Pod", "ConfigMap", ...).
func KindName(kind edgesyncv1.Kind) string {
	switch kind {
	case edgesyncv1.Kind_KIND_POD:
		return "Pod"
	case edgesyncv1.Kind_KIND_CONFIG_MAP:
		return "ConfigMap"
	case edgesyncv1.Kind_KIND_SECRET:
		return "Secret"
	case edgesyncv1.Kind_KIND_DEVICE:
		return "Device"
	case edgesyncv1.Kind_KIND_NODE:
		return "Node"
	case edgesyncv1.Kind_KIND_SERVICE:
		return "Service"
	case edgesyncv1.Kind_KIND_ENDPOINT_SLICE:
		return "EndpointSlice"
	case edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN:
		return "Token"
	case edgesyncv1.Kind_KIND_RESOURCE:
		return "Resource"
	case edgesyncv1.Kind_KIND_SUBSCRIPTION:
		return "Subscription"
	}
	return kind.String()
}

// Record is one held object. Data is the protobuf encoding of the object:
// a k8s.io/api/core/v1 Pod, ConfigMap, Secret, Node or Service, a
// k8s.io/api/discovery/v1 EndpointSlice, an edgesync.v1 DeviceEvent
// carrying the device and its model, or an edgesync.v1
// ServiceAccountToken, ResourceEvent or SubscriptionEvent.
type Record struct {
	Key             Key
	UID             string
	ResourceVersion string
	Data            []byte
}

// Ref returns the record's entry for Hello.held_objects.
func (r *Record) Ref() *edgesyncv1.ObjectRef {
	return &edgesyncv1.ObjectRef{
		Kind:            r.Key.Kind,
		Namespace:       r.Key.Namespace,
		Name:            r.Key.Name,
		Uid:             r.UID,
		ResourceVersion: r.ResourceVersion,
	}
}

// Change puts Record under Key, or deletes Key when Record is nil.
type Change struct {
	Key    Key
	Record *Record
}

// Store holds the node's objects. Implementations are safe for concurrent
// use; Apply is atomic.
type Store interface {
	// Get returns the object held under key, or nil when there is none.
	Get(key Key) (*Record, error)
	// List returns the objects of kind, or of every kind for
	// KIND_UNSPECIFIED, ordered by kind, namespace and name.
	List(kind edgesyncv1.Kind) ([]*Record, error)
	// Refs lists what the store holds, without the objects' data.
	Refs() ([]*edgesyncv1.ObjectRef, error)
	// Apply makes all changes, or none of them, durable.
	Apply(changes []Change) error
	// Len counts the objects held.
	Len() int
	// Close releases the store.
	Close() error
}

// ErrClosed is returned by a closed store.
var ErrClosed = errors.New("store closed")

const recordFormat = 1

// encodeValue lays out a record as: format byte, uvarint length + uid,
// uvarint length + resourceVersion, data.
func encodeValue(r *Record) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(r.UID)+len(r.ResourceVersion)+len(r.Data))
	b = append(b, recordFormat)
	b = binary.AppendUvarint(b, uint64(len(r.UID)))
	b = append(b, r.UID...)
	b = binary.AppendUvarint(b, uint64(len(r.ResourceVersion)))
	b = append(b, r.ResourceVersion...)
	return append(b, r.Data...)
}

// decodeValue parses encodeValue's output. With withData false it skips
// the data; otherwise the data is copied out of b.
func decodeValue(key Key, b []byte, withData bool) (*Record, error) {
	if len(b) == 0 || b[0] != recordFormat {
		return nil, fmt.Errorf("record %s: unknown format", key)
	}
	rest := b[1:]
	field := func() (string, error) {
		n, k := binary.Uvarint(rest)
		if k <= 0 || uint64(len(rest)-k) < n {
			return "", fmt.Errorf("record %s: truncated", key)
		}
		s := string(rest[k : k+int(n)])
		rest = rest[k+int(n):]
		return s, nil
	}
	uid, err := field()
	if err != nil {
		return nil, err
	}
	rv, err := field()
	if err != nil {
		return nil, err
	}
	r := &Record{Key: key, UID: uid, ResourceVersion: rv}
	if withData {
		r.Data = append([]byte(nil), rest...)
	}
	return r, nil
}
