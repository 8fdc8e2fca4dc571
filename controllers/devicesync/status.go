package devicesync

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/edgesync/edgesync/controllers/internal/reportqueue"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// HandleReport takes a DeviceStatus report from node. Reports for devices
// not bound to node are refused with PERMISSION_DENIED; the others are
// written, coalescing per device while the API server is slow.
func (c *Controller) HandleReport(node string, req *edgesyncv1.SyncRequest, answer feed.Answer) {
	ds := req.GetDeviceStatus()
	if ds == nil || ds.GetNamespace() == "" || ds.GetName() == "" {
		answer(reportqueue.Result(req.GetRequestId(), feed.NewError(feed.ErrInvalid, "device_status needs namespace and name")))
		return
	}
	key := ds.GetNamespace() + "/" + ds.GetName()
	dev, err := c.device(key)
	switch {
	case err != nil:
		answer(reportqueue.Result(req.GetRequestId(), err))
	case dev == nil:
		answer(reportqueue.Result(req.GetRequestId(), feed.Errorf(feed.ErrNotFound, "device %s does not exist", key)))
	case nodeOf(dev) != node:
		answer(reportqueue.Result(req.GetRequestId(), feed.Errorf(feed.ErrPermissionDenied,
			"node %q may not report status of device %s bound to node %q", node, key, nodeOf(dev))))
	default:
		c.reports.Add("device/"+key, node, req, answer)
	}
}

// writeStatus applies the reported twins, state and last online time to the
// DeviceStatus named as the device, owned by it, creating it when missing.
// The reported twins replace the ones reported before.
func (c *Controller) writeStatus(ctx context.Context, node string, req *edgesyncv1.SyncRequest) error {
	ds := req.GetDeviceStatus()
	key := ds.GetNamespace() + "/" + ds.GetName()
	dev, err := c.device(key)
	if err != nil {
		return err
	}
	if dev == nil || nodeOf(dev) != node {
		return feed.Errorf(feed.ErrNotFound, "device %s is no longer bound to node %q", key, node)
	}
	twins := make([]any, 0, len(ds.GetTwins()))
	for _, t := range ds.GetTwins() {
		twin := map[string]any{"propertyName": t.GetPropertyName()}
		if t.GetReported() != nil {
			twin["reported"] = twinValueMap(t.GetReported())
		}
		if t.GetObservedDesired() != nil {
			twin["observedDesired"] = twinValueMap(t.GetObservedDesired())
		}
		twins = append(twins, twin)
	}
	st := map[string]any{"twins": twins}
	if ds.GetState() != "" {
		st["state"] = ds.GetState()
	}
	if ds.GetLastOnlineTime() != nil {
		st["lastOnlineTime"] = ds.GetLastOnlineTime().AsTime().UTC().Format(time.RFC3339)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": Group + "/" + Version,
		"kind":       "DeviceStatus",
		"metadata": map[string]any{
			"name":      ds.GetName(),
			"namespace": ds.GetNamespace(),
			"ownerReferences": []any{map[string]any{
				"apiVersion": Group + "/" + Version,
				"kind":       "Device",
				"name":       dev.GetName(),
				"uid":        string(dev.GetUID()),
			}},
		},
		"status": st,
	}}
	_, err = c.dynamic.Resource(DeviceStatuses).Namespace(ds.GetNamespace()).Apply(ctx, ds.GetName(), obj,
		metav1.ApplyOptions{FieldManager: c.fieldManager, Force: true})
	if isNotFound(err) {
		return feed.Errorf(feed.ErrFailedPrecondition, "the DeviceStatus resource (%s) is not installed: %v", DeviceStatuses.GroupResource(), err)
	}
	if err != nil {
		return fmt.Errorf("apply status of device %s: %w", key, err)
	}
	return nil
}

func twinValueMap(v *edgesyncv1.TwinValue) map[string]any {
	out := map[string]any{"value": v.GetValue()}
	if len(v.GetMetadata()) > 0 {
		md := make(map[string]any, len(v.GetMetadata()))
		for k, s := range v.GetMetadata() {
			md[k] = s
		}
		out["metadata"] = md
	}
	return out
}
