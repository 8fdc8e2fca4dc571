package router

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	downward   *prometheus.CounterVec // by result
	upward     *prometheus.CounterVec // by result
	requests   *prometheus.CounterVec // REST calls by code
	drops      *prometheus.CounterVec // by reason
	unexpected prometheus.Counter
	latency    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, r *Router) (*metrics, error) {
	m := &metrics{
		downward: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_router_deliveries_total",
			Help: "Messages routed to edge applications, by result (delivered, failed: the edge answered an error).",
		}, []string{"result"}),
		upward: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_router_upward_total",
			Help: "Messages from edge applications, by result (delivered, duplicate, failed, no_rule).",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_router_rest_requests_total",
			Help: "Calls to the router's REST port, by HTTP status code.",
		}, []string{"code"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgesync_router_dropped_total",
			Help: "Messages for edges not delivered, by reason (buffer_full: refused at once; expired: time to live ran out; moved: the node went to another replica while offline).",
		}, []string{"reason"}),
		unexpected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgesync_router_unexpected_results_total",
			Help: "RouteResults for ids the node was not sent (or already answered), ignored.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgesync_router_delivery_seconds",
			Help:    "From accepting a message to the edge's answer.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
	buffered := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "edgesync_router_buffered_messages",
		Help: "Messages for edges waiting to be sent or answered, on this replica.",
	}, r.buffered)
	if reg != nil {
		for _, c := range []prometheus.Collector{m.downward, m.upward, m.requests, m.drops, m.unexpected, m.latency, buffered} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) dropped(err error) {
	reason := "other"
	switch {
	case errors.Is(err, ErrBufferFull):
		reason = "buffer_full"
	case errors.Is(err, ErrExpired):
		reason = "expired"
	case errors.Is(err, ErrMoved):
		reason = "moved"
	}
	m.drops.WithLabelValues(reason).Inc()
}
