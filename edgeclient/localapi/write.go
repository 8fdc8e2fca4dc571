package localapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/edgesync/edgesync/edgeclient"
)

// write serves create, update, patch and delete through the resource's
// handler for the verb (and subresource).
func (s *Server) write(w http.ResponseWriter, req *Request) {
	r := req.HTTP
	key := req.Verb
	if req.Subresource != "" {
		key += "/" + req.Subresource
	}
	h := req.Resource.Writes[key]
	if h == nil {
		writeError(w, r, apierrors.NewMethodNotSupported(req.Resource.GroupResource(), key))
		return
	}
	code, obj, err := h(s, req)
	if err != nil {
		if _, ok := err.(apierrors.APIStatus); !ok {
			s.log.Warn("local API write failed", zapRequest(req), zapError(err))
		}
		writeError(w, r, err)
		return
	}
	info, ok := negotiate(r, false)
	if !ok {
		writeError(w, r, notAcceptable())
		return
	}
	gvks, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		writeError(w, r, err)
		return
	}
	writeObject(w, info, gvks[0].GroupVersion(), code, obj)
}

// reportError turns the cloud's refusal of a report into the apiserver's
// error for the request.
func reportError(req *Request, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, edgeclient.ErrClosed) {
			return apierrors.NewServiceUnavailable("the edgesync agent is stopping")
		}
		return apierrors.NewInternalError(err)
	}
	msg := "edgesync: " + st.Message()
	gr := req.Resource.GroupResource()
	switch st.Code() {
	case codes.NotFound:
		e := apierrors.NewNotFound(gr, req.Name)
		e.ErrStatus.Message = msg
		return e
	case codes.PermissionDenied:
		return apierrors.NewForbidden(gr, req.Name, errors.New(msg))
	case codes.InvalidArgument:
		return apierrors.NewBadRequest(msg)
	case codes.AlreadyExists:
		e := apierrors.NewAlreadyExists(gr, req.Name)
		e.ErrStatus.Message = msg
		return e
	case codes.FailedPrecondition, codes.Aborted:
		return apierrors.NewConflict(gr, req.Name, errors.New(msg))
	case codes.ResourceExhausted:
		return apierrors.NewTooManyRequests(msg, 1)
	case codes.Unavailable, codes.DeadlineExceeded:
		return apierrors.NewServiceUnavailable(msg)
	}
	return apierrors.NewInternalError(errors.New(msg))
}

// awaitReport answers a write from its report: the cloud's refusal as the
// matching API error, or nil once accepted or queued (see Server.wait).
func (s *Server) awaitReport(req *Request, w waiter, err error) error {
	if err != nil {
		return apierrors.NewInternalError(fmt.Errorf("queue report: %w", err))
	}
	answered, err := s.wait(req.HTTP.Context(), w)
	if err != nil {
		return reportError(req, err)
	}
	if !answered {
		s.log.Debug("local API write answered from the queue", zapRequest(req))
	}
	return nil
}

// applyPatch applies the request's patch (strategic merge, JSON merge or
// JSON patch, by Content-Type) to current and decodes the result into
// into, an empty object of the same type.
func applyPatch(req *Request, current, into runtime.Object) error {
	mediaType, _, err := mime.ParseMediaType(req.HTTP.Header.Get("Content-Type"))
	if err != nil {
		return apierrors.NewBadRequest("a patch needs a Content-Type")
	}
	patch, err := readBody(req.HTTP)
	if err != nil {
		return err
	}
	original, err := json.Marshal(current)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	var patched []byte
	switch types.PatchType(mediaType) {
	case types.StrategicMergePatchType:
		patched, err = strategicpatch.StrategicMergePatch(original, patch, into)
	case types.MergePatchType:
		patched, err = jsonpatch.MergePatch(original, patch)
	case types.JSONPatchType:
		var p jsonpatch.Patch
		if p, err = jsonpatch.DecodePatch(patch); err == nil {
			patched, err = p.Apply(original)
		}
	default:
		return apierrors.NewGenericServerResponse(http.StatusUnsupportedMediaType, "patch", req.Resource.GroupResource(), req.Name,
			fmt.Sprintf("the local API accepts strategic merge, JSON merge and JSON patches, not %q", mediaType), 0, false)
	}
	if err != nil {
		return apierrors.NewBadRequest(fmt.Sprintf("the patch does not apply: %v", err))
	}
	if err := json.Unmarshal(patched, into); err != nil {
		return apierrors.NewBadRequest(fmt.Sprintf("the patched object does not decode: %v", err))
	}
	return nil
}

