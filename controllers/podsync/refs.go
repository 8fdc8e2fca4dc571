package podsync

import (
	corev1 "k8s.io/api/core/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/server/feed"
)

// references returns the ConfigMaps and Secrets pod uses, each once, in the
// pod's namespace: volumes (also projected), envFrom, env.valueFrom and
// imagePullSecrets.
func references(pod *corev1.Pod) []feed.Key {
	seen := make(map[feed.Key]bool)
	var refs []feed.Key
	add := func(kind edgesyncv1.Kind, name string) {
		k := feed.Key{Kind: kind, Namespace: pod.Namespace, Name: name}
		if name == "" || seen[k] {
			return
		}
		seen[k] = true
		refs = append(refs, k)
	}
	for _, s := range pod.Spec.ImagePullSecrets {
		add(edgesyncv1.Kind_KIND_SECRET, s.Name)
	}
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap != nil {
			add(edgesyncv1.Kind_KIND_CONFIG_MAP, v.ConfigMap.Name)
		}
		if v.Secret != nil {
			add(edgesyncv1.Kind_KIND_SECRET, v.Secret.SecretName)
		}
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if src.ConfigMap != nil {
					add(edgesyncv1.Kind_KIND_CONFIG_MAP, src.ConfigMap.Name)
				}
				if src.Secret != nil {
					add(edgesyncv1.Kind_KIND_SECRET, src.Secret.Name)
				}
			}
		}
	}
	containers := func(cs []corev1.Container) {
		for _, c := range cs {
			for _, from := range c.EnvFrom {
				if from.ConfigMapRef != nil {
					add(edgesyncv1.Kind_KIND_CONFIG_MAP, from.ConfigMapRef.Name)
				}
				if from.SecretRef != nil {
					add(edgesyncv1.Kind_KIND_SECRET, from.SecretRef.Name)
				}
			}
			for _, env := range c.Env {
				if env.ValueFrom == nil {
					continue
				}
				if ref := env.ValueFrom.ConfigMapKeyRef; ref != nil {
					add(edgesyncv1.Kind_KIND_CONFIG_MAP, ref.Name)
				}
				if ref := env.ValueFrom.SecretKeyRef; ref != nil {
					add(edgesyncv1.Kind_KIND_SECRET, ref.Name)
				}
			}
		}
	}
	containers(pod.Spec.InitContainers)
	containers(pod.Spec.Containers)
	ephemeral := make([]corev1.Container, 0, len(pod.Spec.EphemeralContainers))
	for _, e := range pod.Spec.EphemeralContainers {
		ephemeral = append(ephemeral, corev1.Container{Env: e.Env, EnvFrom: e.EnvFrom})
	}
	containers(ephemeral)
	return refs
}
