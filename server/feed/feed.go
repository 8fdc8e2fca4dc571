// Package feed is the one small contract between the controllers, which know
// Kubernetes, and the sync server, which knows sessions, queues and the wire.
//
// Controllers encode each object version once into an Object and Publish it
// to the nodes that should hold it; the server prepends each session's
// sequence number to the same bytes. The server asks the controllers what a
// node should hold (Source) when the node connects, and hands them the
// node's reports (Reporter). Two optional interfaces carry who may connect:
// the server asks the controllers to admit a node (Admitter) at Hello, and
// the controllers end a node's session (SessionEnder) when the node may no
// longer hold one. With several replicas, two more carry who owns a node:
// the server has the controllers claim it at Hello (Claimer) and asks them
// who owns the others (Directory). Neither side imports the other's
// internals. Controllers refuse with errors of a kind (ErrorKind, Errorf)
// and build no gRPC statuses: the server turns kinds into codes.
package feed

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	corev1pb "github.com/edgesync/edgesync/gen/k8s/api/core/v1"
	discoveryv1pb "github.com/edgesync/edgesync/gen/k8s/api/discovery/v1"
	metav1pb "github.com/edgesync/edgesync/gen/k8s/apimachinery/meta/v1"
)

// Key names one object on a node: latest-wins queues are keyed by it.
type Key struct {
	Kind      edgesyncv1.Kind
	Namespace string
	Name      string
}

func (k Key) String() string {
	return fmt.Sprintf("%s %s/%s", k.Kind, k.Namespace, k.Name)
}

// Object is one encoded event for one object version, shared read-only by
// every session that sends it.
type Object struct {
	Key             Key
	UID             string
	ResourceVersion string
	// Deleted is true for a DELETE event.
	Deleted bool
	// Payload is an edgesync.v1.SyncResponse with sequence 0 and one event
	// set, encoded once. A session sends its own sequence field followed by
	// these bytes, which decodes as the same message with that sequence.
	Payload []byte
}

// Encode serializes msg (sequence 0, one event set) into an Object.
func Encode(key Key, uid, resourceVersion string, deleted bool, msg *edgesyncv1.SyncResponse) (*Object, error) {
	if msg.GetSequence() != 0 {
		return nil, fmt.Errorf("encode %s: sequence must be 0, sessions set their own", key)
	}
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", key, err)
	}
	return &Object{Key: key, UID: uid, ResourceVersion: resourceVersion, Deleted: deleted, Payload: payload}, nil
}

