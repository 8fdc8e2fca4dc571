package kubemetrics

import (
	"net/url"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		method, url            string
		wantVerb, wantResource string
	}{
		{"GET", "/api/v1/nodes", "LIST", "nodes"},
		{"GET", "/api/v1/nodes/{name}", "GET", "nodes"},
		{"GET", "/api/v1/namespaces/{namespace}/pods", "LIST", "pods"},
		{"GET", "/api/v1/namespaces/{namespace}/pods/{name}", "GET", "pods"},
		{"GET", "/api/v1/namespaces", "LIST", "namespaces"},
		{"GET", "/api/v1/namespaces/{name}", "GET", "namespaces"},
		{"GET", "/api/v1/pods?watch={value}", "WATCH", "pods"},
		{"PATCH", "/api/v1/nodes/{name}/status", "PATCH", "nodes/status"},
		{"PATCH", "/api/v1/namespaces/{namespace}/pods/{name}/status", "PATCH", "pods/status"},
		{"POST", "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", "CREATE", "serviceaccounts/token"},
		{"PUT", "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", "UPDATE", "leases"},
		{"GET", "/apis/devices.kubeedge.io/v1beta1/devices", "LIST", "devices"},
		{"GET", "/healthz", "GET", "other"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		if verb, resource := Classify(tc.method, *u); verb != tc.wantVerb || resource != tc.wantResource {
			t.Errorf("%s %s = %s %s, want %s %s", tc.method, tc.url, verb, resource, tc.wantVerb, tc.wantResource)
		}
	}
}
