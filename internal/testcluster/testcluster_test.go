package testcluster_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestInformerSeesObjectWrittenToAPIServer proves the devcluster is a real
// apiserver: an object written through the API comes back through a watch.
func TestInformerSeesObjectWrittenToAPIServer(t *testing.T) {
	client := testcluster.Client(t)
	ns := testcluster.Namespace(t, client)

	factory := informers.NewSharedInformerFactoryWithOptions(client, time.Minute, informers.WithNamespace(ns))
	informer := factory.Core().V1().ConfigMaps()
	seen := make(chan *corev1.ConfigMap, 10)
	// Only the test's own ConfigMap: the controller-manager publishes
	// kube-root-ca.crt into every namespace.
	if _, err := informer.Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: func(obj any) bool { cm, ok := obj.(*corev1.ConfigMap); return ok && cm.Name == "greeting" },
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { seen <- obj.(*corev1.ConfigMap) },
			UpdateFunc: func(_, obj any) { seen <- obj.(*corev1.ConfigMap) },
		},
	}); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	factory.Start(ctx.Done())
	t.Cleanup(factory.Shutdown)
	if !cache.WaitForCacheSync(ctx.Done(), informer.Informer().HasSynced) {
		t.Fatal("informer cache did not sync")
	}

	created, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "greeting"},
		Data:       map[string]string{"hello": "world"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create configmap: %v", err)
	}

	select {
	case got := <-seen:
		if got.UID != created.UID || got.Data["hello"] != "world" {
			t.Fatalf("informer saw %s/%s uid %s data %v, want uid %s data hello=world", got.Namespace, got.Name, got.UID, got.Data, created.UID)
		}
		cached, err := informer.Lister().ConfigMaps(ns).Get("greeting")
		if err != nil || cached.ResourceVersion != created.ResourceVersion {
			t.Fatalf("lister: %v, resourceVersion %v, want %s", err, cached, created.ResourceVersion)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("informer did not see the configmap within 30s")
	}
}