// preconditionUID refuses a write whose uid does not match the object's,
// as the apiserver does.
func preconditionUID(req *Request, want, have types.UID) error {
	if want == "" || want == have {
		return nil
	}
	return apierrors.NewConflict(req.Resource.GroupResource(), req.Name, fmt.Errorf(
		"the UID in the precondition (%s) does not match the UID in record (%s). The object might have been deleted and then recreated", want, have))
}

// --- pods ---

// heldPod returns the pod the node holds under the request's name, as
// served (with the kubelet's status), or 404.
func (s *Server) heldPod(req *Request) (held, served *corev1.Pod, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held = s.pods[types.NamespacedName{Namespace: req.Namespace, Name: req.Name}]
	if held == nil {
		return nil, nil, apierrors.NewNotFound(req.Resource.GroupResource(), req.Name)
	}
	return held, s.servedPod(held), nil
}

// setPodStatus serves st as the status of the held pod, reports it, and
// answers with the pod as served.
func (s *Server) setPodStatus(req *Request, held *corev1.Pod, st *corev1.PodStatus) (*corev1.Pod, error) {
	s.mu.Lock()
	if cur := s.pods[types.NamespacedName{Namespace: held.Namespace, Name: held.Name}]; cur == nil || cur.UID != held.UID {
		s.mu.Unlock()
		return nil, apierrors.NewNotFound(req.Resource.GroupResource(), req.Name)
	}
	s.podStatus[held.UID] = st.DeepCopy()
	served := s.servedPod(held)
	s.mu.Unlock()
	obj := s.cache.put(objectKey{"/pods", held.Namespace, held.Name}, served, same)
	w, err := s.client.ReportPodStatus(held.Namespace, held.Name, string(held.UID), st)
	if err := s.awaitReport(req, w, err); err != nil {
		return nil, err
	}
	return obj.(*corev1.Pod), nil
}

// patchPodStatus: PATCH pods/NAME/status, the kubelet's status manager.
func patchPodStatus(s *Server, req *Request) (int, runtime.Object, error) {
	held, served, err := s.heldPod(req)
	if err != nil {
		return 0, nil, err
	}
	var patched corev1.Pod
	if err := applyPatch(req, served, &patched); err != nil {
		return 0, nil, err
	}
	if err := preconditionUID(req, patched.UID, held.UID); err != nil {
		return 0, nil, err
	}
	pod, err := s.setPodStatus(req, held, &patched.Status)
	return http.StatusOK, pod, err
}

// updatePodStatus: PUT pods/NAME/status.
func updatePodStatus(s *Server, req *Request) (int, runtime.Object, error) {
	held, _, err := s.heldPod(req)
	if err != nil {
		return 0, nil, err
	}
	var in corev1.Pod
	if err := decodeBody(req.HTTP, &in); err != nil {
		return 0, nil, err
	}
	if err := preconditionUID(req, in.UID, held.UID); err != nil {
		return 0, nil, err
	}
	pod, err := s.setPodStatus(req, held, &in.Status)
	return http.StatusOK, pod, err
}

// deletePod: DELETE pods/NAME, which the kubelet sends once a pod the
// cloud is deleting has stopped. It becomes what the simulated runtime
// reports for such a pod: its status, terminal, upon which the cloud
// deletes the pod (the node then receives the DELETE).
func deletePod(s *Server, req *Request) (int, runtime.Object, error) {
	held, served, err := s.heldPod(req)
	if err != nil {
		return 0, nil, err
	}
	var opts metav1.DeleteOptions
	if req.HTTP.ContentLength != 0 {
		if err := decodeBody(req.HTTP, &opts); err != nil {
			return 0, nil, err
		}
	}
	if p := opts.Preconditions; p != nil && p.UID != nil {
		if err := preconditionUID(req, *p.UID, held.UID); err != nil {
			return 0, nil, err
		}
	}
	if held.DeletionTimestamp == nil {
		return 0, nil, forbidden(req, "edgesync nodes delete only pods the cloud is deleting (metadata.deletionTimestamp set), once they have stopped")
	}
	st := served.Status.DeepCopy()
	terminal(st)
	pod, err := s.setPodStatus(req, held, st)
	return http.StatusOK, pod, err
}

// terminal makes st a terminal status: Failed when it says so or a
// container failed, else Succeeded.
func terminal(st *corev1.PodStatus) {
	if st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed {
		return
	}
	st.Phase = corev1.PodSucceeded
	for _, cs := range st.ContainerStatuses {
		if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
			st.Phase = corev1.PodFailed
		}
	}
}

// refuseMirrorPod: POST pods, which a kubelet sends for static pods.
func refuseMirrorPod(_ *Server, req *Request) (int, runtime.Object, error) {
	return 0, nil, forbidden(req, "edgesync does not carry mirror pods: run workloads from the cloud, not as static pods")
}

