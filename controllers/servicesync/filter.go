package servicesync

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// topologyModeAnnotation asks for topology aware routing (any value but
// "disabled"), before trafficDistribution existed.
const topologyModeAnnotation = "service.kubernetes.io/topology-mode"

// plan is what decides, for one Service and all its slices, which
// endpoints each node routes to, as kube-proxy decides it.
type plan struct {
	local bool // internalTrafficPolicy: Local
	// anyReady: the Service has a ready endpoint; otherwise nodes route
	// to serving terminating ones.
	anyReady bool
	// hinted is, when topology is asked for and every ready endpoint
	// carries zone hints, the zones some ready endpoint is hinted for;
	// nil when topology is not in use.
	hinted map[string]bool
	// byNode tells, for Local, which nodes have a ready (true) or only a
	// serving terminating (false) endpoint.
	byNode map[string]bool
}

// view is one way of filtering a Service's slices: every node with the same
// view receives the same slices; name tells views apart while a Service
// is synced.
type view struct {
	name string
	keep func(ep *discoveryv1.Endpoint) bool
}

func (v view) filter(eps []discoveryv1.Endpoint) []discoveryv1.Endpoint {
	var out []discoveryv1.Endpoint
	for i := range eps {
		if v.keep(&eps[i]) {
			out = append(out, eps[i])
		}
	}
	return out
}

// Conditions as kube-proxy reads them: ready unless said otherwise,
// serving as ready unless said, terminating only when said.
func ready(ep *discoveryv1.Endpoint) bool {
	return ep.Conditions.Ready == nil || *ep.Conditions.Ready
}

func serving(ep *discoveryv1.Endpoint) bool {
	if ep.Conditions.Serving == nil {
		return ready(ep)
	}
	return *ep.Conditions.Serving
}

func servingTerminating(ep *discoveryv1.Endpoint) bool {
	return serving(ep) && ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
}

func newPlan(svc *corev1.Service, eps []*discoveryv1.EndpointSlice) plan {
	p := plan{local: svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal}
	if p.local {
		p.byNode = map[string]bool{}
	}
	var hinted map[string]bool
	if wantsTopology(svc) {
		hinted = map[string]bool{}
	}
	for _, s := range eps {
		for i := range s.Endpoints {
			ep := &s.Endpoints[i]
			if p.local && ep.NodeName != nil {
				if ready(ep) {
					p.byNode[*ep.NodeName] = true
				} else if servingTerminating(ep) {
					if _, ok := p.byNode[*ep.NodeName]; !ok {
						p.byNode[*ep.NodeName] = false
					}
				}
			}
			if !ready(ep) {
				continue
			}
			p.anyReady = true
			if hinted == nil {
				continue
			}
			if ep.Hints == nil || len(ep.Hints.ForZones) == 0 {
				hinted = nil // a ready endpoint without hints: no topology
				continue
			}
			for _, z := range ep.Hints.ForZones {
				hinted[z.Name] = true
			}
		}
	}
	p.hinted = hinted
	return p
}

// wantsTopology tells whether svc asks for topology aware routing: any
// trafficDistribution (PreferSameZone, PreferClose; PreferSameNode is
// served by its zone hints, the node hints are not used), or else the
// topology-mode annotation.
func wantsTopology(svc *corev1.Service) bool {
	if svc.Spec.TrafficDistribution != nil {
		return true
	}
	mode := svc.Annotations[topologyModeAnnotation]
	return mode != "" && mode != "disabled" && mode != "Disabled"
}

// view returns how node n sees the Service's slices.
func (p plan) view(n *corev1.Node) view {
	if p.local {
		name := n.Name
		readyHere, ok := p.byNode[name]
		switch {
		case !ok:
			return view{name: "none", keep: func(*discoveryv1.Endpoint) bool { return false }}
		case readyHere:
			return view{name: "node=" + name, keep: func(ep *discoveryv1.Endpoint) bool {
				return ep.NodeName != nil && *ep.NodeName == name && ready(ep)
			}}
		default:
			return view{name: "node=" + name + ",terminating", keep: func(ep *discoveryv1.Endpoint) bool {
				return ep.NodeName != nil && *ep.NodeName == name && servingTerminating(ep)
			}}
		}
	}
	if !p.anyReady {
		return view{name: "terminating", keep: servingTerminating}
	}
	if zone := n.Labels[corev1.LabelTopologyZone]; zone != "" && p.hinted[zone] {
		return view{name: "zone=" + zone, keep: func(ep *discoveryv1.Endpoint) bool {
			return ready(ep) && ep.Hints != nil && slices.ContainsFunc(ep.Hints.ForZones, func(z discoveryv1.ForZone) bool { return z.Name == zone })
		}}
	}
	return view{name: "all", keep: ready}
}
