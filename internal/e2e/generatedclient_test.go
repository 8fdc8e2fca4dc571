package e2e_test

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/internal/testcluster"
)

// generatedEdge is an edge node served by an agent built only from a client
// generated from the protos (internal/pyclient, internal/tsclient): a pod
// is bound to the node, the agent runs to completion with the node's
// certificate, and the test checks what it printed and registered.
type generatedEdge struct {
	// lang ("python", "typescript") names the agent in failures and is the
	// value of the example.com/client label it registers its Node with.
	lang                      string
	node, ns                  string
	caFile, certFile, keyFile string
	// kubeletVersion is what the agent is told to register its Node with.
	kubeletVersion string
}

// newGeneratedEdge makes a certificate for a new node and a namespace with
// pod in it, bound to that node.
func newGeneratedEdge(ctx context.Context, t *testing.T, in *installation, client kubernetes.Interface, lang string, pod *corev1.Pod) *generatedEdge {
	t.Helper()
	e := &generatedEdge{lang: lang, node: testcluster.UniqueName(lang + "-edge"), caFile: filepath.Join(in.pki, "ca.crt")}
	e.kubeletVersion = "v-" + e.node
	e.certFile, e.keyFile = in.nodeCert(t, e.node)
	e.ns = testcluster.Namespace(t, client)
	pod.Spec.NodeName = e.node
	if _, err := client.CoreV1().Pods(e.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs the agent to completion and returns what it printed; the test
// fails if it does not succeed.
func (e *generatedEdge) run(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s edge client: %v\nstdout:\n%s\nstderr:\n%s", e.lang, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// checkRegistered checks that the agent's node registration created its
// Node, with the kubelet version and the label it was given.
func (e *generatedEdge) checkRegistered(ctx context.Context, t *testing.T, client kubernetes.Interface) {
	t.Helper()
	got, err := client.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the %s client's node registration did not create node %s: %v", e.lang, e.node, err)
	}
	if got.Status.NodeInfo.KubeletVersion != e.kubeletVersion {
		t.Fatalf("node %s reports kubelet version %q, want %q from the %s client", e.node, got.Status.NodeInfo.KubeletVersion, e.kubeletVersion, e.lang)
	}
	if got.Labels["example.com/client"] != e.lang {
		t.Errorf("node labels %v lack the label the %s client registered", got.Labels, e.lang)
	}
}