// --- the node ---

// ownNode refuses a write about another node, as NodeRestriction does.
func (s *Server) ownNode(req *Request, name string) error {
	if name != s.node {
		return forbidden(req, fmt.Sprintf("node %q may not modify node %q", s.node, name))
	}
	return nil
}

// createNode: POST nodes, the kubelet registering its node.
func createNode(s *Server, req *Request) (int, runtime.Object, error) {
	var n corev1.Node
	if err := decodeBody(req.HTTP, &n); err != nil {
		return 0, nil, err
	}
	req.Name = n.Name
	if err := s.ownNode(req, n.Name); err != nil {
		return 0, nil, err
	}
	w, err := s.client.RegisterNode(edgeclient.NodeRegistration{
		Labels: n.Labels, Annotations: n.Annotations, Taints: n.Spec.Taints, Status: n.Status,
	})
	created := n.DeepCopy()
	created.UID = uuid.NewUUID()
	created.CreationTimestamp = metav1.Now()
	created.ResourceVersion, created.ManagedFields = "", nil
	s.mu.Lock()
	s.createdNode = created
	s.nodeStatus = n.Status.DeepCopy()
	served := s.servedNode()
	s.mu.Unlock()
	obj := s.cache.put(objectKey{"/nodes", "", s.node}, served, same)
	if err := s.awaitReport(req, w, err); err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, obj, nil
}

// setNodeStatus serves st as the node's status and reports it.
func (s *Server) setNodeStatus(req *Request, st *corev1.NodeStatus) (runtime.Object, error) {
	s.mu.Lock()
	s.nodeStatus = st.DeepCopy()
	served := s.servedNode()
	s.mu.Unlock()
	if served == nil {
		return nil, apierrors.NewNotFound(req.Resource.GroupResource(), req.Name)
	}
	obj := s.cache.put(objectKey{"/nodes", "", s.node}, served, same)
	w, err := s.client.ReportNodeStatus(st)
	if err := s.awaitReport(req, w, err); err != nil {
		return nil, err
	}
	return obj, nil
}

