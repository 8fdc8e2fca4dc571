package agent

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/cloudtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// liveEdge is an agent for one node, connected to the real controllers
// and server on the devcluster.
type liveEdge struct {
	kube     kubernetes.Interface
	env      *servertest.Env // the sync server the agent dials
	ns       string
	node     string
	storeDir string
	out      *syncBuffer
	client   atomic.Pointer[edgeclient.Client]
	ctx      context.Context // ends at the test's deadline for waits
}

// startLiveEdge runs controllers, the server and an agent until the test
// ends, and waits until the agent's node is registered. configure, if
// given, changes the agent's Config before it starts.
func startLiveEdge(t *testing.T, configure ...func(*Config)) *liveEdge {
	t.Helper()
	e := &liveEdge{kube: testcluster.Client(t), storeDir: t.TempDir(), out: &syncBuffer{}}
	e.ns = testcluster.Namespace(t, e.kube)
	e.node = cloudtest.Node(t, "edge")
	e.env = cloudtest.Start(t)

	certFile, keyFile := e.env.NodeCert(t, e.node)
	cfg := Config{
		Client: edgeclient.Config{
			Server: e.env.Addr, CAFile: e.env.CAFile, CertFile: certFile, KeyFile: keyFile,
			NodeName: e.node, StoreDir: e.storeDir, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		},
		Version: "e2e", Out: e.out,
		OnClient: func(c *edgeclient.Client) { e.client.Store(c) },
	}
	for _, f := range configure {
		f(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(wcancel)
	e.ctx = wctx
	e.poll(t, "the node to register", func() (bool, error) {
		_, err := e.kube.CoreV1().Nodes().Get(wctx, e.node, metav1.GetOptions{})
		return err == nil, notYet(err)
	})
	return e
}

// poll checks cond until it holds: the API server and the files the agent
// writes tell nobody when they change.
func (e *liveEdge) poll(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		select {
		case <-e.ctx.Done():
			t.Fatalf("waiting for %s: %v", what, e.ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// notYet treats NotFound as "not yet".
func notYet(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// TestEndToEndPodLifecycle runs the agent against the real controllers,
// server and kube-apiserver: the node registers itself, a pod bound to it
// becomes Running and Ready in the API server, and a deleted pod goes away
// once the agent reports it terminated.
func TestEndToEndPodLifecycle(t *testing.T) {
	e := startLiveEdge(t)
	kube, ns := e.kube, e.ns
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       corev1.PodSpec{NodeName: e.node, Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(e.ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.poll(t, "the pod to be Running and Ready", func() (bool, error) {
		p, err := kube.CoreV1().Pods(ns).Get(e.ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return p.Status.Phase == corev1.PodRunning, nil
			}
		}
		return false, nil
	})
	if err := kube.CoreV1().Pods(ns).Delete(e.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.poll(t, "the deleted pod to go away", func() (bool, error) {
		_, err := kube.CoreV1().Pods(ns).Get(e.ctx, "web", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}
