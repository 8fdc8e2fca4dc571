package localapi

import (
	"fmt"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
)

// readReferenced lets the node read a ConfigMap or Secret only while one
// of the pods it holds uses it, one object at a time, as the Node
// authorizer does: a list or watch must select one name
// (fieldSelector=metadata.name=NAME, as the kubelet's watches do). An
// object no held pod uses is refused (403), whether or not the node
// holds it; one a held pod uses but the node does not hold is not found
// (404).
func readReferenced(s *Server, req *Request) error {
	if req.Name == "" {
		return forbidden(req, fmt.Sprintf("node %q may only read individual %s its pods use (select one with fieldSelector=metadata.name=NAME)",
			s.node, req.Resource.Plural))
	}
	if !s.referenced(req.Resource.Plural, req.Namespace, req.Name) {
		return forbidden(req, fmt.Sprintf("no relationship found between node %q and this object", s.node))
	}
	return nil
}

// referenced reports whether a pod the node holds uses the configmap or
// secret (plural) namespace/name.
func (s *Server) referenced(plural, namespace, name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, pod := range s.pods {
		if key.Namespace != namespace {
			continue
		}
		found := false
		visitReferences(pod, func(secret bool, n string) bool {
			if n == name && secret == (plural == "secrets") {
				found = true
				return false
			}
			return true
		})
		if found {
			return true
		}
	}
	return false
}

// visitReferences calls visit with every ConfigMap (secret false) and
// Secret (secret true) a pod uses: volumes (also projected), envFrom,
// env.valueFrom and imagePullSecrets, as the cloud decides what the node
// holds. visit returns false to stop.
func visitReferences(pod *corev1.Pod, visit func(secret bool, name string) bool) {
	more := true
	add := func(secret bool, name string) {
		if more && name != "" {
			more = visit(secret, name)
		}
	}
	for _, s := range pod.Spec.ImagePullSecrets {
		add(true, s.Name)
	}
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap != nil {
			add(false, v.ConfigMap.Name)
		}
		if v.Secret != nil {
			add(true, v.Secret.SecretName)
		}
		if v.Projected != nil {
			for _, src := range v.Projected.Sources {
				if src.ConfigMap != nil {
					add(false, src.ConfigMap.Name)
				}
				if src.Secret != nil {
					add(true, src.Secret.Name)
				}
			}
		}
	}
	env := func(envFrom []corev1.EnvFromSource, vars []corev1.EnvVar) {
		for _, from := range envFrom {
			if from.ConfigMapRef != nil {
				add(false, from.ConfigMapRef.Name)
			}
			if from.SecretRef != nil {
				add(true, from.SecretRef.Name)
			}
		}
		for _, e := range vars {
			if e.ValueFrom == nil {
				continue
			}
			if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil {
				add(false, ref.Name)
			}
			if ref := e.ValueFrom.SecretKeyRef; ref != nil {
				add(true, ref.Name)
			}
		}
	}
	for _, c := range pod.Spec.InitContainers {
		env(c.EnvFrom, c.Env)
	}
	for _, c := range pod.Spec.Containers {
		env(c.EnvFrom, c.Env)
	}
	for _, c := range pod.Spec.EphemeralContainers {
		env(c.EnvFrom, c.Env)
	}
}

// zapRequest logs what a request was about (never its body).
func zapRequest(req *Request) zap.Field {
	return zap.Object("request", zapcore.ObjectMarshalerFunc(func(e zapcore.ObjectEncoder) error {
		e.AddString("verb", req.Verb)
		e.AddString("resource", req.Resource.String())
		if req.Subresource != "" {
			e.AddString("subresource", req.Subresource)
		}
		if req.Namespace != "" {
			e.AddString("namespace", req.Namespace)
		}
		e.AddString("name", req.Name)
		return nil
	}))
}

func zapError(err error) zap.Field { return zap.Error(err) }
