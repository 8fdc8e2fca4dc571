package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestEndToEndPodLifecycle runs the agent against the real controllers,
// server and kube-apiserver: the node registers itself, a pod bound to it
// becomes Running and Ready in the API server, and a deleted pod goes away
// once the agent reports it terminated.
func TestEndToEndPodLifecycle(t *testing.T) {
	kube := testcluster.Client(t)
	ns := testcluster.Namespace(t, kube)
	node := testcluster.UniqueName("edge")
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))

	ctrls, err := controllers.New(controllers.Config{RESTConfig: testcluster.RESTConfig(t), DisableDevices: true, Logger: log}, nil)
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
	t.Cleanup(func() { _ = kube.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })

	certFile, keyFile := env.NodeCert(t, node)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Client: edgeclient.Config{
				Server: env.Addr, CAFile: env.CAFile, CertFile: certFile, KeyFile: keyFile,
				NodeName: node, StoreDir: t.TempDir(), Logger: log,
			},
			Version: "e2e", Out: &syncBuffer{},
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}()

	wctx, wcancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer wcancel()
	// poll observes the API server, which tells nobody when it changes.
	poll := func(what string, cond func() (bool, error)) {
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
			case <-wctx.Done():
				t.Fatalf("waiting for %s: %v", what, wctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	poll("the node to register", func() (bool, error) {
		_, err := kube.CoreV1().Nodes().Get(wctx, node, metav1.GetOptions{})
		return err == nil, notYet(err)
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(wctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("the pod to be Running and Ready", func() (bool, error) {
		p, err := kube.CoreV1().Pods(ns).Get(wctx, "web", metav1.GetOptions{})
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
	if err := kube.CoreV1().Pods(ns).Delete(wctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll("the deleted pod to go away", func() (bool, error) {
		_, err := kube.CoreV1().Pods(ns).Get(wctx, "web", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// notYet treats NotFound as "not yet".
func notYet(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
