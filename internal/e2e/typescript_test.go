package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/internal/tsclient"
)

// TestTypeScriptEdgeClient proves the protos are all a TypeScript edge
// needs: an agent built only from the client generated with protobuf-es and
// Connect-ES dials over gRPC with mTLS as its own node, completes Hello,
// registers its Node, receives a typed PodEvent for a pod bound to it (the
// image read as pod.spec.containers[0].image), and the NodeStatus it sends
// shows up in the apiserver.
func TestTypeScriptEdgeClient(t *testing.T) {
	in := install(t)
	client := testcluster.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	node := testcluster.UniqueName("ts-edge")
	certFile, keyFile := in.nodeCert(t, node)
	ns := testcluster.Namespace(t, client)
	if _, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gateway-ui"},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "ui", Image: "registry.example/gateway-ui:2.4"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	kubeletVersion := "typescript-edge-" + node
	cmd := tsclient.Command(t, in.addr, filepath.Join(in.pki, "ca.crt"), certFile, keyFile,
		node, ns, "gateway-ui", kubeletVersion)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("typescript edge client: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	want := fmt.Sprintf("pod_event APPLY %s/gateway-ui image=registry.example/gateway-ui:2.4", ns)
	if !strings.Contains(stdout.String(), want) {
		t.Fatalf("typescript client output lacks %q:\n%s", want, stdout.String())
	}

	got, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the typescript client's node registration did not create node %s: %v", node, err)
	}
	if got.Status.NodeInfo.KubeletVersion != kubeletVersion {
		t.Fatalf("node %s reports kubelet version %q, want %q from the typescript client", node, got.Status.NodeInfo.KubeletVersion, kubeletVersion)
	}
	if got.Labels["example.com/client"] != "typescript" {
		t.Errorf("node labels %v lack the label the typescript client registered", got.Labels)
	}
}
