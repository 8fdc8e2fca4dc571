package podsync

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// HandleReport takes a PodStatus report from node. Reports for pods bound
// to other nodes are refused with PERMISSION_DENIED; a report for a pod
// that no longer exists with the reported uid is answered NOT_FOUND and the
// node's stale copy is deleted (or replaced by the current pod when that is
// bound to the node). Other reports are written through the status
// subresource, coalescing per pod while the API server is slow.
func (c *Controller) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	ps := req.GetPodStatus()
	if ps == nil || ps.GetNamespace() == "" || ps.GetName() == "" || ps.GetUid() == "" || ps.GetStatus() == nil {
		answer(reportqueue.Result(req.GetRequestId(), feed.NewError(feed.ErrInvalid,
			"pod_status needs namespace, name, uid and status")))
		return
	}
	pod, err := c.pods.Pods(ps.GetNamespace()).Get(ps.GetName())
	if err != nil && !apierrors.IsNotFound(err) {
		answer(reportqueue.Result(req.GetRequestId(), err))
		return
	}
	if err == nil && pod.Spec.NodeName != node && string(pod.UID) == ps.GetUid() {
		answer(reportqueue.Result(req.GetRequestId(), feed.Errorf(feed.ErrPermissionDenied,
			"node %q may not report status of pod %s/%s bound to node %q", node, pod.Namespace, pod.Name, pod.Spec.NodeName)))
		return
	}
	if err != nil || string(pod.UID) != ps.GetUid() {
		answer(reportqueue.Result(req.GetRequestId(), c.stale(node, ps)))
		return
	}
	c.reports.Add("pod/"+ps.GetNamespace()+"/"+ps.GetName(), node, req, answer)
}

// stale corrects node's copy of a pod that no longer exists with the uid
// node reported, and returns the NOT_FOUND that answers the report.
func (c *Controller) stale(node string, ps *edgesyncv1.PodStatus) error {
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: ps.GetNamespace(), Name: ps.GetName()}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A DELETE would also remove a newer pod of the same name queued for
	// node; an APPLY of that pod replaces the stale copy just as well.
	if pod, err := c.pods.Pods(key.Namespace).Get(key.Name); err == nil && pod.Spec.NodeName == node && c.edgeNode(node) != "" {
		if obj, err := c.encodePod(pod); err == nil {
			c.pub.Publish(node, obj)
		}
	} else {
		c.publishTombstone(node, key, ps.GetUid())
	}
	return feed.Errorf(feed.ErrNotFound, "pod %s/%s with uid %s no longer exists; node %q is told to delete its copy",
		key.Namespace, key.Name, ps.GetUid(), node)
}

// writePodStatus patches the reported status into the pod, with the uid as
// precondition, and deletes a pod being deleted once the edge reports it
// terminated (as the kubelet does).
func (c *Controller) writePodStatus(ctx context.Context, node string, req *edgesyncv1.SyncRequest) error {
	ps := req.GetPodStatus()
	b, err := proto.Marshal(ps.GetStatus())
	if err != nil {
		return feed.Errorf(feed.ErrInvalid, "pod_status.status: %v", err)
	}
	var st corev1.PodStatus
	if err := st.Unmarshal(b); err != nil {
		return feed.Errorf(feed.ErrInvalid, "pod_status.status is not a valid PodStatus: %v", err)
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": ps.GetUid()},
		"status":   st,
	})
	if err != nil {
		return fmt.Errorf("encode status patch: %w", err)
	}
	pods := c.client.CoreV1().Pods(ps.GetNamespace())
	updated, err := pods.Patch(ctx, ps.GetName(), types.StrategicMergePatchType, patch,
		metav1.PatchOptions{FieldManager: c.fieldManager}, "status")
	switch {
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		return c.stale(node, ps)
	case err != nil:
		return fmt.Errorf("patch status of pod %s/%s: %w", ps.GetNamespace(), ps.GetName(), err)
	}
	if updated.DeletionTimestamp == nil || !terminated(&st) {
		return nil
	}
	uid := types.UID(ps.GetUid())
	err = pods.Delete(ctx, ps.GetName(), metav1.DeleteOptions{
		GracePeriodSeconds: new(int64),
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete terminated pod %s/%s: %w", ps.GetNamespace(), ps.GetName(), err)
	}
	return nil
}

// terminated tells whether a status says every container of the pod has
// stopped.
func terminated(st *corev1.PodStatus) bool {
	if st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed {
		return true
	}
	if len(st.ContainerStatuses) == 0 {
		return false
	}
	for _, cs := range st.ContainerStatuses {
		if cs.State.Terminated == nil {
			return false
		}
	}
	return true
}
