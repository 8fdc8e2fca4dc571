// Package cloudtest runs the whole cloud side of edgesync for tests of the
// edge side (package edgeclient, the reference agent): the real
// controllers, watching the devcluster's kube-apiserver (package
// testcluster), behind a real sync server with mutual TLS (package
// servertest).
//
//	env := cloudtest.Start(t)
//	node := cloudtest.Node(t, "edge")
//	certFile, keyFile := env.NodeCert(t, node)
//
// Both run until the test ends.
package cloudtest

import (
	"context"
	"errors"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// Start runs the controllers (without the device controller, which needs
// the devices.kubeedge.io CRDs) and a sync server in front of them until
// the test ends. The controllers log warnings and errors to the test log;
// an error they end with fails the test.
func Start(t testing.TB) *servertest.Env {
	t.Helper()
	return start(t, true)
}

// StartWithDevices is Start with the device controller too: the
// devices.kubeedge.io CRDs must be installed (testcluster.InstallCRDs).
func StartWithDevices(t testing.TB) *servertest.Env {
	t.Helper()
	return start(t, false)
}

func start(t testing.TB, disableDevices bool) *servertest.Env {
	t.Helper()
	ctrls, err := controllers.New(controllers.Config{
		RESTConfig: testcluster.RESTConfig(t), DisableDevices: disableDevices,
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
	})
	if err != nil {
		t.Fatal(err)
	}
	env := servertest.Start(t, ctrls)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctrls.Run(ctx, env.Server) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("controllers: %v", err)
		}
	})
	return env
}

// Node returns a new node name, prefix and a random suffix, for an edge to
// register; its Node is deleted when the test ends.
func Node(t testing.TB, prefix string) string {
	t.Helper()
	kube := testcluster.Client(t)
	node := testcluster.UniqueName(prefix)
	t.Cleanup(func() { _ = kube.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	return node
}
