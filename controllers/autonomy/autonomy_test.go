package autonomy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func seconds(n int64) *int64 { return &n }

func noExecute(key string, s *int64) corev1.Toleration {
	return corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: s}
}

// The tolerations the apiserver gives every pod without its own.
var admissionDefaults = []corev1.Toleration{
	noExecute(corev1.TaintNodeNotReady, seconds(300)),
	noExecute(corev1.TaintNodeUnreachable, seconds(300)),
}

func TestTolerations(t *testing.T) {
	edgeRole := corev1.Toleration{Key: "node-role.kubernetes.io/edge", Operator: corev1.TolerationOpExists}
	for _, tc := range []struct {
		name        string
		in          []corev1.Toleration
		seconds     *int64
		want        []corev1.Toleration
		wantChanged bool
	}{{
		name:        "admission defaults tolerate for ever",
		in:          append([]corev1.Toleration{edgeRole}, admissionDefaults...),
		want:        []corev1.Toleration{edgeRole, noExecute(corev1.TaintNodeNotReady, nil), noExecute(corev1.TaintNodeUnreachable, nil)},
		wantChanged: true,
	}, {
		name:    "DaemonSet pods already tolerate for ever",
		in:      []corev1.Toleration{noExecute(corev1.TaintNodeNotReady, nil), noExecute(corev1.TaintNodeUnreachable, nil)},
		want:    []corev1.Toleration{noExecute(corev1.TaintNodeNotReady, nil), noExecute(corev1.TaintNodeUnreachable, nil)},
		seconds: nil,
	}, {
		name:        "node annotation sets a finite time",
		in:          admissionDefaults,
		seconds:     seconds(600),
		want:        []corev1.Toleration{noExecute(corev1.TaintNodeNotReady, seconds(600)), noExecute(corev1.TaintNodeUnreachable, seconds(600))},
		wantChanged: true,
	}, {
		name:        "missing tolerations are added",
		in:          nil,
		want:        []corev1.Toleration{noExecute(corev1.TaintNodeUnreachable, nil), noExecute(corev1.TaintNodeNotReady, nil)},
		wantChanged: true,
	}, {
		name: "a wildcard toleration for ever is enough",
		in:   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		want: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
	}, {
		name: "a wildcard NoExecute toleration with seconds would evict: cleared",
		in:   []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: seconds(30)}},
		want: []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},

		wantChanged: true,
	}, {
		name:        "a finite time next to a wildcard is added on the named taint",
		in:          []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
		seconds:     seconds(60),
		want:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}, noExecute(corev1.TaintNodeUnreachable, seconds(60)), noExecute(corev1.TaintNodeNotReady, seconds(60))},
		wantChanged: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]corev1.Toleration(nil), tc.in...)
			got, changed := Tolerations(in, tc.seconds)
			if changed != tc.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tc.wantChanged)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("tolerations (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.in, in); diff != "" {
				t.Errorf("input modified (-before +after):\n%s", diff)
			}
		})
	}
}

func TestTolerationSeconds(t *testing.T) {
	node := func(annotations map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "edge-1", Annotations: annotations}}
	}
	if s, err := TolerationSeconds(node(nil)); s != nil || err != nil {
		t.Errorf("no annotation: %v, %v; want for ever", s, err)
	}
	if s, err := TolerationSeconds(node(map[string]string{AnnotationTolerationSeconds: "120"})); err != nil || s == nil || *s != 120 {
		t.Errorf("120: %v, %v", s, err)
	}
	for _, bad := range []string{"-1", "2m", ""} {
		if _, err := TolerationSeconds(node(map[string]string{AnnotationTolerationSeconds: bad})); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
