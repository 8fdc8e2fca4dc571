package localapi

import (
	"fmt"
	"strconv"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Resource is one kind of object the local API serves, with what may be
// done to it. The table of resources (Server.resources) is the whole of
// what the API serves: another kind is another entry, and its handlers.
type Resource struct {
	// GroupVersion, Plural and Kind name it as kube-apiserver does.
	GroupVersion schema.GroupVersion
	Plural       string
	Kind         string
	Namespaced   bool
	// New and NewList make the empty object and list of the kind.
	New     func() runtime.Object
	NewList func() runtime.Object
	// Fields are the selectable fields beyond metadata.name and
	// metadata.namespace, with their values for an object.
	Fields func(runtime.Object) fields.Set
	// FieldNames lists the keys Fields returns, for validating selectors.
	FieldNames []string
	// Read, when set, decides whether the caller may read the object
	// named (name is empty for a list or watch of a whole namespace or
	// of every one). Nil lets the node read all it holds.
	Read func(s *Server, req *Request) error
	// Writes are the write handlers by verb, or verb/subresource:
	// "create", "update", "patch", "delete", "patch/status",
	// "create/token".
	Writes map[string]Handler
	// Allow, when set, decides whether a caller other than the node's
	// kubelet (see Options.Authenticators) may make the request; nil
	// refuses them all (403). The kubelet needs no Allow.
	Allow func(s *Server, req *Request) error
	// NoReads: the resource has no get, list or watch (a kind the node
	// only writes, such as events).
	NoReads bool
}

// Handler serves one write verb of a resource.
type Handler func(s *Server, req *Request) (code int, obj runtime.Object, err error)

// ID is the resource's key in the cache: group/plural.
func (r *Resource) ID() string { return r.GroupVersion.Group + "/" + r.Plural }

// GroupResource names the resource in errors.
func (r *Resource) GroupResource() schema.GroupResource {
	return schema.GroupResource{Group: r.GroupVersion.Group, Resource: r.Plural}
}

// fieldSet is every selectable field of obj.
func (r *Resource) fieldSet(obj runtime.Object) fields.Set {
	set := fields.Set{}
	if r.Fields != nil {
		set = r.Fields(obj)
	}
	if m, ok := obj.(interface {
		GetName() string
		GetNamespace() string
	}); ok {
		set["metadata.name"] = m.GetName()
		if r.Namespaced {
			set["metadata.namespace"] = m.GetNamespace()
		}
	}
	return set
}

// selectable reports whether field may be used in a field selector.
func (r *Resource) selectable(field string) bool {
	if field == "metadata.name" || (field == "metadata.namespace" && r.Namespaced) {
		return true
	}
	for _, f := range r.FieldNames {
		if f == field {
			return true
		}
	}
	return false
}

// verbs lists the resource's verbs for discovery.
func (r *Resource) verbs() []string {
	var out []string
	if !r.NoReads {
		out = append(out, "get", "list", "watch")
	}
	for _, v := range []string{"create", "update", "patch", "delete"} {
		if r.Writes[v] != nil {
			out = append(out, v)
		}
	}
	return out
}

var (
	coreV1         = corev1.SchemeGroupVersion
	coordinationV1 = coordinationv1.SchemeGroupVersion
	storageV1      = storagev1.SchemeGroupVersion
	nodeV1         = nodev1.SchemeGroupVersion
)

// builtinResources is what a stock kubelet needs, and how each is
// served (see the package documentation).
func builtinResources() []*Resource {
	return []*Resource{
		{
			GroupVersion: coreV1, Plural: "pods", Kind: "Pod", Namespaced: true,
			New: func() runtime.Object { return &corev1.Pod{} }, NewList: func() runtime.Object { return &corev1.PodList{} },
			FieldNames: []string{"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
				"spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
			Fields: func(o runtime.Object) fields.Set {
				p := o.(*corev1.Pod)
				return fields.Set{
					"spec.nodeName": p.Spec.NodeName, "spec.restartPolicy": string(p.Spec.RestartPolicy),
					"spec.schedulerName": p.Spec.SchedulerName, "spec.serviceAccountName": p.Spec.ServiceAccountName,
					"spec.hostNetwork": strconv.FormatBool(p.Spec.HostNetwork), "status.phase": string(p.Status.Phase),
					"status.podIP": p.Status.PodIP, "status.nominatedNodeName": p.Status.NominatedNodeName,
				}
			},
			Writes: map[string]Handler{"create": refuseMirrorPod, "patch/status": patchPodStatus, "update/status": updatePodStatus, "delete": deletePod},
		},
		{
			GroupVersion: coreV1, Plural: "nodes", Kind: "Node",
			New: func() runtime.Object { return &corev1.Node{} }, NewList: func() runtime.Object { return &corev1.NodeList{} },
			FieldNames: []string{"spec.unschedulable"},
			Fields: func(o runtime.Object) fields.Set {
				return fields.Set{"spec.unschedulable": strconv.FormatBool(o.(*corev1.Node).Spec.Unschedulable)}
			},
			Writes: map[string]Handler{"create": createNode, "patch/status": patchNodeStatus, "update/status": updateNodeStatus},
		},
		{
			GroupVersion: coreV1, Plural: "configmaps", Kind: "ConfigMap", Namespaced: true,
			New: func() runtime.Object { return &corev1.ConfigMap{} }, NewList: func() runtime.Object { return &corev1.ConfigMapList{} },
			Read: readReferenced,
		},
		{
			GroupVersion: coreV1, Plural: "secrets", Kind: "Secret", Namespaced: true,
			New: func() runtime.Object { return &corev1.Secret{} }, NewList: func() runtime.Object { return &corev1.SecretList{} },
			FieldNames: []string{"type"},
			Fields:     func(o runtime.Object) fields.Set { return fields.Set{"type": string(o.(*corev1.Secret).Type)} },
			Read:       readReferenced,
		},
		{
			GroupVersion: coreV1, Plural: "services", Kind: "Service", Namespaced: true,
			New: func() runtime.Object { return &corev1.Service{} }, NewList: func() runtime.Object { return &corev1.ServiceList{} },
			FieldNames: []string{"spec.clusterIP", "spec.type"},
			Fields: func(o runtime.Object) fields.Set {
				s := o.(*corev1.Service)
				return fields.Set{"spec.clusterIP": s.Spec.ClusterIP, "spec.type": string(s.Spec.Type)}
			},
		},
		{
			GroupVersion: coreV1, Plural: "serviceaccounts", Kind: "ServiceAccount", Namespaced: true, NoReads: true,
			New: func() runtime.Object { return &corev1.ServiceAccount{} }, NewList: func() runtime.Object { return &corev1.ServiceAccountList{} },
			Writes: map[string]Handler{"create/token": createToken},
		},
		{
			GroupVersion: coreV1, Plural: "events", Kind: "Event", Namespaced: true, NoReads: true,
			New: func() runtime.Object { return &corev1.Event{} }, NewList: func() runtime.Object { return &corev1.EventList{} },
			Writes: map[string]Handler{"create": createEvent, "patch": patchEvent},
		},
		{
			GroupVersion: coordinationV1, Plural: "leases", Kind: "Lease", Namespaced: true,
			New: func() runtime.Object { return &coordinationv1.Lease{} }, NewList: func() runtime.Object { return &coordinationv1.LeaseList{} },
			Read:   readOwnLease,
			Writes: map[string]Handler{"create": createLease, "update": updateLease, "patch": patchLease},
		},
		{
			GroupVersion: storageV1, Plural: "csinodes", Kind: "CSINode",
			New: func() runtime.Object { return &storagev1.CSINode{} }, NewList: func() runtime.Object { return &storagev1.CSINodeList{} },
			Read:   readOwnCSINode,
			Writes: map[string]Handler{"create": createCSINode, "update": updateCSINode, "patch": patchCSINode},
		},
		// Kinds edgesync does not carry: served as in a cluster where
		// none exists, so that the kubelet's informers sync.
		{
			GroupVersion: storageV1, Plural: "csidrivers", Kind: "CSIDriver",
			New: func() runtime.Object { return &storagev1.CSIDriver{} }, NewList: func() runtime.Object { return &storagev1.CSIDriverList{} },
		},
		{
			GroupVersion: nodeV1, Plural: "runtimeclasses", Kind: "RuntimeClass",
			New: func() runtime.Object { return &nodev1.RuntimeClass{} }, NewList: func() runtime.Object { return &nodev1.RuntimeClassList{} },
		},
		// The agent renews the node's certificate itself.
		{
			GroupVersion: schema.GroupVersion{Group: "certificates.k8s.io", Version: "v1"}, Plural: "certificatesigningrequests",
			Kind: "CertificateSigningRequest", NoReads: true,
			Writes: map[string]Handler{"create": refuseCSR},
		},
	}
}

// String names the resource for logs.
func (r *Resource) String() string {
	return fmt.Sprintf("%s.%s", r.Plural, r.GroupVersion)
}
