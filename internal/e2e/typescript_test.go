package e2e_test

import (
	"context"
	"fmt"
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

	e := newGeneratedEdge(ctx, t, in, client, "typescript", &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "gateway-ui"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "ui", Image: "registry.example/gateway-ui:2.4"}}},
	})
	out := e.run(t, tsclient.Command(t, in.addr, e.caFile, e.certFile, e.keyFile,
		e.node, e.ns, "gateway-ui", e.kubeletVersion))
	want := fmt.Sprintf("pod_event APPLY %s/gateway-ui image=registry.example/gateway-ui:2.4", e.ns)
	if !strings.Contains(out, want) {
		t.Fatalf("typescript client output lacks %q:\n%s", want, out)
	}
	e.checkRegistered(ctx, t, client)
}
