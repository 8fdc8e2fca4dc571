package cluster

import (
	"strings"
	"testing"

	"github.com/edgesync/edgesync/internal/bench/measure"
)

func TestRequestsCountsByVerbResourceAndSubresource(t *testing.T) {
	text := `# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="UPDATE",version="v1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="UPDATE",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="status",verb="PATCH",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="nodes",scope="resource",subresource="",verb="PATCH",version="v1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="LIST",version="v1"} 1
`
	m, err := measure.ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		verb, resource, sub string
		want                float64
	}{
		{"UPDATE", "leases", "", 9},
		{"PATCH", "nodes", "status", 3},
		{"PATCH", "nodes", "", 5},
		{"LIST", "pods", "", 1},
		{"GET", "pods", "", 0},
	}
	for _, tt := range tests {
		if got := Requests(m, tt.verb, tt.resource, tt.sub); got != tt.want {
			t.Errorf("Requests(%s %s/%s) = %v, want %v", tt.verb, tt.resource, tt.sub, got, tt.want)
		}
	}
}
