package server

import (
	"github.com/prometheus/client_golang/prometheus"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// metrics are the server's own Prometheus metrics; the gRPC ones come from
// the go-grpc-middleware prometheus provider.
type metrics struct {
	sent     *prometheus.CounterVec // by kind
	acked    *prometheus.CounterVec // by kind
	nacked   *prometheus.CounterVec // by kind
	latency  prometheus.Histogram
	upstream *prometheus.CounterVec // by kind, outcome
	ended    *prometheus.CounterVec // by code
	// batches counts EventBatch messages sent, batchedEvents the object
	// events they carried (batch.go).
	batches, batchedEvents prometheus.Counter

	// The per-message counters, looked up once: a label lookup per
	// message costs more than the increment.
	sentObjects      kindCounters
	ackedObjects     kindCounters
	sentWelcome      prometheus.Counter
	sentSyncComplete prometheus.Counter
	sentStatusResult prometheus.Counter
	sentTunnelOpen   prometheus.Counter
	sentRoute        prometheus.Counter
}

// kindCounters holds one counter of a vector per object kind.
type kindCounters [edgesyncv1.Kind_KIND_SUBSCRIPTION + 1]prometheus.Counter

func newKindCounters(vec *prometheus.CounterVec) kindCounters {
	var c kindCounters
	for k := range c {
		c[k] = vec.WithLabelValues(kindLabel(edgesyncv1.Kind(k)))
	}
	return c
}

// of returns the counter of kind k; unknown kinds share the "unknown" one.
func (c *kindCounters) of(k edgesyncv1.Kind) prometheus.Counter {
	if k < 0 || int(k) >= len(c) {
		return c[edgesyncv1.Kind_KIND_UNSPECIFIED]
	}
	return c[k]
}

func newMetrics(reg prometheus.Registerer, srv *Server) (*metrics, error) {
	m := &metrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_messages_sent_total",
			Help: "Messages sent to edges, by kind (pod, config_map, secret, device, node, welcome, sync_complete, status_result, tunnel_open, route).",
		}, []string{"kind"}),
		acked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_messages_acked_total",
			Help: "Object events acknowledged by edges, by kind.",
		}, []string{"kind"}),
		nacked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_messages_nacked_total",
			Help: "Objects edges reported they could not apply, by kind.",
		}, []string{"kind"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgesync_delivery_latency_seconds",
			Help:    "Time from queueing an object version for a node to the edge's acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_upstream_results_total",
			Help: "Answers to edge reports, by report kind and outcome (gRPC code name).",
		}, []string{"kind", "outcome"}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_sessions_ended_total",
			Help: "Sessions ended, by the gRPC code the stream ended with.",
		}, []string{"code"}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_event_batches_sent_total",
			Help: "Messages sent carrying several object events (EventBatch), to edges that accept them.",
		}),
		batchedEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_batched_events_sent_total",
			Help: "Object events sent inside an EventBatch (also counted in edgesync_messages_sent_total).",
		}),
	}
	m.sentObjects = newKindCounters(m.sent)
	m.ackedObjects = newKindCounters(m.acked)
	m.sentWelcome = m.sent.WithLabelValues("welcome")
	m.sentSyncComplete = m.sent.WithLabelValues("sync_complete")
	m.sentStatusResult = m.sent.WithLabelValues("status_result")
	m.sentTunnelOpen = m.sent.WithLabelValues("tunnel_open")
	m.sentRoute = m.sent.WithLabelValues("route")
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgesync_sessions_connected",
		Help: "Edge sessions connected to this replica.",
	}, func() float64 { return float64(srv.sessionCount()) })
	depth := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgesync_queue_depth",
		Help: "Objects queued for edges of this replica and not yet sent.",
	}, func() float64 { return float64(srv.queuedObjects()) })
	for _, c := range []prometheus.Collector{m.sent, m.acked, m.nacked, m.latency, m.upstream, m.ended, m.batches, m.batchedEvents, connected, depth} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// kindLabel names an object kind in metrics.
func kindLabel(k edgesyncv1.Kind) string {
	switch k {
	case edgesyncv1.Kind_KIND_POD:
		return "pod"
	case edgesyncv1.Kind_KIND_CONFIG_MAP:
		return "config_map"
	case edgesyncv1.Kind_KIND_SECRET:
		return "secret"
	case edgesyncv1.Kind_KIND_DEVICE:
		return "device"
	case edgesyncv1.Kind_KIND_NODE:
		return "node"
	case edgesyncv1.Kind_KIND_SERVICE:
		return "service"
	case edgesyncv1.Kind_KIND_ENDPOINT_SLICE:
		return "endpoint_slice"
	case edgesyncv1.Kind_KIND_SERVICE_ACCOUNT_TOKEN:
		return "service_account_token"
	case edgesyncv1.Kind_KIND_RESOURCE:
		return "resource"
	case edgesyncv1.Kind_KIND_SUBSCRIPTION:
		return "subscription"
	default:
		return "unknown"
	}
}

// reportKind names the report a SyncRequest carries, or "" when it carries
// none.
func reportKind(req *edgesyncv1.SyncRequest) string {
	switch req.GetMessage().(type) {
	case *edgesyncv1.SyncRequest_NodeRegistration:
		return "node_registration"
	case *edgesyncv1.SyncRequest_NodeStatus:
		return "node_status"
	case *edgesyncv1.SyncRequest_Heartbeat:
		return "heartbeat"
	case *edgesyncv1.SyncRequest_PodStatus:
		return "pod_status"
	case *edgesyncv1.SyncRequest_DeviceStatus:
		return "device_status"
	case *edgesyncv1.SyncRequest_EventReport:
		return "event"
	case *edgesyncv1.SyncRequest_Subscriptions:
		return "subscriptions"
	case *edgesyncv1.SyncRequest_ResourceWrite:
		return "resource_write"
	case *edgesyncv1.SyncRequest_RouteMessage:
		return "route_message"
	default:
		return ""
	}
}
