package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/controllers/servicesync"
	"github.com/edgesync/edgesync/internal/pyclient"
	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestPythonEdgeClient proves the protos are all another language needs: an
// edge written in Python with only the generated client dials over mTLS as
// its own node, completes Hello, receives a typed PodEvent for a pod bound to
// it and that pod's ServiceAccount token (a TokenEvent), and the NodeStatus
// it sends shows up in the apiserver.
func TestPythonEdgeClient(t *testing.T) {
	in := install(t)
	client := testcluster.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	e := newGeneratedEdge(ctx, t, in, client, "python", &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sensor-reader"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "reader", Image: "registry.example/sensor-reader:3.1"}}},
	})
	ns := e.ns

	// A Service meant for edges, with an endpoint outside the cluster.
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "broker", Labels: map[string]string{servicesync.OptInLabel: "true"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "mqtt", Port: 1883}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Deleted at once, not with the namespace in the background: a Service
	// meant for edges reaches every edge node of later tests.
	t.Cleanup(func() {
		_ = client.CoreV1().Services(ns).Delete(context.Background(), "broker", metav1.DeleteOptions{})
	})
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "broker-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "broker", discoveryv1.LabelManagedBy: "edgesync-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.30"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A ConfigMap an application of the edge reads through a subscription
	// (ResourceEvent): the pod's ServiceAccount may list and watch it.
	if _, err := client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "edge-settings"}, Data: map[string]string{"mode": "eco"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "read-configmaps"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"list", "watch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "default-reads-configmaps"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "read-configmaps"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "default", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	out := e.run(t, pyclient.Command(t, "edge_client.py", in.addr, e.caFile, e.certFile, e.keyFile,
		e.node, ns, "sensor-reader", e.kubeletVersion, "broker", "edge-settings"))
	want := fmt.Sprintf("pod_event EVENT_TYPE_APPLY %s/sensor-reader image=registry.example/sensor-reader:3.1", ns)
	if !strings.Contains(out, want) {
		t.Fatalf("python client output lacks %q:\n%s", want, out)
	}
	for _, want := range []string{
		// The pod's ServiceAccount token, in its kube-api-access volume.
		fmt.Sprintf("token_event EVENT_TYPE_APPLY %s/sensor-reader/kube-api-access-", ns),
		fmt.Sprintf("service_event EVENT_TYPE_APPLY %s/broker clusterIP=", ns),
		fmt.Sprintf("endpoint_slice_event EVENT_TYPE_APPLY %s/broker-1 service=broker endpoints=192.0.2.30", ns),
		// The generic object, its JSON decoded, and its subscription.
		fmt.Sprintf(`resource_event EVENT_TYPE_APPLY v1/configmaps %s/edge-settings kind=ConfigMap data={"mode": "eco"}`, ns),
		"subscription_event python-configmaps SUBSCRIPTION_STATE_ACTIVE code=0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("python client output lacks %q:\n%s", want, out)
		}
	}

	e.checkRegistered(ctx, t, client)
}
