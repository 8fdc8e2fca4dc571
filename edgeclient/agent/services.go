package agent

import (
	"context"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/servicedns"
	"github.com/edgesync/edgesync/edgeclient/serviceproxy"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
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

// ServicesConfig configures how the agent serves the Services the node
// holds to the applications on the node.
type ServicesConfig struct {
	// DNS runs the DNS server (package servicedns) when DNS.Addr is set;
	// its Resolver, ProxyAddress and Logger are set by the agent.
	DNS servicedns.Config
	// ProxyCIDR runs the service proxy (package serviceproxy) when set:
	// each Service gets a local IP from it, and DNS answers with that IP.
	ProxyCIDR string
	// OnDNS, when set, is called with the DNS server's address once it
	// listens (useful with port 0).
	OnDNS func(addr string)
}

// startServices starts the DNS server and the proxy that cfg asks for in
// g; they answer from c's store, so they keep working offline.
func (a *agent) startServices(ctx context.Context, g *errgroup.Group, cfg ServicesConfig, c *edgeclient.Client) error {
	if cfg.ProxyCIDR != "" {
		p, err := serviceproxy.New(serviceproxy.Config{CIDR: cfg.ProxyCIDR, Resolver: c, Logger: a.log.Named("proxy")})
		if err != nil {
			return err
		}
		a.proxy = p
		g.Go(func() error { return p.Run(ctx) })
	}
	if cfg.DNS.Addr == "" {
		return nil
	}
	dcfg := cfg.DNS
	dcfg.Resolver, dcfg.Logger = c, a.log.Named("dns")
	if a.proxy != nil {
		dcfg.ProxyAddress = a.proxy.Address
	}
	srv, err := servicedns.Listen(dcfg)
	if err != nil {
		return err
	}
	if cfg.OnDNS != nil {
		cfg.OnDNS(srv.Addr())
	}
	g.Go(func() error { return srv.Serve(ctx) })
	return nil
}

// servicesChanged tells the proxy that a held Service changed.
func (a *agent) servicesChanged(key edgeclient.Key) {
	if a.proxy != nil && key.Kind == edgesyncv1.Kind_KIND_SERVICE {
		a.proxy.Update()
	}
}

// nodeIP is the address the simulated runtime gives pods.
var nodeIP = sync.OnceValue(hostIP)

// withPodIP gives a running pod the node's address, as a pod on the host
// network has: the simulated runtime runs nothing, but the cloud's
// EndpointSlices (and so Services) list only pods with an address.
func withPodIP(st *corev1.PodStatus) {
	ip := nodeIP()
	if ip == "" || st.Phase != corev1.PodRunning {
		return
	}
	if st.HostIP == "" {
		st.HostIP, st.HostIPs = ip, []corev1.HostIP{{IP: ip}}
	}
	if st.PodIP == "" {
		st.PodIP, st.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	}
}
