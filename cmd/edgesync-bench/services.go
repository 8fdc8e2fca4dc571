package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/edgesync/edgesync/controllers/servicesync"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/bench/cluster"
	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/measure"
	"github.com/edgesync/edgesync/server/feed"
)

// servicesResult is scenario 7: one Service meant for edges with many
// endpoints in zones, its slices filtered per node by zone hints, and
// endpoints changing readiness.
type servicesResult struct {
	Done      bool `json:"done"`
	Nodes     int  `json:"nodes"`
	Zones     int  `json:"zones"`
	Endpoints int  `json:"endpoints"`
	Slices    int  `json:"slices"`
	Updates   int  `json:"updates"`
	// Latency is from the slice write to each node's receipt of the new
	// version, over every node whose view changed and every update.
	Latency measure.Summary `json:"latency"`
	// Receivers per update are the nodes whose view of the slice changed
	// (those of the changed endpoint's zone); OtherReceivers counts the
	// other nodes that were sent the slice again anyway (should be none).
	Receivers      int `json:"receivers_per_update"`
	OtherReceivers int `json:"other_receivers"`
	// Encodings per update are the distinct new versions of the changed
	// slice those nodes hold: the controller encodes each distinct
	// filtered view of a slice once, so this is its encode count.
	EncodingsMean float64 `json:"encodings_per_update_mean"`
	EncodingsMax  int     `json:"encodings_per_update_max"`
}

const (
	serviceZones          = 10
	serviceEndpoints      = 1000
	endpointsPerSlice     = 100
	serviceName           = "edge-svc"
	serviceSettleDeadline = 5 * time.Minute
)

// servicesScenario runs scenario 7 on nodes, which fleet holds: the nodes
// are spread over serviceZones zones, one Service with serviceEndpoints
// endpoints hinted to their zones reaches every node, then updates turn
// one endpoint ready or not-ready at a time.
func (b *bench) servicesScenario(ctx context.Context, cl *cluster.Cluster, fleet *edgesim.Fleet, nodes []string) error {
	s := &b.result.Kube.Services
	s.Nodes, s.Zones, s.Endpoints, s.Updates = len(nodes), serviceZones, serviceEndpoints, b.sc.FanoutUpdates
	cfg, err := cl.RESTConfig()
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 500, 1000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	b.prog.say("services: spreading %d nodes over %d zones", len(nodes), serviceZones)
	for i, node := range nodes {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:"zone-%d"}}}`, corev1.LabelTopologyZone, i%serviceZones)
		if _, err := client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("label node %s: %w", node, err)
		}
	}
	sameZone := corev1.ServiceTrafficDistributionPreferSameZone
	if _, err := client.CoreV1().Services(kubeNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: serviceName, Labels: map[string]string{servicesync.OptInLabel: "true"}},
		Spec: corev1.ServiceSpec{
			TrafficDistribution: &sameZone,
			Ports:               []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service: %w", err)
	}
	// Slices managed by hand, as for endpoints outside the cluster: the
	// scenario decides exactly what changes.
	var created []*discoveryv1.EndpointSlice
	for k := range serviceEndpoints / endpointsPerSlice {
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", serviceName, k), Labels: map[string]string{
				discoveryv1.LabelServiceName: serviceName, discoveryv1.LabelManagedBy: "edgesync-bench",
			}},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		for j := range endpointsPerSlice {
			i := k*endpointsPerSlice + j
			ready, node := true, nodes[i%len(nodes)]
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
				Addresses:  []string{fmt.Sprintf("10.200.%d.%d", i/250, i%250+1)},
				Conditions: discoveryv1.EndpointConditions{Ready: &ready},
				NodeName:   &node,
				Hints:      &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: fmt.Sprintf("zone-%d", i%serviceZones)}}},
			})
		}
		got, err := client.DiscoveryV1().EndpointSlices(kubeNamespace).Create(ctx, slice, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create endpointslice: %w", err)
		}
		created = append(created, got)
	}
	s.Slices = len(created)
	key := func(slice *discoveryv1.EndpointSlice) feed.Key {
		return feed.Key{Kind: edgesyncv1.Kind_KIND_ENDPOINT_SLICE, Namespace: kubeNamespace, Name: slice.Name}
	}
	for _, slice := range created {
		if err := waitFor(ctx, serviceSettleDeadline, "every node holds "+slice.Name, func() bool {
			return len(fleet.Arrivals(key(slice))) == len(nodes)
		}); err != nil {
			return err
		}
	}
	b.prog.say("services: %d nodes hold the Service and its %d slices", len(nodes), len(created))

	var samples []time.Duration
	var encodings []int
	for u := range s.Updates {
		k, j := u%len(created), (u/len(created))%endpointsPerSlice
		slice := created[k].DeepCopy()
		ep := &slice.Endpoints[j]
		flipped := !*ep.Conditions.Ready
		ep.Conditions.Ready = &flipped
		// The nodes of the endpoint's zone see it come or go; the others'
		// views of the slice stay as they are.
		zone := (k*endpointsPerSlice + j) % serviceZones
		before := fleet.Arrivals(key(slice))
		var changing []string
		for i, node := range nodes {
			if i%serviceZones == zone {
				changing = append(changing, node)
			}
		}
		sentAt := time.Now()
		got, err := client.DiscoveryV1().EndpointSlices(kubeNamespace).Update(ctx, slice, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update endpointslice: %w", err)
		}
		created[k] = got
		var now map[string]edgesim.Arrival
		if err := waitFor(ctx, time.Minute, fmt.Sprintf("slice update %d on the nodes of its zone", u+1), func() bool {
			now = fleet.Arrivals(key(got))
			for _, node := range changing {
				if now[node].Version == before[node].Version {
					return false
				}
			}
			return true
		}); err != nil {
			return err
		}
		versions := map[string]bool{}
		for _, node := range changing {
			samples = append(samples, now[node].At.Sub(sentAt))
			versions[now[node].Version] = true
		}
		encodings = append(encodings, len(versions))
		s.Receivers = len(changing)
		for i, node := range nodes {
			if i%serviceZones != zone && now[node].Version != before[node].Version {
				s.OtherReceivers++
			}
		}
	}
	s.Latency = measure.Summarize(slices.Clone(samples))
	total := 0
	for _, e := range encodings {
		total += e
		s.EncodingsMax = max(s.EncodingsMax, e)
	}
	if len(encodings) > 0 {
		s.EncodingsMean = float64(total) / float64(len(encodings))
	}
	s.Done = true
	b.prog.say("services: p50 %.1f ms p99 %.1f ms max %.1f ms; %.1f encodings per slice change (max %d)",
		s.Latency.P50Ms, s.Latency.P99Ms, s.Latency.MaxMs, s.EncodingsMean, s.EncodingsMax)
	return nil
}
