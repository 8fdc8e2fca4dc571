package localapi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// Pods are told the local API's address by Service default/kubernetes,
// and trust it through the ca.crt of kube-root-ca.crt; what the cloud
// sends under those names does not undo either.
func TestPodsAreToldWhereTheLocalAPIIs(t *testing.T) {
	creds, err := EnsureCredentials(filepath.Join(t.TempDir(), "localapi"), testNode)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(creds.CAPath())
	if err != nil {
		t.Fatal(err)
	}
	cloudService := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1", Ports: []corev1.ServicePort{{Name: "https", Port: 443}}}}
	rootCA := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "kube-root-ca.crt"},
		Data: map[string]string{"ca.crt": "-----BEGIN CERTIFICATE-----\ncluster\n-----END CERTIFICATE-----"}}
	other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "settings"}, Data: map[string]string{"ca.crt": "mine"}}
	fake := &fakeReporter{connected: true, held: []edgeclient.Object{{Service: cloudService}, {ConfigMap: rootCA}, {ConfigMap: other}}}
	srv, err := newServer(testNode, fake, Options{Credentials: creds, Applications: true, ApplicationsAddress: "10.0.2.1:10550"})
	if err != nil {
		t.Fatal(err)
	}

	svc, _ := srv.cache.get(objectKey{"/services", "default", "kubernetes"}).(*corev1.Service)
	if svc == nil || svc.Spec.ClusterIP != "10.0.2.1" || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 10550 {
		t.Fatalf("Service default/kubernetes served: %+v, want clusterIP 10.0.2.1 port 10550", svc)
	}
	srv.OnEvent(edgeclient.Event{Type: edgeclient.Deleted, Key: edgeclient.Key{Kind: edgesyncv1.Kind_KIND_SERVICE, Namespace: "default", Name: "kubernetes"}})
	if srv.cache.get(objectKey{"/services", "default", "kubernetes"}) == nil {
		t.Error("the cloud's delete of default/kubernetes removed the synthetic Service")
	}

	cm, _ := srv.cache.get(objectKey{"/configmaps", "app", "kube-root-ca.crt"}).(*corev1.ConfigMap)
	if cm == nil || !strings.HasPrefix(cm.Data["ca.crt"], rootCA.Data["ca.crt"]+"\n") || !strings.HasSuffix(cm.Data["ca.crt"], string(ca)) {
		t.Errorf("kube-root-ca.crt served: %q, want the cluster's CA, then the local API's", cm.Data["ca.crt"])
	}
	if rootCA.Data["ca.crt"] != "-----BEGIN CERTIFICATE-----\ncluster\n-----END CERTIFICATE-----" {
		t.Error("the held ConfigMap was changed in place")
	}
	if got := srv.cache.get(objectKey{"/configmaps", "app", "settings"}).(*corev1.ConfigMap); got.Data["ca.crt"] != "mine" {
		t.Errorf("another ConfigMap's ca.crt became %q", got.Data["ca.crt"])
	}

	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"a host name", Options{Credentials: creds, Applications: true, ApplicationsAddress: "localhost:10550"}},
		{"no port", Options{Credentials: creds, Applications: true, ApplicationsAddress: "127.0.0.1"}},
		{"without Applications", Options{Credentials: creds, ApplicationsAddress: "127.0.0.1:10550"}},
		{"without Credentials", Options{Applications: true, ApplicationsAddress: "127.0.0.1:10550"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := newServer(testNode, &fakeReporter{}, tc.opts); err == nil {
				t.Error("accepted")
			}
		})
	}
}
