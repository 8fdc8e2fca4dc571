package localapi

import (
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/uuid"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// createEvent: POST events. An event about the node or a pod it holds
// becomes an event report (queued, never waited for: the cloud records
// it as a Kubernetes Event); one about anything else is refused.
func createEvent(s *Server, req *Request) (int, runtime.Object, error) {
	var ev corev1.Event
	if err := decodeBody(req.HTTP, &ev); err != nil {
		return 0, nil, err
	}
	if ev.Namespace == "" {
		ev.Namespace = req.Namespace
	}
	if ev.Namespace != req.Namespace {
		return 0, nil, apierrors.NewBadRequest("the namespace of the event does not match the namespace of the request")
	}
	req.Name = ev.Name
	report := edgeclient.EventReport{
		UID: string(ev.InvolvedObject.UID), FieldPath: ev.InvolvedObject.FieldPath,
		Type: ev.Type, Reason: ev.Reason, Action: ev.Action, Note: ev.Message, Time: eventTime(&ev),
	}
	obj := ev.InvolvedObject
	switch {
	case obj.Kind == "Node" && obj.Name == s.node:
		report.Regarding = edgeclient.Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: s.node}
		report.UID = "" // the kubelet names its node by name as uid
	case obj.Kind == "Pod":
		s.mu.Lock()
		pod := s.pods[types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}]
		s.mu.Unlock()
		if pod == nil || (obj.UID != "" && obj.UID != pod.UID) {
			return 0, nil, forbidden(req, fmt.Sprintf("node %q may report events only about itself and the pods it runs, not pod %s/%s", s.node, obj.Namespace, obj.Name))
		}
		report.Regarding = edgeclient.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: obj.Namespace, Name: obj.Name}
	default:
		return 0, nil, forbidden(req, fmt.Sprintf("node %q may report events only about itself and the pods it runs, not %s %s/%s", s.node, obj.Kind, obj.Namespace, obj.Name))
	}
	if err := s.client.ReportEvent(report); err != nil {
		return 0, nil, apierrors.NewBadRequest(err.Error())
	}
	if ev.Name == "" {
		ev.Name = ev.GenerateName + utilrand.String(5)
	}
	ev.UID = uuid.NewUUID()
	ev.CreationTimestamp = metav1.Now()
	ev.ResourceVersion = ""
	return http.StatusCreated, &ev, nil
}

// patchEvent: PATCH events/NAME, which the kubelet's event recorder sends
// to count a repeated event. The node keeps no events, so it is not found,
// and the recorder creates the event again (a new report).
func patchEvent(_ *Server, req *Request) (int, runtime.Object, error) {
	return 0, nil, apierrors.NewNotFound(req.Resource.GroupResource(), req.Name)
}
