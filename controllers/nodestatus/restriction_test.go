package nodestatus

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/server/feed"
)

func TestCheckRegistration(t *testing.T) {
	const edge = "node-role.kubernetes.io/edge"
	for _, tc := range []struct {
		name   string
		labels map[string]string
		taints []corev1.Taint
		refuse string // the key the refusal names; empty: allowed
	}{
		{"what the agent sets", map[string]string{"kubernetes.io/hostname": "e", "kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}, nil, ""},
		{"the edge label", map[string]string{edge: ""}, nil, ""},
		{"own domain", map[string]string{"example.com/rack": "3", "site": "berlin"}, nil, ""},
		{"topology and instance type", map[string]string{"topology.kubernetes.io/zone": "z", "node.kubernetes.io/instance-type": "pi4"}, nil, ""},
		{"node.kubernetes.io and kubelet.kubernetes.io prefixes", map[string]string{"node.kubernetes.io/anything": "x", "foo.kubelet.kubernetes.io/y": "z"}, nil, ""},
		{"control-plane role", map[string]string{"node-role.kubernetes.io/control-plane": ""}, nil, "node-role.kubernetes.io/control-plane"},
		{"k8s.io domain", map[string]string{"kubernetes.io/hostname": "e", "x.k8s.io/pool": "gpu"}, nil, "x.k8s.io/pool"},
		{"kubernetes.io itself", map[string]string{"kubernetes.io/role": "master"}, nil, "kubernetes.io/role"},
		{"node-restriction prefix", map[string]string{"node-restriction.kubernetes.io/trusted": "yes"}, nil, "node-restriction.kubernetes.io/trusted"},
		{"upper-case domain", map[string]string{"Node-Role.Kubernetes.IO/master": ""}, nil, "Node-Role.Kubernetes.IO/master"},
		{"kubelet's registration taint", nil, []corev1.Taint{{Key: corev1.TaintNodeNotReady, Effect: corev1.TaintEffectNoSchedule}}, ""},
		{"own taint", nil, []corev1.Taint{{Key: "example.com/battery", Effect: corev1.TaintEffectNoSchedule}}, ""},
		{"controller's taint", nil, []corev1.Taint{{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute}}, corev1.TaintNodeUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRegistration("e", edge, tc.labels, tc.taints)
			if tc.refuse == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if feed.KindOf(err) != feed.ErrPermissionDenied || !strings.Contains(err.Error(), `node "e" may not set`) || !strings.Contains(err.Error(), `"`+tc.refuse) {
				t.Fatalf("got %v, want PERMISSION_DENIED naming %q", err, tc.refuse)
			}
		})
	}
}

func FuzzCheckRegistration(f *testing.F) {
	f.Add("node-role.kubernetes.io/control-plane", "node.kubernetes.io/not-ready")
	f.Add("kubernetes.io/hostname", "example.com/x")
	f.Add("a.b.k8s.io/c", "k8s.io/d")
	f.Fuzz(func(t *testing.T, label, taint string) {
		err := checkRegistration("n", "node-role.kubernetes.io/edge", map[string]string{label: ""}, []corev1.Taint{{Key: taint}})
		if err != nil && feed.KindOf(err) != feed.ErrPermissionDenied {
			t.Fatalf("refused with %v, want PERMISSION_DENIED", err)
		}
		lower := strings.ToLower(label)
		domain, _, _ := strings.Cut(lower, "/")
		reserved := strings.HasPrefix(lower, "node-restriction.kubernetes.io/") ||
			(strings.Contains(label, "/") && (domain == "kubernetes.io" || strings.HasSuffix(domain, ".kubernetes.io") || domain == "k8s.io" || strings.HasSuffix(domain, ".k8s.io")) &&
				!strings.HasSuffix(domain, "node.kubernetes.io") && !strings.HasSuffix(domain, "kubelet.kubernetes.io") &&
				!strings.HasPrefix(label, "kubernetes.io/") && !strings.HasPrefix(label, "beta.kubernetes.io/") &&
				!strings.HasPrefix(label, "topology.kubernetes.io/") && !strings.HasPrefix(label, "failure-domain.beta.kubernetes.io/") &&
				label != "node-role.kubernetes.io/edge")
		if reserved && err == nil {
			t.Fatalf("label %q in a reserved domain was allowed", label)
		}
	})
}
