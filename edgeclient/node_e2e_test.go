package edgeclient_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/cloudtest"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestEndToEndNodeObjectReachesItsEdge runs the whole chain (real
// kube-apiserver, controllers, sync server, client): the node's own Node
// reaches the edge once it registers, and kubectl label and cordon reach
// it again, into the store the agent reads.
func TestEndToEndNodeObjectReachesItsEdge(t *testing.T) {
	kube := testcluster.Client(t)
	node := cloudtest.Node(t, "edge-node-obj")
	env := cloudtest.Start(t)

	certFile, keyFile := env.NodeCert(t, node)
	c := newClient(t, env.Addr, env.CAFile, certFile, keyFile, node, t.TempDir())
	c.start()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()

	reg, err := c.RegisterNode(edgeclient.NodeRegistration{Labels: map[string]string{"edgesync.test/site": "factory-7"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Wait(ctx); err != nil {
		t.Fatalf("register node: %v", err)
	}
	// waitNode waits until the edge holds its Node and cond holds on it.
	waitNode := func(what string, cond func(*corev1.Node) bool) *corev1.Node {
		t.Helper()
		var got *corev1.Node
		wait(t, c.Client, what, func(edgeclient.State) bool {
			got, _ = c.Node()
			return got != nil && cond(got)
		})
		return got
	}
	n := waitNode("the node's Node to reach the edge", func(n *corev1.Node) bool {
		return n.Labels["edgesync.test/site"] == "factory-7"
	})
	if n.Name != node || n.Namespace != "" {
		t.Errorf("edge holds Node %s/%s, want /%s", n.Namespace, n.Name, node)
	}

	// kubectl label node NODE edgesync.test/zone=north
	if _, err := kube.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"edgesync.test/zone":"north"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitNode("the label to reach the edge", func(n *corev1.Node) bool { return n.Labels["edgesync.test/zone"] == "north" })

	// kubectl cordon NODE
	if _, err := kube.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType,
		[]byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitNode("the cordon to reach the edge", func(n *corev1.Node) bool { return n.Spec.Unschedulable })
}