// servedNodeOr404 is the node's Node as served, or 404.
func (s *Server) servedNodeOr404(req *Request) (*corev1.Node, error) {
	if err := s.ownNode(req, req.Name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	n := s.servedNode()
	s.mu.Unlock()
	if n == nil {
		return nil, apierrors.NewNotFound(req.Resource.GroupResource(), req.Name)
	}
	return n, nil
}

// patchNodeStatus: PATCH nodes/NAME/status, the kubelet's node status.
// Only the status counts: the Node's metadata and spec are the cloud's.
func patchNodeStatus(s *Server, req *Request) (int, runtime.Object, error) {
	current, err := s.servedNodeOr404(req)
	if err != nil {
		return 0, nil, err
	}
	var patched corev1.Node
	if err := applyPatch(req, current, &patched); err != nil {
		return 0, nil, err
	}
	obj, err := s.setNodeStatus(req, &patched.Status)
	return http.StatusOK, obj, err
}

// updateNodeStatus: PUT nodes/NAME/status.
func updateNodeStatus(s *Server, req *Request) (int, runtime.Object, error) {
	if _, err := s.servedNodeOr404(req); err != nil {
		return 0, nil, err
	}
	var n corev1.Node
	if err := decodeBody(req.HTTP, &n); err != nil {
		return 0, nil, err
	}
	obj, err := s.setNodeStatus(req, &n.Status)
	return http.StatusOK, obj, err
}

// --- CSINode: the kubelet's record of its CSI drivers, kept on the node
// (the kubelet needs it to start; edgesync does not carry it) ---

func readOwnCSINode(s *Server, req *Request) error {
	if req.Name != s.node {
		return forbidden(req, fmt.Sprintf("node %q may read only its own CSINode", s.node))
	}
	return nil
}

func createCSINode(s *Server, req *Request) (int, runtime.Object, error) {
	return s.createLocal(req, req.Resource.New(), func(name string) error { return readOwnCSINode(s, &Request{Resource: req.Resource, Name: name}) })
}

func updateCSINode(s *Server, req *Request) (int, runtime.Object, error) {
	if err := readOwnCSINode(s, req); err != nil {
		return 0, nil, err
	}
	return s.updateLocal(req, nil)
}

func patchCSINode(s *Server, req *Request) (int, runtime.Object, error) {
	if err := readOwnCSINode(s, req); err != nil {
		return 0, nil, err
	}
	return s.patchLocal(req, nil)
}

// createLocal creates an object kept on the node: allowed says whether
// its name is the node's to write.
func (s *Server) createLocal(req *Request, obj runtime.Object, allowed func(name string) error) (int, runtime.Object, error) {
	if err := decodeBody(req.HTTP, obj); err != nil {
		return 0, nil, err
	}
	m, err := metaOf(obj)
	if err != nil {
		return 0, nil, err
	}
	if req.Resource.Namespaced && m.GetNamespace() == "" {
		m.SetNamespace(req.Namespace)
	}
	req.Name = m.GetName()
	if req.Resource.Namespaced && m.GetNamespace() != req.Namespace {
		return 0, nil, apierrors.NewBadRequest("the namespace of the object does not match the namespace of the request")
	}
	if err := allowed(m.GetName()); err != nil {
		return 0, nil, err
	}
	key := objectKey{req.Resource.ID(), req.Namespace, m.GetName()}
	if s.cache.get(key) != nil {
		return 0, nil, apierrors.NewAlreadyExists(req.Resource.GroupResource(), m.GetName())
	}
	m.SetUID(uuid.NewUUID())
	m.SetCreationTimestamp(metav1.Now())
	m.SetManagedFields(nil)
	return http.StatusCreated, s.cache.put(key, obj, nil), nil
}

// updateLocal replaces an object kept on the node, with the apiserver's
// optimistic concurrency; after, when set, runs once it is stored.
func (s *Server) updateLocal(req *Request, after func(runtime.Object) error) (int, runtime.Object, error) {
	obj := req.Resource.New()
	if err := decodeBody(req.HTTP, obj); err != nil {
		return 0, nil, err
	}
	return s.replaceLocal(req, obj, after)
}

// patchLocal patches an object kept on the node.
func (s *Server) patchLocal(req *Request, after func(runtime.Object) error) (int, runtime.Object, error) {
	key := objectKey{req.Resource.ID(), req.Namespace, req.Name}
	current := s.cache.get(key)
	if current == nil {
		return 0, nil, apierrors.NewNotFound(req.Resource.GroupResource(), req.Name)
	}
	obj := req.Resource.New()
	if err := applyPatch(req, current, obj); err != nil {
		return 0, nil, err
	}
	return s.replaceLocal(req, obj, after)
}

func (s *Server) replaceLocal(req *Request, obj runtime.Object, after func(runtime.Object) error) (int, runtime.Object, error) {
	key := objectKey{req.Resource.ID(), req.Namespace, req.Name}
	current := s.cache.get(key)
	if current == nil {
		return 0, nil, apierrors.NewNotFound(req.Resource.GroupResource(), req.Name)
	}
	m, err := metaOf(obj)
	if err != nil {
		return 0, nil, err
	}
	cm, err := metaOf(current)
	if err != nil {
		return 0, nil, err
	}
	if m.GetName() != req.Name {
		return 0, nil, apierrors.NewBadRequest("the name of the object does not match the name in the request")
	}
	if rv := m.GetResourceVersion(); rv != "" && rv != cm.GetResourceVersion() {
		return 0, nil, apierrors.NewConflict(req.Resource.GroupResource(), req.Name,
			errors.New("the object has been modified; please apply your changes to the latest version and try again"))
	}
	if err := preconditionUID(req, m.GetUID(), cm.GetUID()); err != nil {
		return 0, nil, err
	}
	m.SetNamespace(cm.GetNamespace())
	m.SetUID(cm.GetUID())
	m.SetCreationTimestamp(cm.GetCreationTimestamp())
	m.SetManagedFields(nil)
	stored := s.cache.put(key, obj, same)
	if after != nil {
		if err := after(stored); err != nil {
			return 0, nil, err
		}
	}
	return http.StatusOK, stored, nil
}

func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return nil, apierrors.NewInternalError(fmt.Errorf("%T has no object metadata", obj))
	}
	return m, nil
}

// --- certificates ---

// refuseCSR: POST certificatesigningrequests.
func refuseCSR(_ *Server, req *Request) (int, runtime.Object, error) {
	return 0, nil, forbidden(req, "the edgesync agent renews the node's certificate itself; "+
		"configure the kubelet without certificate bootstrap or rotation (rotateCertificates: false, serverTLSBootstrap: false)")
}

// setVersionString sets an object's resourceVersion.
func setVersionString(obj runtime.Object, rv string) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetResourceVersion(rv)
	}
}

// eventTime is when an event happened: its eventTime, lastTimestamp or
// firstTimestamp, or now.
func eventTime(ev *corev1.Event) time.Time {
	switch {
	case !ev.EventTime.IsZero():
		return ev.EventTime.Time
	case !ev.LastTimestamp.IsZero():
		return ev.LastTimestamp.Time
	case !ev.FirstTimestamp.IsZero():
		return ev.FirstTimestamp.Time
	}
	return time.Now()
}
