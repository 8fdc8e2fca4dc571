package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// fileIs waits until the file at path holds want (cond: any content when
// want is "").
func (e *liveEdge) fileIs(t *testing.T, path string, want func(string) bool) string {
	t.Helper()
	var got string
	e.poll(t, "file "+path, func() (bool, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, nil
		}
		got = string(b)
		return want(got), nil
	})
	return got
}

func equals(s string) func(string) bool { return func(got string) bool { return got == s } }
func nonEmpty(got string) bool          { return got != "" }

func TestAgentWritesPodVolumesWithTheirTokens(t *testing.T) {
	e := startLiveEdge(t)
	ctx := e.ctx
	if _, err := e.kube.CoreV1().ConfigMaps(e.ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "app"}, Data: map[string]string{"greeting": "hello"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.kube.CoreV1().Secrets(e.ns).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "app"}, Data: map[string][]byte{"password": []byte("s3cret")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := e.kube.CoreV1().Pods(e.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.PodSpec{
			NodeName:   e.node,
			Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}},
			Volumes: []corev1.Volume{
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app"}}}},
				{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "app"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var apiAccess string
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			apiAccess = v.Name
		}
	}
	if apiAccess == "" {
		t.Fatal("the pod has no kube-api-access volume (is ServiceAccount admission on?)")
	}
	vol := func(name string) string {
		return filepath.Join(e.storeDir, PodsDir, string(pod.UID), "volumes", name)
	}

	// What the pod would read: its token, the cluster's CA and namespace,
	// its ConfigMap and Secret.
	token := e.fileIs(t, filepath.Join(vol(apiAccess), "token"), nonEmpty)
	review, err := e.kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !review.Status.Authenticated || !slices.Equal(review.Status.User.Extra["authentication.kubernetes.io/pod-uid"], []string{string(pod.UID)}) {
		t.Errorf("the token on disk: authenticated %v, bound to %v; want accepted and bound to pod %s (%s)",
			review.Status.Authenticated, review.Status.User.Extra["authentication.kubernetes.io/pod-uid"], pod.UID, review.Status.Error)
	}
	rootCA, err := e.kube.CoreV1().ConfigMaps(e.ns).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.fileIs(t, filepath.Join(vol(apiAccess), "ca.crt"), equals(rootCA.Data["ca.crt"]))
	e.fileIs(t, filepath.Join(vol(apiAccess), "namespace"), equals(e.ns))
	e.fileIs(t, filepath.Join(vol("config"), "greeting"), equals("hello"))
	e.fileIs(t, filepath.Join(vol("creds"), "password"), equals("s3cret"))

	// A changed ConfigMap arrives as a new ..data version.
	before, err := os.Readlink(filepath.Join(vol("config"), "..data"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.kube.CoreV1().ConfigMaps(e.ns).Update(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "app"}, Data: map[string]string{"greeting": "hi"},
	}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.fileIs(t, filepath.Join(vol("config"), "greeting"), equals("hi"))
	if after, _ := os.Readlink(filepath.Join(vol("config"), "..data")); after == before {
		t.Errorf("the update was written in place: ..data still points at %s", before)
	}
	if !strings.Contains(e.out.String(), "Token") {
		t.Errorf("the agent printed no Token line:\n%s", e.out.String())
	}
	if strings.Contains(e.out.String(), token) {
		t.Error("the agent printed the token")
	}

	// Deleting the pod deletes its tokens at the edge and its directory.
	if err := e.kube.CoreV1().Pods(e.ns).Delete(ctx, "web", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatal(err)
	}
	e.poll(t, "the pod's tokens to leave the store", func() (bool, error) {
		tokens, err := e.client.Load().List(edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN)
		return len(tokens) == 0, err
	})
	e.poll(t, "the pod's directory to go", func() (bool, error) {
		_, err := os.Stat(filepath.Join(e.storeDir, PodsDir, string(pod.UID)))
		return os.IsNotExist(err), nil
	})
}
