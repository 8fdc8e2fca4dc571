// Package localapi is the Kubernetes API of an edge node, served by the
// edgesync agent to the node's own kubelet on loopback: the stock kubelet
// runs the node's pods against it as it would against kube-apiserver, and
// never talks to the cloud. Reads are served from what the node holds
// (the edgeclient store, kept current by the Sync stream through
// OnEvent), so they work offline; writes become the typed reports the
// edgeclient already carries, answered from the cloud's StatusResult.
//
// It speaks the apiserver's protocol with apimachinery's own machinery:
// JSON, YAML and protobuf (client-go's codecs, chosen from Accept and
// Content-Type); list and watch with resourceVersion, bookmarks and
// streaming lists (sendInitialEvents, on by default in client-go 1.35),
// encoded by client-go's watch encoder; errors as metav1.Status with the
// apiserver's HTTP codes; discovery (/api, /apis, /version, /healthz).
//
// # Versions
//
// Every object is served at a local resourceVersion: one counter for the
// node, like etcd's revision, starting at the agent's start time in
// microseconds, so a version a client saw before a restart is older than
// any after it (a watch from it is answered 410 Gone and the client
// lists again). The last 1024 changes are kept for watches that resume.
//
// # What is served
//
//	pods              get/list/watch: the pods bound to the node (fieldSelector spec.nodeName works);
//	                  the status is the one the kubelet last wrote (the cloud does not echo it).
//	                  PATCH/PUT pods/NAME/status -> pod status report (strategic merge applied to the held pod;
//	                  metadata.uid in the patch is a precondition, 409 on mismatch).
//	                  DELETE pods/NAME (the kubelet, once a pod the cloud deletes has stopped) -> the pod's
//	                  last status, made terminal, reported as the simulated runtime does; the cloud then
//	                  deletes the pod. A pod the cloud is not deleting: 403. POST (mirror pods): 403.
//	nodes             get/list/watch: the node's own Node (metadata and spec from the cloud, status from the
//	                  kubelet). POST -> node registration; PATCH/PUT nodes/NAME/status -> node status.
//	                  Another node: 403 for writes, 404 for reads.
//	configmaps,       get, or list/watch with fieldSelector metadata.name=NAME: only while a held pod uses
//	secrets           the object (403 otherwise, as the Node authorizer; 404 when used but not held).
//	services          get/list/watch: the Services the node holds. With Options.ApplicationsAddress,
//	                  default/kubernetes is a synthetic Service at that address, and every
//	                  kube-root-ca.crt ConfigMap carries the local API's CA after the cluster's
//	                  (incluster.go): how pods' rest.InClusterConfig finds and trusts the local API.
//	serviceaccounts/  POST (TokenRequest) -> the token the cloud pushed for that pod and audience.
//	token             Another pod, or another ServiceAccount than the pod's: 403.
//	events            POST -> event report, about the node or a held pod (403 otherwise); PATCH: 404, so the
//	                  kubelet's recorder creates the event again.
//	leases            the node's own Lease in kube-node-lease, kept on the node: create/update/patch -> heartbeat.
//	csinodes          the node's own CSINode, kept on the node (the kubelet needs one to start).
//	csidrivers,       served as in a cluster where none exists: empty lists, 404 on get.
//	runtimeclasses
//	certificatesigningrequests  POST: 403 (the agent renews the node's certificate itself).
//
// Anything else is 404, as for a group or resource a cluster does not
// serve.
//
// # Extending it
//
// What is served is a table of Resources (builtinResources): each names
// its group, version and kind, its selectable fields, who may read what
// (Read) and a Handler per write verb. Server.AddResource adds or replaces
// one; its objects are put in the same cache (and so listed and watched
// at the same versions). Callers other than the kubelet (edge
// applications with ServiceAccount tokens, say) are identified by
// Options.Authenticators and admitted per resource by Resource.Allow;
// the kubelet's resources admit nobody else. The node's pods' own programs
// (Options.Applications) read any resource through the node's
// subscriptions with the token the pod mounts (apps.go).
//
// # Offline
//
// Reads are served from the store and the local overlays as when online.
// A write waits for the cloud's answer only while the node is connected,
// and at most Options.WriteTimeout; offline (or when the answer is late)
// it is answered as accepted from the report queued in the edgeclient
// (latest per object, sent on reconnect), and the served object already
// shows the write:
//
//	node create       201, the Node as the kubelet sent it; registered on reconnect.
//	node status       200, the patched Node; the latest status is reported on reconnect.
//	lease             201/200, the Lease; the client heartbeats as soon as it reconnects.
//	pod status        200, the patched pod; the latest status per pod is reported on reconnect.
//	pod delete        200; the terminal status is reported on reconnect, and the pod stays until the cloud
//	                  deletes it (the kubelet asks again meanwhile; harmless).
//	events            201; kept in the edgeclient's bounded event buffer (oldest dropped beyond it).
//	token request     201 with the held token, valid or not: the cloud refreshes tokens only while connected.
//
// # Authentication
//
// The local API listens on loopback, but loopback is shared by every
// user and every host-network pod of the machine, and a Secret must not be
// readable by them. So every connection is TLS with a client certificate
// verified against a CA private to the node (EnsureCredentials generates
// it, keys 0600 in a 0700 directory the agent owns), and the certificate
// must name the node's kubelet (CN system:node:NODE). A client
// certificate rather than a bearer token: nothing secret crosses the
// connection, the kubelet also verifies the server against the same CA (a
// process squatting the port before the agent starts learns nothing), and
// the kubelet's kubeconfig refers to files the agent may renew in place.
package localapi
