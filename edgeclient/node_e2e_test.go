package edgeclient_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestEndToEndNodeObjectReachesItsEdge runs the whole chain (real
// kube-apiserver, controllers, sync server, client): the node's own Node
// reaches the edge once it registers, and kubectl label and cordon reach
// it again, into the store the agent reads.
func TestEndToEndNodeObjectReachesItsEdge(t *testing.T) {
	kube := testcluster.Client(t)
	node := testcluster.UniqueName("edge-node-obj")

	ctrls, err := controllers.New(controllers.Config{
		RESTConfig: testcluster.RESTConfig(t), DisableDevices: true,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	env := servertest.Start(t, ctrls)
	runCtx, stopCtrls := context.WithCancel(context.Background())
	ctrlsDone := make(chan error, 1)
	go func() { ctrlsDone <- ctrls.Run(runCtx) }()
	t.Cleanup(func() {
		stopCtrls()
		if err := <-ctrlsDone; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("controllers: %v", err)
		}
	})
	t.Cleanup(func() {
		_ = kube.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{})
	})

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
