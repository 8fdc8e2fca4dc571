// Package volumes materialises what a pod on an edge node would read from
// its volumes, as files in a per-pod directory: ConfigMap and Secret
// volumes, projected volumes (ServiceAccount token, ConfigMap, Secret and
// downward API sources: the kube-api-access-* volume's token, ca.crt and
// namespace) and simple downward API volumes (metadata and spec fields,
// not resources). Each volume is written the way kubelet lays volumes
// out: files in a hidden timestamped directory reached through a
// "..data" symlink that an update swaps in one rename (see WriteAtomic),
// so a reader never sees half an update. The reference agent uses it to
// put on disk what its simulated pods would mount.
//
// Layout: <root>/<pod uid>/volumes/<volume name>/<file>. A source that the
// node does not hold (yet) is left out; syncing again when it arrives
// completes the volume.
package volumes

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Source supplies what volumes reference, as the node holds it; each
// returns nil when the node does not hold the object.
type Source interface {
	ConfigMap(namespace, name string) *corev1.ConfigMap
	Secret(namespace, name string) *corev1.Secret
	// Token returns the token pod mounts at path in volume.
	Token(namespace, pod, volume, path string) *edgesyncv1.ServiceAccountToken
}

// Default file modes, as Kubernetes defaults them.
const (
	defaultMode fs.FileMode = 0o644
	tokenMode   fs.FileMode = 0o600
)

// Dir is the root of the per-pod directories.
type Dir struct {
	root string
}

// New returns the per-pod directories under root.
func New(root string) *Dir { return &Dir{root: root} }

// PodDir is the directory of the pod with uid.
func (d *Dir) PodDir(uid string) string { return filepath.Join(d.root, uid) }

// VolumeDir is the directory of one volume of the pod with uid.
func (d *Dir) VolumeDir(uid, volume string) string {
	return filepath.Join(d.root, uid, "volumes", volume)
}

// Sync writes every volume of pod from src, and reports the volumes whose
// files changed.
func (d *Dir) Sync(pod *corev1.Pod, src Source) ([]string, error) {
	if pod.UID == "" {
		return nil, fmt.Errorf("pod %s/%s has no uid", pod.Namespace, pod.Name)
	}
	var changed []string
	for _, v := range pod.Spec.Volumes {
		payload, ok, err := volumePayload(pod, v, src)
		if err != nil {
			return changed, fmt.Errorf("volume %q of pod %s/%s: %w", v.Name, pod.Namespace, pod.Name, err)
		}
		if !ok {
			continue
		}
		did, err := WriteAtomic(d.VolumeDir(string(pod.UID), v.Name), payload)
		if err != nil {
			return changed, fmt.Errorf("write volume %q of pod %s/%s: %w", v.Name, pod.Namespace, pod.Name, err)
		}
		if did {
			changed = append(changed, v.Name)
		}
	}
	return changed, nil
}

// Remove deletes the directory of the pod with uid.
func (d *Dir) Remove(uid string) error {
	if uid == "" || strings.ContainsAny(uid, `/\`) || strings.HasPrefix(uid, ".") {
		return fmt.Errorf("not a pod uid: %q", uid)
	}
	return os.RemoveAll(d.PodDir(uid))
}

// volumePayload returns the files of one volume; ok is false for volume
// types this package does not materialise (emptyDir, hostPath, ...).
func volumePayload(pod *corev1.Pod, v corev1.Volume, src Source) (map[string]File, bool, error) {
	out := map[string]File{}
	switch {
	case v.ConfigMap != nil:
		cm := src.ConfigMap(pod.Namespace, v.ConfigMap.Name)
		if cm != nil {
			addKeys(out, configMapData(cm), v.ConfigMap.Items, mode(v.ConfigMap.DefaultMode, defaultMode))
		}
	case v.Secret != nil:
		s := src.Secret(pod.Namespace, v.Secret.SecretName)
		if s != nil {
			addKeys(out, s.Data, v.Secret.Items, mode(v.Secret.DefaultMode, defaultMode))
		}
	case v.DownwardAPI != nil:
		if err := addDownward(out, pod, v.DownwardAPI.Items, mode(v.DownwardAPI.DefaultMode, defaultMode)); err != nil {
			return nil, false, err
		}
	case v.Projected != nil:
		def := mode(v.Projected.DefaultMode, defaultMode)
		for _, p := range v.Projected.Sources {
			switch {
			case p.ServiceAccountToken != nil:
				if t := src.Token(pod.Namespace, pod.Name, v.Name, p.ServiceAccountToken.Path); t != nil {
					m := tokenMode
					if v.Projected.DefaultMode != nil {
						m = def
					}
					out[p.ServiceAccountToken.Path] = File{Data: []byte(t.GetToken()), Mode: m}
				}
			case p.ConfigMap != nil:
				if cm := src.ConfigMap(pod.Namespace, p.ConfigMap.Name); cm != nil {
					addKeys(out, configMapData(cm), p.ConfigMap.Items, def)
				}
			case p.Secret != nil:
				if s := src.Secret(pod.Namespace, p.Secret.Name); s != nil {
					addKeys(out, s.Data, p.Secret.Items, def)
				}
			case p.DownwardAPI != nil:
				if err := addDownward(out, pod, p.DownwardAPI.Items, def); err != nil {
					return nil, false, err
				}
			}
		}
	default:
		return nil, false, nil
	}
	return out, true, nil
}

func mode(m *int32, def fs.FileMode) fs.FileMode {
	if m == nil {
		return def
	}
	return fs.FileMode(*m).Perm()
}

func configMapData(cm *corev1.ConfigMap) map[string][]byte {
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return data
}

// addKeys adds data's keys as files: all of them under their own names, or
// only items, at the items' paths.
func addKeys(out map[string]File, data map[string][]byte, items []corev1.KeyToPath, def fs.FileMode) {
	if len(items) == 0 {
		for k, v := range data {
			out[k] = File{Data: v, Mode: def}
		}
		return
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			continue
		}
		out[it.Path] = File{Data: v, Mode: mode(it.Mode, def)}
	}
}

// addDownward adds the downward API items that name a field of pod's
// metadata or spec; resource fields are not supported.
func addDownward(out map[string]File, pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, def fs.FileMode) error {
	for _, it := range items {
		if it.FieldRef == nil {
			continue // resourceFieldRef: the simulated runtime has no limits to tell
		}
		value, err := fieldValue(pod, it.FieldRef.FieldPath)
		if err != nil {
			return err
		}
		out[it.Path] = File{Data: []byte(value), Mode: mode(it.Mode, def)}
	}
	return nil
}

// fieldValue is the downward API value of one pod field.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	}
	for _, prefix := range []string{"metadata.labels['", "metadata.annotations['"} {
		if key, ok := strings.CutPrefix(path, prefix); ok && strings.HasSuffix(key, "']") {
			key = strings.TrimSuffix(key, "']")
			if strings.HasPrefix(prefix, "metadata.labels") {
				return pod.Labels[key], nil
			}
			return pod.Annotations[key], nil
		}
	}
	return "", fmt.Errorf("downward API field %q is not supported", path)
}

// formatMap writes key="value" lines, sorted, as the downward API does.
func formatMap(m map[string]string) string {
	lines := make([]string, 0, len(m))
	for k, v := range m {
		lines = append(lines, fmt.Sprintf("%s=%q", k, v))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
