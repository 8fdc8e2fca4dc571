package e2e_test

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/edgesync/edgesync/internal/testcluster"
)

// The API server puts the server's Lease writes at the priority levels
// deploy/flowcontrol gives them, not at workload-low with the rest of a
// ServiceAccount's requests: it names the FlowSchema and priority level of
// every request in the response's headers.
func TestServerLeaseWritesHaveTheirOwnPriority(t *testing.T) {
	in := install(t)
	admin := testcluster.Client(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", in.serverKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	uid := func(kind, name string) string {
		t.Helper()
		var got metav1.Object
		var err error
		switch kind {
		case "FlowSchema":
			got, err = admin.FlowcontrolV1().FlowSchemas().Get(t.Context(), name, metav1.GetOptions{})
		default:
			got, err = admin.FlowcontrolV1().PriorityLevelConfigurations().Get(t.Context(), name, metav1.GetOptions{})
		}
		if err != nil {
			t.Fatalf("%s %s (deploy/flowcontrol): %v", kind, name, err)
		}
		return string(got.GetUID())
	}
	node := "flowcontrol-" + strings.ToLower(rand.Text()[:8])
	for _, tc := range []struct {
		namespace, flowSchema, level string
	}{
		{"edgesync-system", "edgesync-replica-leases", "leader-election"},
		{"kube-node-lease", "edgesync-node-leases", "edgesync-node-leases"},
	} {
		body := fmt.Sprintf(`{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":%q},"spec":{"holderIdentity":%q}}`, node, node)
		url := fmt.Sprintf("%s/apis/coordination.k8s.io/v1/namespaces/%s/leases", cfg.Host, tc.namespace)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("the server's ServiceAccount creating a Lease in %s: HTTP %d, want 201", tc.namespace, resp.StatusCode)
		}
		if got, want := resp.Header.Get("X-Kubernetes-PF-FlowSchema-UID"), uid("FlowSchema", tc.flowSchema); got != want {
			t.Errorf("a Lease write in %s was classified by FlowSchema %s, want %s (%s)", tc.namespace, got, tc.flowSchema, want)
		}
		if got, want := resp.Header.Get("X-Kubernetes-PF-PriorityLevel-UID"), uid("PriorityLevelConfiguration", tc.level); got != want {
			t.Errorf("a Lease write in %s ran at priority level %s, want %s (%s)", tc.namespace, got, tc.level, want)
		}
		if err := admin.CoordinationV1().Leases(tc.namespace).Delete(t.Context(), node, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	}
}
