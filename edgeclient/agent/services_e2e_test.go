package agent

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/edgesync/edgesync/controllers/servicesync"
	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/servicedns"
)

// TestServiceDNSFromTheStore: an agent with its DNS server and proxy on
// answers a Go resolver for a Service meant for edges with the proxy's
// address (where the proxy listens), SRV for its named port, the endpoint
// addresses for a headless Service and NXDOMAIN for an unknown one; all of
// it still works once the sync server is stopped. (The proxy's round trip
// to an endpoint is in package serviceproxy: the API server refuses
// loopback endpoint addresses.)
func TestServiceDNSFromTheStore(t *testing.T) {
	dnsAddr := make(chan string, 1)
	e := startLiveEdge(t, func(cfg *Config) {
		cfg.Services = ServicesConfig{
			DNS:       servicedns.Config{Addr: "127.0.0.1:0"},
			ProxyCIDR: "127.100.0.0/16",
			OnDNS:     func(addr string) { dnsAddr <- addr },
		}
	})
	kube, ns, out := e.kube, e.ns, e.out
	c := e.client.Load()
	addr := <-dnsAddr
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}

	// Two Services meant for edges, with endpoints outside the cluster
	// (slices managed by hand): web has a cluster IP, db is headless.
	optIn := map[string]string{servicesync.OptInLabel: "true"}
	for _, svc := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: optIn}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
		}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: optIn}, Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{
			{Name: "sql", Port: 5432, Protocol: corev1.ProtocolTCP},
		}}},
	} {
		if _, err := kube.CoreV1().Services(ns).Create(t.Context(), svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Deleted at once, not with the namespace in the background: a
		// Service meant for edges reaches every edge node of later tests.
		t.Cleanup(func() { _ = kube.CoreV1().Services(ns).Delete(context.Background(), svc.Name, metav1.DeleteOptions{}) })
	}
	yes := true
	for svc, addrs := range map[string][]string{"web": {"192.0.2.10", "192.0.2.11"}, "db": {"192.0.2.20"}} {
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: svc + "-1", Labels: map[string]string{
				discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "edgesync-test",
			}},
			AddressType: discoveryv1.AddressTypeIPv4,
		}
		for _, a := range addrs {
			slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &yes}})
		}
		if _, err := kube.DiscoveryV1().EndpointSlices(ns).Create(t.Context(), slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	wctx := e.ctx
	name := "web." + ns + ".svc.cluster.local."
	if _, err := c.WaitFor(wctx, func(edgeclient.State) bool {
		web, err1 := c.Resolve(ns, "web", "")
		db, err2 := c.Resolve(ns, "db", "")
		return err1 == nil && err2 == nil && len(web.Endpoints) == 2 && len(db.Endpoints) == 1
	}); err != nil {
		t.Fatalf("the Service and its slice did not reach the edge: %v", err)
	}

	check := func(when string) {
		t.Helper()
		// The proxy listens once it has read the Service; DNS answers
		// with its address from then on.
		var ips []string
		for ips == nil || !strings.HasPrefix(ips[0], "127.100.") {
			var err error
			if ips, err = resolver.LookupHost(wctx, name); err != nil || len(ips) != 1 {
				t.Fatalf("%s: lookup %s = %v, %v; want one address", when, name, ips, err)
			}
			if !strings.HasPrefix(ips[0], "127.100.") {
				select { // the proxy has not opened its listener yet
				case <-wctx.Done():
					t.Fatalf("%s: %s resolves to %v, never to the proxy's address", when, name, ips)
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
		_, srvs, err := resolver.LookupSRV(wctx, "http", "tcp", "web."+ns+".svc.cluster.local.")
		if err != nil || len(srvs) != 1 || srvs[0].Port != 80 || srvs[0].Target != name {
			t.Errorf("%s: SRV _http._tcp = %v, %v; want %s port 80", when, srvs, err, name)
		}
		var dnsErr *net.DNSError
		if _, err := resolver.LookupHost(wctx, "nope."+ns+".svc.cluster.local."); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
			t.Errorf("%s: an unknown Service resolved: %v, want not found", when, err)
		}
		if ips, err := resolver.LookupHost(wctx, "db."+ns+".svc.cluster.local."); err != nil || len(ips) != 1 || ips[0] != "192.0.2.20" {
			t.Errorf("%s: headless db resolves to %v, %v; want its endpoint 192.0.2.20", when, ips, err)
		}
		// The proxy listens where DNS points.
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(ips[0], "80"), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: the proxy does not listen at %s:80: %v", when, ips[0], err)
		}
		conn.Close()
	}
	check("online")
	// The agent prints each as it arrives (just after storing it), naming
	// its kind.
	for _, want := range []string{"Service   " + ns + "/web rv=", "EndpointSlice " + ns + "/web-1 rv=", "service=web endpoints=192.0.2.10,192.0.2.11"} {
		for !strings.Contains(out.String(), want) {
			select {
			case <-wctx.Done():
				t.Fatalf("the agent printed no line with %q:\n%s", want, out.String())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	e.env.Stop()
	if _, err := c.WaitFor(wctx, func(s edgeclient.State) bool { return !s.Connected }); err != nil {
		t.Fatal(err)
	}
	check("with the server stopped")
}
