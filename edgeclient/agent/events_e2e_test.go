package agent

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// describePod runs the real kubectl describe pod.
func describePod(t *testing.T, ns, name string) string {
	t.Helper()
	cmd := exec.Command(repo.Binary(t, "kubectl"), "describe", "pod", "-n", ns, name)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+os.Getenv(testcluster.KubeconfigEnv))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl describe pod: %v\n%s", err, out)
	}
	return string(out)
}

func TestAgentEventsShowInKubectlDescribe(t *testing.T) {
	e := startLiveEdge(t)
	pod, err := e.kube.CoreV1().Pods(e.ns).Create(e.ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.PodSpec{NodeName: e.node, Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := func() map[string]bool {
		list, err := e.kube.CoreV1().Events(e.ns).List(e.ctx, metav1.ListOptions{FieldSelector: fields.Set{
			"involvedObject.uid": string(pod.UID),
		}.AsSelector().String()})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, ev := range list.Items {
			if ev.ReportingInstance == e.node {
				got[ev.Reason] = true
			}
		}
		return got
	}
	e.poll(t, "Pulled, Created and Started events from the edge", func() (bool, error) {
		got := reasons()
		return got["Pulled"] && got["Created"] && got["Started"], nil
	})
	out := describePod(t, e.ns, "web")
	for _, want := range []string{"Started container main", "Created container main", "already present on machine"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl describe pod does not show %q:\n%s", want, out)
		}
	}

	// Deleting the pod: the runtime kills its container.
	if err := e.kube.CoreV1().Pods(e.ns).Delete(e.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.poll(t, "a Killing event from the edge", func() (bool, error) { return reasons()["Killing"], nil })
}
