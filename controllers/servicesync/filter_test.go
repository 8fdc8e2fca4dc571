package servicesync

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ep is an endpoint at addr on node with the given conditions and zone
// hints.
func ep(addr, node string, ready, serving, terminating bool, zones ...string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{
		Addresses: []string{addr}, NodeName: &node,
		Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
	}
	if len(zones) > 0 {
		e.Hints = &discoveryv1.EndpointHints{}
		for _, z := range zones {
			e.Hints.ForZones = append(e.Hints.ForZones, discoveryv1.ForZone{Name: z})
		}
	}
	return e
}

func node(name, zone string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if zone != "" {
		n.Labels = map[string]string{corev1.LabelTopologyZone: zone}
	}
	return n
}

// routed returns the addresses node n receives of the Service's slices.
func routed(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, n *corev1.Node) []string {
	v := newPlan(svc, eps).view(n)
	var out []string
	for _, s := range eps {
		for _, e := range v.filter(s.Endpoints) {
			out = append(out, e.Addresses...)
		}
	}
	slices.Sort(out)
	return out
}

func TestNodesRouteAsKubeProxyWould(t *testing.T) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	preferClose := corev1.ServiceTrafficDistributionPreferClose
	cluster := &corev1.Service{}
	localSvc := &corev1.Service{Spec: corev1.ServiceSpec{InternalTrafficPolicy: &local}}
	closeSvc := &corev1.Service{Spec: corev1.ServiceSpec{TrafficDistribution: &preferClose}}
	annotated := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{topologyModeAnnotation: "Auto"}}}
	slice := func(eps ...discoveryv1.Endpoint) []*discoveryv1.EndpointSlice {
		return []*discoveryv1.EndpointSlice{{Endpoints: eps}}
	}
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		eps  []*discoveryv1.EndpointSlice
		node *corev1.Node
		want []string
	}{
		{"ready only", cluster, slice(ep("a", "n1", true, true, false), ep("b", "n2", false, false, false), ep("c", "n2", false, true, true)), node("n1", ""), []string{"a"}},
		{"serving terminating when none is ready", cluster, slice(ep("b", "n2", false, false, false), ep("c", "n2", false, true, true), ep("d", "n2", false, false, true)), node("n1", ""), []string{"c"}},
		{"ready in any slice of the service counts", cluster, []*discoveryv1.EndpointSlice{{Endpoints: []discoveryv1.Endpoint{ep("c", "n2", false, true, true)}}, {Endpoints: []discoveryv1.Endpoint{ep("a", "n1", true, true, false)}}}, node("n1", ""), []string{"a"}},
		{"local: own ready endpoints", localSvc, slice(ep("a", "n1", true, true, false), ep("b", "n2", true, true, false), ep("c", "n1", false, true, true)), node("n1", ""), []string{"a"}},
		{"local: own serving terminating when none ready here", localSvc, slice(ep("b", "n2", true, true, false), ep("c", "n1", false, true, true)), node("n1", ""), []string{"c"}},
		{"local: nothing on this node", localSvc, slice(ep("b", "n2", true, true, false)), node("n1", ""), nil},
		{"prefer close: the node's zone", closeSvc, slice(ep("a", "n1", true, true, false, "z1"), ep("b", "n2", true, true, false, "z2")), node("n3", "z1"), []string{"a"}},
		{"topology annotation: the node's zone", annotated, slice(ep("a", "n1", true, true, false, "z1"), ep("b", "n2", true, true, false, "z2")), node("n3", "z2"), []string{"b"}},
		{"hints ignored unless asked for", cluster, slice(ep("a", "n1", true, true, false, "z1"), ep("b", "n2", true, true, false, "z2")), node("n3", "z1"), []string{"a", "b"}},
		{"no hint for the node's zone", closeSvc, slice(ep("a", "n1", true, true, false, "z1"), ep("b", "n2", true, true, false, "z2")), node("n3", "z3"), []string{"a", "b"}},
		{"node without a zone", closeSvc, slice(ep("a", "n1", true, true, false, "z1"), ep("b", "n2", true, true, false, "z2")), node("n3", ""), []string{"a", "b"}},
		{"a ready endpoint without hints", closeSvc, slice(ep("a", "n1", true, true, false, "z1"), ep("b", "n2", true, true, false)), node("n3", "z1"), []string{"a", "b"}},
		{"a not-ready endpoint without hints", closeSvc, slice(ep("a", "n1", true, true, false, "z1"), ep("b", "n2", false, false, false)), node("n3", "z1"), []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := routed(tc.svc, tc.eps, tc.node); !slices.Equal(got, tc.want) {
				t.Errorf("node %s routes to %v, want %v", tc.node.Name, got, tc.want)
			}
		})
	}
}

// Nodes that route alike share a view (and so one encoding); views with
// different results have different names (and so versions).
func TestViewsAreSharedByNodesThatRouteAlike(t *testing.T) {
	preferClose := corev1.ServiceTrafficDistributionPreferClose
	svc := &corev1.Service{Spec: corev1.ServiceSpec{TrafficDistribution: &preferClose}}
	eps := []*discoveryv1.EndpointSlice{{Endpoints: []discoveryv1.Endpoint{
		ep("a", "n1", true, true, false, "z1"), ep("b", "n2", true, true, false, "z2"),
	}}}
	p := newPlan(svc, eps)
	names := map[string]bool{}
	for i := range 100 {
		names[p.view(node("n", []string{"z1", "z2", "z3"}[i%3])).name] = true
	}
	if want := map[string]bool{"zone=z1": true, "zone=z2": true, "all": true}; len(names) != len(want) || !names["zone=z1"] || !names["zone=z2"] || !names["all"] {
		t.Errorf("100 nodes in 3 zones have views %v, want %v", names, want)
	}
}
