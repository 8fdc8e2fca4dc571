package servicedns

import (
	"context"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// oneService resolves shop/web to a cluster IP.
type oneService struct{}

func (oneService) Resolve(namespace, name, port string) (*edgeclient.Resolution, error) {
	if namespace != "shop" || name != "web" {
		return nil, edgeclient.ErrNoService
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}}
	return &edgeclient.Resolution{Service: svc, ClusterIPs: []string{"10.96.0.10", "fd00::10"}}, nil
}

// serve runs a server for cfg until the test ends and returns its address.
func serve(t *testing.T, cfg Config) string {
	t.Helper()
	cfg.Addr, cfg.Resolver = "127.0.0.1:0", oneService{}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s.Addr()
}

func query(t *testing.T, addr, name string, qtype uint16, network string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	resp, _, err := (&dns.Client{Net: network}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return resp
}

func TestAnswersAndForwarding(t *testing.T) {
	upstream := serve(t, Config{Domain: "upstream.test"})
	local := serve(t, Config{})
	forwarding := serve(t, Config{Forward: []string{upstream}})

	for _, network := range []string{"udp", "tcp"} {
		r := query(t, local, "web.shop.svc.cluster.local.", dns.TypeA, network)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.96.0.10" || !r.Authoritative {
			t.Errorf("%s: A web.shop = %v, want 10.96.0.10, authoritative", network, r)
		}
	}
	if r := query(t, local, "web.shop.svc.cluster.local.", dns.TypeAAAA, "udp"); len(r.Answer) != 1 || r.Answer[0].(*dns.AAAA).AAAA.String() != "fd00::10" {
		t.Errorf("AAAA web.shop = %v, want fd00::10", r)
	}
	for _, name := range []string{"db.shop.svc.cluster.local.", "a.b.c.svc.cluster.local.", "cluster.local.", "x.pod.cluster.local."} {
		if r := query(t, local, name, dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s answered %s, want NXDOMAIN", name, dns.RcodeToString[r.Rcode])
		}
	}
	// Outside the cluster domain: refused without upstreams, forwarded
	// with them.
	if r := query(t, local, "web.shop.svc.upstream.test.", dns.TypeA, "udp"); r.Rcode != dns.RcodeRefused {
		t.Errorf("a name outside the domain answered %s without upstreams, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, forwarding, "web.shop.svc.upstream.test.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("forwarded query answered %v, want the upstream's answer", r)
	}
}
