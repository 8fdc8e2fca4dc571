// Package testcluster connects integration tests to the real kube-apiserver
// that `make test` starts (tools/devcluster), one per test run, shared by
// every package through the EDGESYNC_TEST_KUBECONFIG environment variable.
//
// Without that variable the tests that need Kubernetes are skipped with a
// message saying how to run them, unless EDGESYNC_REQUIRE_DEVCLUSTER=1 (set
// by `make test`), where a missing cluster is a failure.
package testcluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeconfigEnv names the variable that points tests at the devcluster.
const KubeconfigEnv = "EDGESYNC_TEST_KUBECONFIG"

// RESTConfig returns an admin client configuration for the devcluster, or
// skips (fails, under `make test`) the test when there is none.
func RESTConfig(t testing.TB) *rest.Config {
	t.Helper()
	path := os.Getenv(KubeconfigEnv)
	if path == "" {
		if os.Getenv("EDGESYNC_REQUIRE_DEVCLUSTER") == "1" {
			t.Fatalf("%s is not set although EDGESYNC_REQUIRE_DEVCLUSTER=1: run the tests with `make test`", KubeconfigEnv)
		}
		t.Skipf("needs a real kube-apiserver: run `make test`, or start `bin/devcluster run` and set %s to its kubeconfig", KubeconfigEnv)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load devcluster kubeconfig %s: %v", path, err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	return cfg
}

// Client returns an admin clientset for the devcluster.
func Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	client, err := kubernetes.NewForConfig(RESTConfig(t))
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	return client
}

// UniqueName returns prefix followed by a random suffix, a valid DNS label,
// so that tests sharing one cluster never collide.
func UniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return strings.ToLower(prefix + "-" + hex.EncodeToString(b))
}

// Namespace creates a fresh namespace for one test, waits until pods can be
// created in it, and deletes it when the test ends (the namespace
// controller then deletes everything in it).
func Namespace(t testing.TB, client kubernetes.Interface) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: UniqueName("test")}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
	})
	if err := WaitServiceAccount(ctx, client, ns.Name); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// WaitServiceAccount waits until the controller-manager has created the
// default ServiceAccount of namespace: until then ServiceAccount admission
// refuses pods there, as in any real cluster.
func WaitServiceAccount(ctx context.Context, client kubernetes.Interface, namespace string) error {
	err := wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("the default ServiceAccount of namespace %s was not created (is the devcluster's controller-manager running?): %w", namespace, err)
	}
	return nil
}
