// Package servicedns is the edge's DNS server for the Services the node
// holds, so that edge applications find each other by Service name, also
// while the node is offline. It answers, from the edgeclient store, the
// names Kubernetes DNS gives Services:
//
//   - A and AAAA for <service>.<namespace>.svc.<cluster domain>: the
//     Service's cluster IPs (or the local proxy address the agent gives the
//     Service, see Config.ProxyAddress), or for a headless Service the
//     addresses of the endpoints the node routes to;
//   - SRV for _<port name>._<protocol>.<service>.<namespace>.svc.<domain>;
//   - NXDOMAIN for other names in the cluster domain.
//
// Other names are forwarded to the configured upstream servers, or refused
// when there are none. It uses github.com/miekg/dns for the wire format
// and the UDP and TCP servers.
package servicedns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient"
)

// DefaultDomain is the cluster domain Kubernetes uses by default.
const DefaultDomain = "cluster.local"

// TTL of every answer, in seconds: short, as Kubernetes DNS answers, since
// endpoints change.
const TTL = 5

// Resolver answers what a Service leads to; *edgeclient.Client is one.
type Resolver interface {
	Resolve(namespace, name, port string) (*edgeclient.Resolution, error)
}

// Config configures a Server.
type Config struct {
	// Addr is the host:port to listen on, UDP and TCP ("127.0.0.1:0" picks
	// a free port, the same for both).
	Addr string
	// Domain is the cluster domain; DefaultDomain when empty.
	Domain string
	// Resolver answers from what the node holds.
	Resolver Resolver
	// Forward lists upstream servers (host:port) for names outside the
	// cluster domain, tried in order; none refuses them.
	Forward []string
	// ProxyAddress, when set, gives the local address that proxies a
	// Service; A and AAAA answers for a Service with one carry it instead
	// of the cluster IPs, which an edge cannot route.
	ProxyAddress func(namespace, name string) (net.IP, bool)
	Logger       *zap.Logger
}

// Server is a DNS server listening on UDP and TCP.
type Server struct {
	cfg    Config
	log    *zap.Logger
	zone   string // "<domain>."
	suffix string // ".svc.<domain>."
	udp    net.PacketConn
	tcp    net.Listener
}

// Listen binds cfg.Addr on UDP and TCP; Serve answers.
func Listen(cfg Config) (*Server, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("servicedns: a Resolver is required")
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	udp, err := net.ListenPacket("udp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("servicedns: listen udp %s: %w", cfg.Addr, err)
	}
	// TCP on the port UDP got, so that ":0" means one port for both.
	tcp, err := net.Listen("tcp", udp.LocalAddr().String())
	if err != nil {
		udp.Close()
		return nil, fmt.Errorf("servicedns: listen tcp %s: %w", udp.LocalAddr(), err)
	}
	return &Server{
		cfg: cfg, log: cfg.Logger, udp: udp, tcp: tcp,
		zone:   dns.Fqdn(strings.ToLower(cfg.Domain)),
		suffix: ".svc." + dns.Fqdn(strings.ToLower(cfg.Domain)),
	}, nil
}

// Addr is the address the server listens on (UDP and TCP).
func (s *Server) Addr() string { return s.udp.LocalAddr().String() }

// Serve answers queries until ctx ends, then shuts the server down and
// returns once it has stopped.
func (s *Server) Serve(ctx context.Context) error {
	servers := []*dns.Server{
		{PacketConn: s.udp, Handler: s},
		{Listener: s.tcp, Handler: s},
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(servers))
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { errs <- srv.ActivateAndServe() })
		select {
		case <-started:
		case err := <-errs:
			return fmt.Errorf("servicedns: %w", err)
		}
	}
	s.log.Info("DNS server listening", zap.String("addr", s.Addr()), zap.String("domain", s.cfg.Domain))
	<-ctx.Done()
	for _, srv := range servers {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = srv.ShutdownContext(sctx)
		cancel()
	}
	wg.Wait()
	return nil
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if name != s.zone && !strings.HasSuffix(name, "."+s.zone) {
		s.forward(w, req)
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	rcode, err := s.answer(m, q, name)
	if err != nil {
		s.log.Warn("DNS query failed", zap.String("name", q.Name), zap.Error(err))
		rcode = dns.RcodeServerFailure
	}
	m.Rcode = rcode
	if rcode == dns.RcodeNameError {
		m.Ns = []dns.RR{s.soa()}
	}
	_ = w.WriteMsg(m)
}

