package agent

import (
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// describeService says how a Service is reached: its cluster IP (or
// headless) and its ports.
func describeService(s *corev1.Service) []string {
	ip := s.Spec.ClusterIP
	if ip == "" || ip == corev1.ClusterIPNone {
		ip = "headless"
	}
	ports := make([]string, 0, len(s.Spec.Ports))
	for _, p := range s.Spec.Ports {
		port := strconv.Itoa(int(p.Port)) + "/" + string(p.Protocol)
		if p.Name != "" {
			port = p.Name + ":" + port
		}
		ports = append(ports, port)
	}
	return []string{"clusterIP=" + ip, "ports=" + strings.Join(ports, ",")}
}

// describeSlice names the Service of an EndpointSlice and the addresses
// this node routes to.
func describeSlice(s *discoveryv1.EndpointSlice) []string {
	var addrs []string
	for _, ep := range s.Endpoints {
		addrs = append(addrs, ep.Addresses...)
	}
	list := strings.Join(addrs, ",")
	if list == "" {
		list = "none"
	}
	return []string{"service=" + s.Labels[discoveryv1.LabelServiceName], "endpoints=" + list}
}
