package edgeclient

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
)

// Key names one object on the node.
type Key = store.Key

// Device is a device bound to the node with its model (nil when the model
// does not exist yet).
type Device struct {
	Device *edgesyncv1.Device
	Model  *edgesyncv1.DeviceModel
}

// Object is one held object; exactly one field is set, according to its kind.
type Object struct {
	Pod       *corev1.Pod
	ConfigMap *corev1.ConfigMap
	Secret    *corev1.Secret
	Device    *Device
	// Node is the node's own Node, without its status (the edge reports
	// it).
	Node *corev1.Node
	// Service is a Service opted in for edges.
	Service *corev1.Service
	// EndpointSlice is an EndpointSlice of a held Service, holding only
	// the endpoints this node routes to.
	EndpointSlice *discoveryv1.EndpointSlice
	// Token is a ServiceAccount token a pod on the node mounts. It is a
	// credential: never log Token.Token.
	Token *edgesyncv1.ServiceAccountToken
	// Resource is an object of a resource the node subscribed to, its
	// JSON in Resource.Object (see Client.Subscribe).
	Resource *edgesyncv1.ResourceEvent
	// Subscription is the state of one of the node's subscriptions.
	Subscription *edgesyncv1.SubscriptionEvent
}

// k8sMessage is a k8s.io/api type, which encodes to the same protobuf bytes
// as the corresponding gen/k8s type.
type k8sMessage interface {
	Unmarshal([]byte) error
}

// Decode turns a stored record into its typed object.
func Decode(r *store.Record) (Object, error) {
	var (
		obj Object
		msg k8sMessage
	)
	switch r.Key.Kind {
	case edgesyncv1.Kind_KIND_POD:
		obj.Pod = &corev1.Pod{}
		msg = obj.Pod
	case edgesyncv1.Kind_KIND_CONFIG_MAP:
		obj.ConfigMap = &corev1.ConfigMap{}
		msg = obj.ConfigMap
	case edgesyncv1.Kind_KIND_SECRET:
		obj.Secret = &corev1.Secret{}
		msg = obj.Secret
	case edgesyncv1.Kind_KIND_NODE:
		obj.Node = &corev1.Node{}
		msg = obj.Node
	case edgesyncv1.Kind_KIND_SERVICE:
		obj.Service = &corev1.Service{}
		msg = obj.Service
	case edgesyncv1.Kind_KIND_ENDPOINT_SLICE:
		obj.EndpointSlice = &discoveryv1.EndpointSlice{}
		msg = obj.EndpointSlice
	case edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN:
		obj.Token = &edgesyncv1.ServiceAccountToken{}
		if err := proto.Unmarshal(r.Data, obj.Token); err != nil {
			return Object{}, fmt.Errorf("decode %s: %w", r.Key, err)
		}
		return obj, nil
	case edgesyncv1.Kind_KIND_RESOURCE:
		obj.Resource = &edgesyncv1.ResourceEvent{}
		if err := proto.Unmarshal(r.Data, obj.Resource); err != nil {
			return Object{}, fmt.Errorf("decode %s: %w", r.Key, err)
		}
		return obj, nil
	case edgesyncv1.Kind_KIND_SUBSCRIPTION:
		obj.Subscription = &edgesyncv1.SubscriptionEvent{}
		if err := proto.Unmarshal(r.Data, obj.Subscription); err != nil {
			return Object{}, fmt.Errorf("decode %s: %w", r.Key, err)
		}
		return obj, nil
	case edgesyncv1.Kind_KIND_DEVICE:
		var ev edgesyncv1.DeviceEvent
		if err := proto.Unmarshal(r.Data, &ev); err != nil {
			return Object{}, fmt.Errorf("decode %s: %w", r.Key, err)
		}
		obj.Device = &Device{Device: ev.GetDevice(), Model: ev.GetModel()}
		return obj, nil
	default:
		return Object{}, fmt.Errorf("decode %s: unknown kind", r.Key)
	}
	if err := msg.Unmarshal(r.Data); err != nil {
		return Object{}, fmt.Errorf("decode %s: %w", r.Key, err)
	}
	return obj, nil
}

// objectEvent is an object event taken apart: the key, and the record to
// hold (nil for DELETE).
type objectEvent struct {
	key    store.Key
	record *store.Record
}

