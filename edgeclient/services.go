package edgeclient

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// ErrNoService is returned by Resolve for a Service the node does not hold
// (unknown, or not meant for edges), or a port it does not have.
var ErrNoService = errors.New("no such service")

// Services returns the Services the node holds: those meant for edges.
func (c *Client) Services() ([]*corev1.Service, error) {
	return listOf(c, edgesyncv1.Kind_KIND_SERVICE, func(o Object) *corev1.Service { return o.Service })
}

// Service returns a held Service, or nil.
func (c *Client) Service(namespace, name string) (*corev1.Service, error) {
	o, _, err := c.Get(Key{Kind: edgesyncv1.Kind_KIND_SERVICE, Namespace: namespace, Name: name})
	return o.Service, err
}

// EndpointSlices returns the held EndpointSlices of the Service
// namespace/name: the endpoints this node routes to.
func (c *Client) EndpointSlices(namespace, name string) ([]*discoveryv1.EndpointSlice, error) {
	all, err := listOf(c, edgesyncv1.Kind_KIND_ENDPOINT_SLICE, func(o Object) *discoveryv1.EndpointSlice { return o.EndpointSlice })
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(s *discoveryv1.EndpointSlice) bool {
		return s.Namespace != namespace || s.Labels[discoveryv1.LabelServiceName] != name
	}), nil
}

// Resolution is where a Service port leads, from what the node holds.
type Resolution struct {
	Service *corev1.Service
	// Port is the Service port resolved; zero when Resolve was asked for
	// no port.
	Port corev1.ServicePort
	// ClusterIPs are the Service's cluster IPs; none for a headless
	// Service.
	ClusterIPs []string
	// Endpoints are the addresses this node routes the port to, each
	// address once, in a stable order. Their Port is the endpoint's port
	// for the Service port (its target port); 0 when no port was asked.
	Endpoints []Endpoint
}

// Endpoint is one address a Service port leads to.
type Endpoint struct {
	Address string
	Port    int32
	// NodeName is the node the endpoint is on, when known.
	NodeName string
	// Hostname is the endpoint's hostname (headless Services), when set.
	Hostname string
}

// Resolve says where port of the Service namespace/name leads, from what
// the node holds; it works offline. port is a port name, a port number
// ("80"), or "" for every endpoint address whatever its port (as DNS
// answers for a headless Service). It returns an error wrapping
// ErrNoService when the node holds no such Service or port.
func (c *Client) Resolve(namespace, name, port string) (*Resolution, error) {
	svc, err := c.Service(namespace, name)
	if err != nil {
		return nil, err
	}
	if svc == nil {
		return nil, fmt.Errorf("service %s/%s: %w", namespace, name, ErrNoService)
	}
	res := &Resolution{Service: svc}
	for _, ip := range svc.Spec.ClusterIPs {
		if ip != "" && ip != corev1.ClusterIPNone {
			res.ClusterIPs = append(res.ClusterIPs, ip)
		}
	}
	if len(res.ClusterIPs) == 0 && svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != corev1.ClusterIPNone {
		res.ClusterIPs = []string{svc.Spec.ClusterIP}
	}
	if port != "" {
		p, ok := servicePort(svc, port)
		if !ok {
			return nil, fmt.Errorf("service %s/%s has no port %q: %w", namespace, name, port, ErrNoService)
		}
		res.Port = p
	}
	eps, err := c.EndpointSlices(namespace, name)
	if err != nil {
		return nil, err
	}
	seen := map[Endpoint]bool{}
	for _, s := range eps {
		target := int32(0)
		if port != "" {
			var ok bool
			if target, ok = slicePort(s, res.Port); !ok {
				continue
			}
		}
		for _, ep := range s.Endpoints {
			for _, addr := range ep.Addresses {
				e := Endpoint{Address: addr, Port: target}
				if seen[e] {
					continue // in two slices while they change
				}
				seen[e] = true
				if ep.NodeName != nil {
					e.NodeName = *ep.NodeName
				}
				if ep.Hostname != nil {
					e.Hostname = *ep.Hostname
				}
				res.Endpoints = append(res.Endpoints, e)
			}
		}
	}
	slices.SortFunc(res.Endpoints, func(a, b Endpoint) int {
		return cmp.Or(cmp.Compare(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
	})
	return res, nil
}

// servicePort finds a port of svc by name or number.
func servicePort(svc *corev1.Service, port string) (corev1.ServicePort, bool) {
	n, err := strconv.Atoi(port)
	for _, p := range svc.Spec.Ports {
		if p.Name == port || (err == nil && int(p.Port) == n) {
			return p, true
		}
	}
	return corev1.ServicePort{}, false
}

// slicePort returns the endpoints' port in s for the Service port p: the
// slice port of the same name and protocol.
func slicePort(s *discoveryv1.EndpointSlice, p corev1.ServicePort) (int32, bool) {
	proto := p.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	for _, sp := range s.Ports {
		name, protocol := "", corev1.ProtocolTCP
		if sp.Name != nil {
			name = *sp.Name
		}
		if sp.Protocol != nil {
			protocol = *sp.Protocol
		}
		if name == p.Name && protocol == proto && sp.Port != nil {
			return *sp.Port, true
		}
	}
	return 0, false
}
