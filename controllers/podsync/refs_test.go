package podsync

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

func TestReferences(t *testing.T) {
	local := func(name string) corev1.LocalObjectReference { return corev1.LocalObjectReference{Name: name} }
	for _, tc := range []struct {
		name string
		spec corev1.PodSpec
		want []string
	}{
		{"nothing", corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}, nil},
		{"volumes", corev1.PodSpec{Volumes: []corev1.Volume{
			{VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: local("cm")}}},
			{VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}},
		}}, []string{"KIND_CONFIG_MAP cm", "KIND_SECRET s"}},
		{"projected", corev1.PodSpec{Volumes: []corev1.Volume{{VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: local("pcm")}},
				{Secret: &corev1.SecretProjection{LocalObjectReference: local("ps")}},
				{DownwardAPI: &corev1.DownwardAPIProjection{}},
			},
		}}}}}, []string{"KIND_CONFIG_MAP pcm", "KIND_SECRET ps"}},
		{"envFrom and env in init and app containers", corev1.PodSpec{
			InitContainers: []corev1.Container{{EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: local("init-cm")}}}}},
			Containers: []corev1.Container{{
				EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: local("env-s")}}},
				Env: []corev1.EnvVar{
					{Name: "A", Value: "plain"},
					{Name: "B", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: local("key-cm"), Key: "k"}}},
					{Name: "C", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: local("key-s"), Key: "k"}}},
				},
			}},
		}, []string{"KIND_CONFIG_MAP init-cm", "KIND_SECRET env-s", "KIND_CONFIG_MAP key-cm", "KIND_SECRET key-s"}},
		{"imagePullSecrets, duplicates once", corev1.PodSpec{
			ImagePullSecrets: []corev1.LocalObjectReference{local("registry"), local("registry")},
			Volumes:          []corev1.Volume{{VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "registry"}}}},
		}, []string{"KIND_SECRET registry"}},
		{"ephemeral containers", corev1.PodSpec{EphemeralContainers: []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: local("debug")}}},
		}}}}, []string{"KIND_CONFIG_MAP debug"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Spec: tc.spec}
			var got []string
			for _, k := range references(pod) {
				if k.Namespace != "ns" {
					t.Errorf("%s referenced in namespace %q, want the pod's", k, k.Namespace)
				}
				got = append(got, edgesyncv1.Kind_name[int32(k.Kind)]+" "+k.Name)
			}
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("references = %v, want %v", got, want)
			}
		})
	}
}

func TestOnlyStatusChanged(t *testing.T) {
	base := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", ResourceVersion: "1", Labels: map[string]string{"a": "b"}},
		Spec:       corev1.PodSpec{NodeName: "edge-1", Containers: []corev1.Container{{Name: "c", Image: "v1"}}},
	}
	for _, tc := range []struct {
		name   string
		change func(*corev1.Pod)
		want   bool
	}{
		{"status", func(p *corev1.Pod) { p.Status.Phase = corev1.PodRunning; p.ResourceVersion = "2" }, true},
		{"managed fields", func(p *corev1.Pod) { p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "x"}} }, true},
		{"label", func(p *corev1.Pod) { p.Labels = map[string]string{"a": "c"} }, false},
		{"image", func(p *corev1.Pod) { p.Spec.Containers[0].Image = "v2" }, false},
		{"deletion", func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := base.DeepCopy()
			tc.change(changed)
			if got := onlyStatusChanged(base, changed); got != tc.want {
				t.Fatalf("onlyStatusChanged = %v, want %v", got, tc.want)
			}
		})
	}
}