// splitEvent extracts the object event of msg; ok is false for control
// messages.
func splitEvent(msg *edgesyncv1.SyncResponse) (ev objectEvent, ok bool, err error) {
	var (
		kind   edgesyncv1.Kind
		typ    edgesyncv1.EventType
		meta   *metav1pb.ObjectMeta
		object proto.Message
	)
	switch m := msg.GetMessage().(type) {
	case *edgesyncv1.SyncResponse_PodEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_POD, m.PodEvent.GetType(), m.PodEvent.GetPod().GetMetadata(), m.PodEvent.GetPod()
	case *edgesyncv1.SyncResponse_ConfigMapEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_CONFIG_MAP, m.ConfigMapEvent.GetType(), m.ConfigMapEvent.GetConfigMap().GetMetadata(), m.ConfigMapEvent.GetConfigMap()
	case *edgesyncv1.SyncResponse_SecretEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_SECRET, m.SecretEvent.GetType(), m.SecretEvent.GetSecret().GetMetadata(), m.SecretEvent.GetSecret()
	case *edgesyncv1.SyncResponse_DeviceEvent:
		kind, typ, meta = edgesyncv1.Kind_KIND_DEVICE, m.DeviceEvent.GetType(), m.DeviceEvent.GetDevice().GetMetadata()
		object = &edgesyncv1.DeviceEvent{Device: m.DeviceEvent.GetDevice(), Model: m.DeviceEvent.GetModel()}
	case *edgesyncv1.SyncResponse_NodeEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_NODE, m.NodeEvent.GetType(), m.NodeEvent.GetNode().GetMetadata(), m.NodeEvent.GetNode()
	case *edgesyncv1.SyncResponse_ServiceEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_SERVICE, m.ServiceEvent.GetType(), m.ServiceEvent.GetService().GetMetadata(), m.ServiceEvent.GetService()
	case *edgesyncv1.SyncResponse_EndpointSliceEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_ENDPOINT_SLICE, m.EndpointSliceEvent.GetType(), m.EndpointSliceEvent.GetEndpointSlice().GetMetadata(), m.EndpointSliceEvent.GetEndpointSlice()
	case *edgesyncv1.SyncResponse_TokenEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN, m.TokenEvent.GetType(), m.TokenEvent.GetToken().GetMetadata(), m.TokenEvent.GetToken()
	case *edgesyncv1.SyncResponse_ResourceEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_RESOURCE, m.ResourceEvent.GetType(), m.ResourceEvent.GetMetadata(), m.ResourceEvent
	case *edgesyncv1.SyncResponse_SubscriptionEvent:
		kind, typ, meta, object = edgesyncv1.Kind_KIND_SUBSCRIPTION, m.SubscriptionEvent.GetType(), m.SubscriptionEvent.GetMetadata(), m.SubscriptionEvent
	default:
		return objectEvent{}, false, nil
	}
	ev.key = store.Key{Kind: kind, Namespace: meta.GetNamespace(), Name: meta.GetName()}
	if r := msg.GetResourceEvent(); r != nil && meta.GetName() != "" {
		// Held under "<apiVersion>/<resource>/<name>", as the cloud keys it.
		ev.key = ResourceKey(r.GetGroup(), r.GetVersion(), r.GetResource(), meta.GetNamespace(), meta.GetName())
		if r.GetVersion() == "" || r.GetResource() == "" {
			return ev, true, fmt.Errorf("%s event without version and resource", store.KindName(kind))
		}
	}
	if ev.key.Name == "" {
		return ev, true, fmt.Errorf("%s event without metadata.name", store.KindName(kind))
	}
	switch typ {
	case edgesyncv1.EventType_EVENT_TYPE_DELETE:
		return ev, true, nil
	case edgesyncv1.EventType_EVENT_TYPE_APPLY:
	default:
		return ev, true, fmt.Errorf("%s: unknown event type %v", ev.key, typ)
	}
	data, err := proto.Marshal(object)
	if err != nil {
		return ev, true, fmt.Errorf("encode %s: %w", ev.key, err)
	}
	ev.record = &store.Record{Key: ev.key, UID: meta.GetUid(), ResourceVersion: meta.GetResourceVersion(), Data: data}
	// What the node holds must decode for the agent: an object that does
	// not is refused (a Nack), never stored where it would break every
	// List of its kind (found by FuzzSyncResponse).
	if _, err := Decode(ev.record); err != nil {
		return ev, true, fmt.Errorf("%s does not decode as a Kubernetes object: %w", ev.key, err)
	}
	return ev, true, nil
}

// toProto converts a k8s.io/api value to its gen/k8s counterpart.
func toProto(src interface{ Marshal() ([]byte, error) }, dst proto.Message) error {
	b, err := src.Marshal()
	if err != nil {
		return err
	}
	return proto.Unmarshal(b, dst)
}
