package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
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

	node := testcluster.UniqueName("py-edge")
	certFile, keyFile := in.nodeCert(t, node)
	ns := testcluster.Namespace(t, client)
	if _, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sensor-reader"},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "reader", Image: "registry.example/sensor-reader:3.1"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A Service meant for edges, with an endpoint outside the cluster.
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "broker", Labels: map[string]string{servicesync.OptInLabel: "true"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "mqtt", Port: 1883}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Deleted at once, not with the namespace in the background: a Service
	// meant for edges reaches every edge node of later tests.
	t.Cleanup(func() { _ = client.CoreV1().Services(ns).Delete(context.Background(), "broker", metav1.DeleteOptions{}) })
	if _, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "broker-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "broker", discoveryv1.LabelManagedBy: "edgesync-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"192.0.2.30"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	kubeletVersion := "python-edge-" + node
	cmd := pyclient.Command(t, "edge_client.py", in.addr, filepath.Join(in.pki, "ca.crt"), certFile, keyFile,
		node, ns, "sensor-reader", kubeletVersion, "broker")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("python edge client: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	want := fmt.Sprintf("pod_event EVENT_TYPE_APPLY %s/sensor-reader image=registry.example/sensor-reader:3.1", ns)
	if !strings.Contains(stdout.String(), want) {
		t.Fatalf("python client output lacks %q:\n%s", want, stdout.String())
	}
	for _, want := range []string{
		// The pod's ServiceAccount token, in its kube-api-access volume.
		fmt.Sprintf("token_event EVENT_TYPE_APPLY %s/sensor-reader/kube-api-access-", ns),
		fmt.Sprintf("service_event EVENT_TYPE_APPLY %s/broker clusterIP=", ns),
		fmt.Sprintf("endpoint_slice_event EVENT_TYPE_APPLY %s/broker-1 service=broker endpoints=192.0.2.30", ns),
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("python client output lacks %q:\n%s", want, stdout.String())
		}
	}

	got, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the python client's node registration did not create node %s: %v", node, err)
	}
	if got.Status.NodeInfo.KubeletVersion != kubeletVersion {
		t.Fatalf("node %s reports kubelet version %q, want %q from the python client", node, got.Status.NodeInfo.KubeletVersion, kubeletVersion)
	}
	if got.Labels["example.com/client"] != "python" {
		t.Errorf("node labels %v lack the label the python client registered", got.Labels)
	}
}
