package servicesync

import (
	"fmt"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/edgesync/edgesync/server/feed"
)

// recorder is a feed.Publisher that keeps the last object each node was
// sent per key.
type recorder struct {
	mu   sync.Mutex // guards last
	last map[string]map[feed.Key]*feed.Object
}

func (r *recorder) Publish(node string, obj *feed.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last[node] == nil {
		r.last[node] = map[feed.Key]*feed.Object{}
	}
	r.last[node][obj.Key] = obj
}

// TestOneEncodingPerDistinctView: a Service on 100 nodes in 10 zones
// costs one encoding of the Service and one per zone's view of its slice;
// a change to one endpoint costs one encoding more, and the other zones'
// nodes are handed the very objects they hold.
func TestOneEncodingPerDistinctView(t *testing.T) {
	client := fake.NewSimpleClientset() // never started: the caches are filled by hand
	services := coreinformers.NewServiceInformer(client, "", 0, cache.Indexers{})
	slices := discoveryinformers.NewEndpointSliceInformer(client, "", 0, cache.Indexers{})
	nodes := coreinformers.NewNodeInformer(client, 0, cache.Indexers{})
	if err := AddIndexers(slices); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{last: map[string]map[feed.Key]*feed.Object{}}
	c, err := New(Config{Services: services, EndpointSlices: slices, Nodes: nodes, IsEdge: func(*corev1.Node) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	c.pub = rec // as Run sets it
	zoneOf := func(i int) string { return fmt.Sprintf("zone-%d", i%10) }
	for i := range 100 {
		_ = nodes.GetIndexer().Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("edge-%d", i), Labels: map[string]string{corev1.LabelTopologyZone: zoneOf(i)},
		}})
	}
	sameZone := corev1.ServiceTrafficDistributionPreferSameZone
	_ = services.GetIndexer().Add(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: "svc", ResourceVersion: "1", Labels: map[string]string{OptInLabel: "true"}},
		Spec:       corev1.ServiceSpec{TrafficDistribution: &sameZone},
	})
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "web-1", UID: types.UID("slice"), ResourceVersion: "2", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for i := range 100 {
		ready := true
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{fmt.Sprintf("10.0.0.%d", i+1)}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
			Hints: &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: zoneOf(i)}}},
		})
	}
	_ = slices.GetIndexer().Add(slice)

	if err := c.sync("shop/web"); err != nil {
		t.Fatal(err)
	}
	if got := c.Encodings(); got != 11 {
		t.Errorf("100 nodes in 10 zones cost %d encodings, want 11 (the Service and one view per zone)", got)
	}
	key := sliceKey("shop", "web-1")
	before := map[string]*feed.Object{}
	for i := range 100 {
		node := fmt.Sprintf("edge-%d", i)
		before[node] = rec.last[node][key]
		if first := rec.last[fmt.Sprintf("edge-%d", i%10)][key]; before[node] != first {
			t.Fatalf("%s and edge-%d, both in %s, were sent two encodings", node, i%10, zoneOf(i))
		}
	}

	// Endpoint 3 (zone-3) turns not-ready.
	changed := slice.DeepCopy()
	changed.ResourceVersion = "3"
	notReady := false
	changed.Endpoints[3].Conditions.Ready = &notReady
	_ = slices.GetIndexer().Update(changed)
	if err := c.sync("shop/web"); err != nil {
		t.Fatal(err)
	}
	if got := c.Encodings(); got != 12 {
		t.Errorf("a change within one zone cost %d encodings in all, want 12 (one more)", got)
	}
	for i := range 100 {
		node := fmt.Sprintf("edge-%d", i)
		now := rec.last[node][key]
		if changedZone := i%10 == 3; changedZone == (now.ResourceVersion == before[node].ResourceVersion) {
			t.Errorf("%s in %s: version %s -> %s; only zone-3's view should change", node, zoneOf(i), before[node].ResourceVersion, now.ResourceVersion)
		}
	}
}
