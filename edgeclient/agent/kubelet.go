package agent

import (
	"path/filepath"

	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient/agent/simkubelet"
)

// ExecDir is the directory, under the store directory, where exec finds
// each container's volume files (package simkubelet).
const ExecDir = "exec"

// kubeletHandler is the agent's kubelet API: kubectl logs, exec, attach
// and port-forward for the simulated runtime.
func (a *agent) kubeletHandler(cfg Config) *simkubelet.Handler {
	dir := ""
	if cfg.Client.StoreDir != "" {
		dir = filepath.Join(cfg.Client.StoreDir, ExecDir)
	}
	return simkubelet.New(simkubelet.Config{
		Node: a.node, Objects: heldObjects{a}, AllowExec: cfg.AllowExec, Dir: dir, Logger: a.log.Named("kubelet"),
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
