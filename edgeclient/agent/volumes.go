package agent

import (
	"path/filepath"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/volumes"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// PodsDir is the directory, under the store directory, of the per-pod
// directories the simulated runtime writes pods' volumes into
// (<store>/pods/<pod uid>/volumes/<volume>/...).
const PodsDir = "pods"

// heldSource reads what volumes reference from the client's store.
type heldSource struct{ c *edgeclient.Client }

func (h heldSource) get(key edgeclient.Key) edgeclient.Object {
	obj, _, _ := h.c.Get(key)
	return obj
}

func (h heldSource) ConfigMap(namespace, name string) *corev1.ConfigMap {
	return h.get(edgeclient.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: namespace, Name: name}).ConfigMap
}

func (h heldSource) Secret(namespace, name string) *corev1.Secret {
	return h.get(edgeclient.Key{Kind: edgesyncv1.Kind_KIND_SECRET, Namespace: namespace, Name: name}).Secret
}

func (h heldSource) Token(namespace, pod, volume, path string) *edgesyncv1.ServiceAccountToken {
	return h.get(edgeclient.Key{Kind: edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN, Namespace: namespace, Name: pod + "/" + volume + "/" + path}).Token
}

// newVolumes returns the per-pod directories under storeDir; nil (no
// files written) for an in-memory store.
func newVolumes(storeDir string) *volumes.Dir {
	if storeDir == "" {
		return nil
	}
	return volumes.New(filepath.Join(storeDir, PodsDir))
}

// syncVolumes writes the volumes of pod as the node holds them.
func (a *agent) syncVolumes(pod *corev1.Pod) {
	if a.volumes == nil {
		return
	}
	if _, err := a.volumes.Sync(pod, heldSource{a.client}); err != nil {
		a.log.Warn("cannot write pod volumes", zap.String("pod", pod.Namespace+"/"+pod.Name), zap.Error(err))
	}
}

// syncAllVolumes writes the volumes of every held pod in namespace: a
// ConfigMap, Secret or token they may mount changed.
func (a *agent) syncAllVolumes(namespace string) {
	if a.volumes == nil {
		return
	}
	pods, err := a.client.List(edgesyncv1.Kind_KIND_POD)
	if err != nil {
		a.log.Warn("cannot list held pods", zap.Error(err))
		return
	}
	for _, p := range pods {
		if p.Pod.Namespace == namespace {
			a.syncVolumes(p.Pod)
		}
	}
}

// removeVolumes deletes the directory of a pod that left the node.
func (a *agent) removeVolumes(uid string) {
	if a.volumes == nil || uid == "" {
		return
	}
	if err := a.volumes.Remove(uid); err != nil {
		a.log.Warn("cannot remove pod volumes", zap.String("uid", uid), zap.Error(err))
	}
}