// answer fills m for a name in the cluster domain and returns the rcode.
func (s *Server) answer(m *dns.Msg, q dns.Question, name string) (int, error) {
	var labels []string
	if strings.HasSuffix(name, s.suffix) {
		labels = dns.SplitDomainName(strings.TrimSuffix(name, s.suffix))
	}
	switch len(labels) {
	case 2: // <service>.<namespace>
		r, err := s.cfg.Resolver.Resolve(labels[1], labels[0], "")
		if errors.Is(err, edgeclient.ErrNoService) {
			return dns.RcodeNameError, nil
		} else if err != nil {
			return 0, err
		}
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY {
			m.Answer = append(m.Answer, s.addresses(q.Name, q.Qtype, r)...)
		}
		return dns.RcodeSuccess, nil
	case 4: // _<port>._<protocol>.<service>.<namespace>
		port, proto := strings.TrimPrefix(labels[0], "_"), strings.ToUpper(strings.TrimPrefix(labels[1], "_"))
		if port == labels[0] || proto == strings.ToUpper(labels[1]) {
			return dns.RcodeNameError, nil
		}
		r, err := s.cfg.Resolver.Resolve(labels[3], labels[2], port)
		if errors.Is(err, edgeclient.ErrNoService) || (err == nil && (r.Port.Name != port || string(protocol(r.Port)) != proto)) {
			return dns.RcodeNameError, nil
		} else if err != nil {
			return 0, err
		}
		if q.Qtype == dns.TypeSRV || q.Qtype == dns.TypeANY {
			target := labels[2] + "." + labels[3] + s.suffix
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: q.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: TTL},
				Priority: 0, Weight: 100, Port: uint16(r.Port.Port), Target: target,
			})
			m.Extra = append(m.Extra, s.addresses(target, dns.TypeA, r)...)
			m.Extra = append(m.Extra, s.addresses(target, dns.TypeAAAA, r)...)
		}
		return dns.RcodeSuccess, nil
	}
	return dns.RcodeNameError, nil
}

func protocol(p corev1.ServicePort) corev1.Protocol {
	if p.Protocol == "" {
		return corev1.ProtocolTCP
	}
	return p.Protocol
}

// addresses returns the A or AAAA records (qtype; ANY: both) of name for
// r: the proxy's address, else the cluster IPs, else (headless) the
// endpoints'.
func (s *Server) addresses(name string, qtype uint16, r *edgeclient.Resolution) []dns.RR {
	var ips []net.IP
	if s.cfg.ProxyAddress != nil && len(r.ClusterIPs) > 0 {
		if ip, ok := s.cfg.ProxyAddress(r.Service.Namespace, r.Service.Name); ok {
			ips = []net.IP{ip}
		}
	}
	if ips == nil {
		addrs := r.ClusterIPs
		if len(addrs) == 0 {
			for _, e := range r.Endpoints {
				addrs = append(addrs, e.Address)
			}
		}
		for _, a := range addrs {
			if ip := net.ParseIP(a); ip != nil {
				ips = append(ips, ip)
			}
		}
	}
	var out []dns.RR
	for _, ip := range ips {
		v4 := ip.To4()
		switch {
		case v4 != nil && (qtype == dns.TypeA || qtype == dns.TypeANY):
			out = append(out, &dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL}, A: v4})
		case v4 == nil && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
			out = append(out, &dns.AAAA{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: TTL}, AAAA: ip})
		}
	}
	return out
}

// soa is the authority record of negative answers.
func (s *Server) soa() dns.RR {
	zone := s.zone
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: TTL},
		Ns:  "ns.dns." + zone, Mbox: "hostmaster." + zone,
		Serial: 1, Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: TTL,
	}
}

// forward sends a query outside the cluster domain to the upstream
// servers in turn, or refuses it when there are none or none answers.
func (s *Server) forward(w dns.ResponseWriter, req *dns.Msg) {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	for _, upstream := range s.cfg.Forward {
		resp, _, err := c.Exchange(req, upstream)
		if err == nil {
			_ = w.WriteMsg(resp)
			return
		}
		s.log.Debug("DNS forward failed", zap.String("upstream", upstream), zap.Error(err))
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeRefused)
	_ = w.WriteMsg(m)
}
