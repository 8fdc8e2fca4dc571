package kubeletapi

import (
	"strings"
	"testing"
)

func TestProxiedNode(t *testing.T) {
	for _, tc := range []struct {
		forwarded, path, node, err string
	}{
		{"/api/v1/nodes/edge-1/proxy/stats/summary", "/stats/summary", "edge-1", ""},
		{"/api/v1/nodes/edge-1:10250/proxy/metrics", "/metrics", "edge-1", ""},
		{"/api/v1/nodes/https:edge-1:10250/proxy/pods", "/pods", "edge-1", ""},
		{"", "/stats/summary", "", "only through the kube-apiserver's node proxy"},
		{"/api/v1/nodes/edge-1/proxy/stats/summary", "/metrics", "", "does not end in the requested path"},
		{"/api/v1/namespaces/x/pods/y/proxy/stats/summary", "/stats/summary", "", "not a node proxy path"},
		{"/api/v1/nodes/edge-1/proxyx/stats/summary", "/stats/summary", "", "not a node proxy path"},
		{"/api/v1/nodes/edge-1/status", "/stats/summary", "", "not a node proxy path"},
		{"/api/v1/nodes//proxy/healthz", "/healthz", "", "names no node"},
	} {
		node, err := proxiedNode(tc.forwarded, tc.path)
		if tc.err == "" {
			if err != nil || node != tc.node {
				t.Errorf("proxiedNode(%q, %q) = %q, %v; want %q", tc.forwarded, tc.path, node, err, tc.node)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("proxiedNode(%q, %q) = %q, %v; want an error saying %q", tc.forwarded, tc.path, node, err, tc.err)
		}
	}
}

func TestNodeSubresources(t *testing.T) {
	for path, want := range map[string]string{
		"/stats/summary": "stats", "/metrics": "metrics", "/metrics/cadvisor": "metrics", "/metrics/resource": "metrics",
		"/pods": "pods,proxy", "/healthz": "healthz,proxy",
		"/stats/../logs": "", "/logs/messages": "", "/configz": "", "/exec/ns/pod/c": "", "/stats/": "",
	} {
		subs, ok := nodeSubresources(path)
		if got := strings.Join(subs, ","); got != want || ok != (want != "") {
			t.Errorf("nodeSubresources(%q) = %q, %v; want %q", path, got, ok, want)
		}
	}
}