// Tombstone encodes the DELETE event for the object key names: an event of
// its kind that carries only the object's namespace, name and (when known)
// uid, as the protocol documents.
func Tombstone(key Key, uid string) (*Object, error) {
	meta := &metav1pb.ObjectMeta{Namespace: proto.String(key.Namespace), Name: proto.String(key.Name)}
	if uid != "" {
		meta.Uid = proto.String(uid)
	}
	del := edgesyncv1.EventType_EVENT_TYPE_DELETE
	msg := &edgesyncv1.SyncResponse{}
	switch key.Kind {
	case edgesyncv1.Kind_KIND_POD:
		msg.Message = &edgesyncv1.SyncResponse_PodEvent{PodEvent: &edgesyncv1.PodEvent{Type: del, Pod: &corev1pb.Pod{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_CONFIG_MAP:
		msg.Message = &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{Type: del, ConfigMap: &corev1pb.ConfigMap{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_SECRET:
		msg.Message = &edgesyncv1.SyncResponse_SecretEvent{SecretEvent: &edgesyncv1.SecretEvent{Type: del, Secret: &corev1pb.Secret{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_DEVICE:
		msg.Message = &edgesyncv1.SyncResponse_DeviceEvent{DeviceEvent: &edgesyncv1.DeviceEvent{Type: del, Device: &edgesyncv1.Device{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_NODE:
		msg.Message = &edgesyncv1.SyncResponse_NodeEvent{NodeEvent: &edgesyncv1.NodeEvent{Type: del, Node: &corev1pb.Node{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN:
		msg.Message = &edgesyncv1.SyncResponse_TokenEvent{TokenEvent: &edgesyncv1.TokenEvent{Type: del, Token: &edgesyncv1.ServiceAccountToken{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_SERVICE:
		msg.Message = &edgesyncv1.SyncResponse_ServiceEvent{ServiceEvent: &edgesyncv1.ServiceEvent{Type: del, Service: &corev1pb.Service{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_ENDPOINT_SLICE:
		msg.Message = &edgesyncv1.SyncResponse_EndpointSliceEvent{EndpointSliceEvent: &edgesyncv1.EndpointSliceEvent{Type: del, EndpointSlice: &discoveryv1pb.EndpointSlice{Metadata: meta}}}
	case edgesyncv1.Kind_KIND_SUBSCRIPTION:
		msg.Message = &edgesyncv1.SyncResponse_SubscriptionEvent{SubscriptionEvent: &edgesyncv1.SubscriptionEvent{Type: del, Metadata: meta}}
	case edgesyncv1.Kind_KIND_RESOURCE:
		// The key's name is "<apiVersion>/<resource>/<name>": the event
		// names the object by its own name and the resource apart.
		gv, resource, name, ok := SplitResourceName(key.Name)
		if !ok {
			return nil, fmt.Errorf("no DELETE event for %s: the name is not <apiVersion>/<resource>/<name>", key)
		}
		meta.Name = proto.String(name)
		group, version := "", gv
		if i := strings.LastIndexByte(gv, '/'); i >= 0 {
			group, version = gv[:i], gv[i+1:]
		}
		msg.Message = &edgesyncv1.SyncResponse_ResourceEvent{ResourceEvent: &edgesyncv1.ResourceEvent{Type: del, Metadata: meta, Group: group, Version: version, Resource: resource}}
	default:
		return nil, fmt.Errorf("no DELETE event for %s: unknown kind", key)
	}
	return Encode(key, uid, "", true, msg)
}

// ResourceName is the name of a KIND_RESOURCE key: the object's
// "<apiVersion>/<resource>/<name>" ("apps/v1/deployments/web",
// "v1/configmaps/settings").
func ResourceName(group, version, resource, name string) string {
	if group == "" {
		return version + "/" + resource + "/" + name
	}
	return group + "/" + version + "/" + resource + "/" + name
}

// SplitResourceName takes a KIND_RESOURCE key's name apart into the
// apiVersion, the resource and the object's name.
func SplitResourceName(keyName string) (apiVersion, resource, name string, ok bool) {
	i := strings.LastIndexByte(keyName, '/')
	if i <= 0 {
		return "", "", "", false
	}
	j := strings.LastIndexByte(keyName[:i], '/')
	if j <= 0 || i-j < 2 || i == len(keyName)-1 {
		return "", "", "", false
	}
	return keyName[:j], keyName[j+1 : i], keyName[i+1:], true
}

// Publisher delivers objects to the nodes connected to this replica. The
// server implements it; controllers call it from their workers.
type Publisher interface {
	// Publish queues obj for node, replacing whatever is queued for the same
	// key and not yet sent. A node not connected here ignores it: it gets
	// the difference from Source when it connects.
	Publish(node string, obj *Object)
}

// SessionEnder may be implemented by a Publisher that holds sessions (the
// server does). Controllers use it when a node may no longer hold a
// session, such as when its Node is deleted.
type SessionEnder interface {
	// EndSession ends node's session on this replica, if it has one, with
	// reason as the status the edge receives: an error of a kind (Errorf)
	// with a message the edge's operator can act on. An error without a
	// kind ends it with UNAVAILABLE.
	EndSession(node string, reason error)
}

// Messenger may be implemented by a Publisher that holds sessions (the
// server does). It carries messages that are not objects to a node's
// session on this replica: routed application messages (RouteDelivery,
// RouteSubscriptions; package controllers/router), which are ordered and
// answered one by one rather than latest-wins.
type Messenger interface {
	// SendMessage queues msg on node's session here, ahead of objects and
	// outside their window: the caller bounds how many it leaves
	// unanswered. An error says node holds no session here.
	SendMessage(node string, msg *edgesyncv1.SyncResponse) error
}

// RouteResulter may be implemented by Controllers that send RouteDelivery
// through a Messenger: the server hands them every RouteResult a node
// sends, with the node's verified name.
type RouteResulter interface {
	RouteResult(node string, res *edgesyncv1.RouteResult)
}

// Source answers what a node should hold, from informer caches and without
// calling the API server. Controllers implement it.
type Source interface {
	// Desired returns every object node should hold now.
	Desired(node string) ([]*Object, error)
	// Tombstone returns the DELETE event for an object the node holds but
	// Desired did not return; nil (and no error) when the node should keep
	// what it holds until a newer version is published (a value the
	// controllers are still obtaining, such as a ServiceAccount token).
	Tombstone(key Key, uid string) (*Object, error)
}

// Answer delivers the outcome of one report to the node's session; it is
// dropped when the session has ended (the edge sends the report again).
// Controllers build it with Result.
type Answer func(*edgesyncv1.StatusResult)

// Reporter applies the reports edges send. Controllers implement it.
type Reporter interface {
	// HandleReport takes one report (node registration, node status,
	// heartbeat, pod status, device status, event) from node, whose identity the
	// server has verified. It must not block on the API server: it queues
	// the work and calls answer exactly once, from any goroutine.
	HandleReport(node string, req *edgesyncv1.SyncRequest, answer Answer)
	// SessionEnded tells that node has no session here any more, so that
	// per-node work (such as renewing its Lease) stops.
	SessionEnded(node string)
}

// Admitter may be implemented by Controllers that decide which nodes may
// hold a session. The server calls Admit once per session, after the
// node's Hello and before the session replaces an older one of the same
// node, with the node name of the verified certificate. It must answer
// from caches, without calling the API server. A non-nil error refuses the
// session with the code of the error's kind (UNAVAILABLE when it has none),
// so it must say what the edge's operator can do about it.
type Admitter interface {
	Admit(node string) error
}

// Claimer may be implemented by Controllers when several replicas serve
// the same nodes. The server calls Claim once per session, after Admit,
// while the session's initial sync runs (Desired and sending need no
// ownership: they write nothing to the API server), and hands the node's
// reports to HandleReport only once Claim returned nil, in the order they
// arrived: the controllers make this replica the node's only writer (a
// record in the API server; the one call a connect may make) and, once
// another replica takes the node over, end this replica's session of it
// through SessionEnder. Claim may take as long as the previous owner needs
// to hand the node over, or its ownership to expire when it died; ctx ends
// with the session. A non-nil error ends the session with the code of its
// kind (UNAVAILABLE when it has none); the reports it held were never answered,
// so the edge sends them again on its next stream.
type Claimer interface {
	Claim(ctx context.Context, node string) error
}

// Adopter may be implemented by Controllers that can take over what a
// connecting node already holds instead of making it anew: ServiceAccount
// tokens, which a replica that restarted or took the node over would
// otherwise request again for every pod and send as new versions. The
// server calls Adopt with the objects the Hello reports held, on every
// session, before Desired; an object adopted this way need not be returned
// by Desired (Tombstone must then keep it at the edge). It must not call
// the API server.
type Adopter interface {
	Adopt(node string, held []*edgesyncv1.ObjectRef)
}

// Subscriber may be implemented by Controllers that serve the resources
// edges subscribe to (Hello.subscriptions). The server calls Subscribe
// with the Hello's subscriptions on every session, before Desired (after
// Adopt), and SessionEnded when the session is gone. Desired then returns
// the objects of the subscriptions already known to be allowed, and
// Tombstone keeps (nil) what the node holds for the others until they are
// decided. It must not call the API server: what it must ask (a
// SubjectAccessReview) it asks later and publishes the outcome.
type Subscriber interface {
	Subscribe(node string, subs []*edgesyncv1.Subscription)
}

// Directory may be implemented by Controllers that know which replica owns
// each node (the records Claimer keeps), so that AdminService answers for
// every replica of a deployment.
type Directory interface {
	// Owners returns the replica owning each node that has an owner.
	Owners() map[string]string
	// Release takes node from whichever replica owns it, which then ends
	// its session with UNAVAILABLE and reason; the node goes to the replica
	// it connects to next.
	Release(ctx context.Context, node, reason string) error
}

// Syncer may be implemented by Controllers whose answers are valid only
// once their caches have loaded. The server then reports NOT_SERVING (gRPC
// health, /readyz) until Synced is closed, so that load balancers and
// edges wait instead of connecting to a replica that cannot serve them yet.
type Syncer interface {
	Synced() <-chan struct{}
}

// Controllers is everything the server needs from the controllers.
type Controllers interface {
	Source
	Reporter
}
