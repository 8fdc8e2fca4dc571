// Package kubemetrics counts the requests edgesync-server's own Kubernetes
// clients send to the API server, by verb and resource, as the Prometheus
// counter edgesync_kube_requests_total. It is what tells an operator (and
// the benchmark) how much of the API server's load is edgesync's: the
// apiserver's own metrics mix every client of the cluster.
package kubemetrics

import (
	"context"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientmetrics "k8s.io/client-go/tools/metrics"
)

var (
	registerOnce sync.Once
	requests     = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgesync_kube_requests_total",
		Help: "Requests this process's Kubernetes clients sent to the API server, by verb (LIST, GET, CREATE, UPDATE, PATCH, DELETE) and resource (with its subresource as resource/subresource). Watches are not counted.",
	}, []string{"verb", "resource"})
)

// Register makes every client-go client of this process count its requests
// into reg. client-go has one set of metric hooks per process, so only the
// first call takes effect; call it once, from main.
func Register(reg prometheus.Registerer) error {
	var err error
	registerOnce.Do(func() {
		if err = reg.Register(requests); err != nil {
			return
		}
		clientmetrics.Register(clientmetrics.RegisterOpts{RequestLatency: latencyHook{}})
	})
	return err
}

// latencyHook sees every request's HTTP verb and URL template once it has
// its result.
type latencyHook struct{}

func (latencyHook) Observe(_ context.Context, method string, u url.URL, _ time.Duration) {
	verb, resource := Classify(method, u)
	requests.WithLabelValues(verb, resource).Inc()
}

// Classify names a request the way the API server's apiserver_request_total
// does: a GET of a collection is a LIST, of one object a GET. u is
// client-go's URL template (names replaced by {name}, namespaces by
// {namespace}).
func Classify(method string, u url.URL) (verb, resource string) {
	segments := strings.Split(strings.Trim(u.Path, "/"), "/")
	// Skip /api/v1 or /apis/<group>/<version>.
	switch {
	case len(segments) >= 2 && segments[0] == "api":
		segments = segments[2:]
	case len(segments) >= 3 && segments[0] == "apis":
		segments = segments[3:]
	default:
		return strings.ToUpper(method), "other"
	}
	if len(segments) >= 3 && segments[0] == "namespaces" {
		segments = segments[2:] // a namespaced resource
	}
	if len(segments) == 0 {
		return strings.ToUpper(method), "other"
	}
	resource = segments[0]
	named := len(segments) >= 2
	if len(segments) >= 3 {
		resource += "/" + segments[2]
	}
	switch method {
	case "GET":
		if u.Query().Has("watch") {
			return "WATCH", resource
		}
		if named {
			return "GET", resource
		}
		return "LIST", resource
	case "POST":
		return "CREATE", resource
	case "PUT":
		return "UPDATE", resource
	}
	return strings.ToUpper(method), resource
}
