package agent

import (
	"fmt"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// reportEvent hands one event to the client, which never blocks.
func (a *agent) reportEvent(ev edgeclient.EventReport) {
	if err := a.client.ReportEvent(ev); err != nil {
		a.log.Warn("cannot report event", zap.String("reason", ev.Reason), zap.Error(err))
	}
}

// reportRuntimeEvents reports what the simulated runtime does with the
// object of ev, as a kubelet would: a new pod's containers are pulled,
// created and started; a pod the cloud deletes has its containers killed;
// a device is online while its model is known (the simulated protocol
// needs it), offline otherwise.
func (a *agent) reportRuntimeEvents(ev edgeclient.Event) {
	switch {
	case ev.Type == edgeclient.Deleted:
	case ev.Object.Pod != nil:
		pod := ev.Object.Pod
		var was *corev1.Pod
		if ev.Old != nil {
			was = ev.Old.Pod
		}
		switch {
		case pod.DeletionTimestamp != nil && (was == nil || was.DeletionTimestamp == nil):
			for _, c := range pod.Spec.Containers {
				a.containerEvent(pod, c, "Killing", fmt.Sprintf("Stopping container %s", c.Name))
			}
		case was == nil && pod.DeletionTimestamp == nil:
			for _, c := range pod.Spec.Containers {
				a.containerEvent(pod, c, "Pulled", fmt.Sprintf("Container image %q already present on machine", c.Image))
				a.containerEvent(pod, c, "Created", fmt.Sprintf("Created container %s", c.Name))
				a.containerEvent(pod, c, "Started", fmt.Sprintf("Started container %s", c.Name))
			}
		}
	case ev.Object.Device != nil && a.dmi == nil: // with DMI, mappers know
		online := ev.Object.Device.Model != nil
		if ev.Old != nil && ev.Old.Device != nil && (ev.Old.Device.Model != nil) == online {
			return // no change
		}
		meta := ev.Object.Device.Device.GetMetadata()
		report := edgeclient.EventReport{
			Regarding: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_DEVICE, Namespace: meta.GetNamespace(), Name: meta.GetName()},
			UID:       meta.GetUid(), Type: corev1.EventTypeNormal, Reason: "DeviceOnline", Action: "Connect",
			Note: fmt.Sprintf("device %s is online (protocol of model %s)", meta.GetName(), ev.Object.Device.Device.GetModelName()),
		}
		if !online {
			report.Type, report.Reason = corev1.EventTypeWarning, "DeviceOffline"
			report.Note = fmt.Sprintf("device %s is offline: its model %s is not known yet", meta.GetName(), ev.Object.Device.Device.GetModelName())
		}
		a.reportEvent(report)
	}
}

// containerEvent reports one event about container c of pod.
func (a *agent) containerEvent(pod *corev1.Pod, c corev1.Container, reason, note string) {
	a.reportEvent(edgeclient.EventReport{
		Regarding: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_POD, Namespace: pod.Namespace, Name: pod.Name},
		UID:       string(pod.UID), FieldPath: fmt.Sprintf("spec.containers{%s}", c.Name),
		Type: corev1.EventTypeNormal, Reason: reason, Note: note,
	})
}
