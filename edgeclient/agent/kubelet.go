package agent

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient/agent/simkubelet"
)

// kubeletHandler is the agent's kubelet API: kubectl logs, exec, attach
// and port-forward for the simulated runtime.
func (a *agent) kubeletHandler(cfg Config) *simkubelet.Handler {
	var vols simkubelet.Volumes // exec runs in the pods' volume directories
	if a.volumes != nil {
		vols = a.volumes
	}
	return simkubelet.New(simkubelet.Config{
		Node: a.node, Objects: heldObjects{a}, AllowExec: cfg.AllowExec, Volumes: vols, Logger: a.log.Named("kubelet"),
	})
}

// heldObjects reads what the node holds; the client exists by the time a
// request arrives.
type heldObjects struct{ a *agent }

func (h heldObjects) Pod(namespace, name string) (*corev1.Pod, error) {
	return h.a.client.Pod(namespace, name)
}

func (h heldObjects) ConfigMap(namespace, name string) (*corev1.ConfigMap, error) {
	return h.a.client.ConfigMap(namespace, name)
}

func (h heldObjects) Secret(namespace, name string) (*corev1.Secret, error) {
	return h.a.client.Secret(namespace, name)
}
