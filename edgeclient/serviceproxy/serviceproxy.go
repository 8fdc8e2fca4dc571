// Package serviceproxy is the edge's L4 proxy for the Services the node
// holds: for each TCP port of each Service with a cluster IP it listens on
// a local address and carries every connection to one of the endpoints the
// node routes to, round-robin, skipping endpoints that refuse. Endpoints
// are looked up per connection from the edgeclient store, so the proxy
// follows the cloud's changes and keeps working offline. Node to node
// traffic goes direct to the endpoint addresses.
//
// Each Service gets its own local IP in Config.CIDR (a loopback range such
// as 127.100.0.0/16 on Linux, where every 127/8 address is local), and
// listens there on the Service's own port numbers, so that two Services
// may both use port 80. Address tells the IP a Service got, for the DNS
// server to answer with.
package serviceproxy

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/big"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient"
)

// Resolver answers which Services the node holds and where their ports
// lead; *edgeclient.Client is one.
type Resolver interface {
	Services() ([]*corev1.Service, error)
	Resolve(namespace, name, port string) (*edgeclient.Resolution, error)
}

// Config configures a Proxy.
type Config struct {
	// CIDR is the range of local IPs the Services' listeners get, such as
	// 127.100.0.0/16.
	CIDR     string
	Resolver Resolver
	// DialTimeout bounds each attempt to reach an endpoint; 2s when zero.
	DialTimeout time.Duration
	Logger      *zap.Logger
}

// Proxy runs the listeners of every Service port.
type Proxy struct {
	cfg     Config
	log     *zap.Logger
	network *net.IPNet
	changed chan struct{} // Update's signal to Run, buffered 1

	mu        sync.Mutex        // guards the fields below
	addrs     map[string]net.IP // by namespace/name
	listening map[string]bool   // namespace/name with a listener open
	used      map[string]string // IP -> namespace/name
	listeners map[string]*listener
}

// listener is one Service port's listener.
type listener struct {
	namespace, name, port string // port: the Service port's name or number
	addr                  string
	ln                    net.Listener
	next                  atomic.Uint64 // round-robin position
	done                  chan struct{} // closed when its accept loop ended
}

// New returns a proxy; Run starts it.
func New(cfg Config) (*Proxy, error) {
	_, network, err := net.ParseCIDR(cfg.CIDR)
	if err != nil {
		return nil, fmt.Errorf("serviceproxy: CIDR %q: %w", cfg.CIDR, err)
	}
	if ones, bits := network.Mask.Size(); bits-ones < 2 {
		return nil, fmt.Errorf("serviceproxy: CIDR %s holds too few addresses", cfg.CIDR)
	}
	if cfg.Resolver == nil {
		return nil, errors.New("serviceproxy: a Resolver is required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Proxy{
		cfg: cfg, log: cfg.Logger, network: network, changed: make(chan struct{}, 1),
		addrs: map[string]net.IP{}, listening: map[string]bool{}, used: map[string]string{}, listeners: map[string]*listener{},
	}, nil
}

// Update tells the proxy that the Services the node holds may have
// changed; Run brings the listeners in line. It never blocks.
func (p *Proxy) Update() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Address returns the local IP of the Service namespace/name once it
// listens there.
func (p *Proxy) Address(namespace, name string) (net.IP, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := namespace + "/" + name
	if !p.listening[key] {
		return nil, false
	}
	return p.addrs[key], true
}

// Run keeps a listener for every TCP port of every held Service with a
// cluster IP until ctx ends, then closes them and every connection, and
// returns once all have ended.
func (p *Proxy) Run(ctx context.Context) error {
	var conns sync.WaitGroup
	defer conns.Wait()
	defer p.closeAll()
	p.Update()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.changed:
			if err := p.reconcile(ctx, &conns); err != nil {
				p.log.Warn("service proxy: cannot read the held services", zap.Error(err))
			}
		}
	}
}

// reconcile opens the listeners of new Service ports and closes those of
// ports that are gone.
func (p *Proxy) reconcile(ctx context.Context, conns *sync.WaitGroup) error {
	svcs, err := p.cfg.Resolver.Services()
	if err != nil {
		return err
	}
	want := map[string]bool{}
	services := map[string]bool{}
	for _, svc := range svcs {
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			continue // headless: DNS gives the endpoints themselves
		}
		svcKey := svc.Namespace + "/" + svc.Name
		services[svcKey] = true
		ip := p.address(svcKey)
		if ip == nil {
			p.log.Warn("service proxy: no free address left", zap.String("cidr", p.cfg.CIDR), zap.String("service", svcKey))
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue
			}
			port := sp.Name
			if port == "" {
				port = strconv.Itoa(int(sp.Port))
			}
			addr := net.JoinHostPort(ip.String(), strconv.Itoa(int(sp.Port)))
			key := svcKey + "/" + port + "@" + addr
			want[key] = true
			p.mu.Lock()
			_, open := p.listeners[key]
			p.mu.Unlock()
			if open {
				continue
			}
			ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
			if err != nil {
				p.log.Warn("service proxy: cannot listen", zap.String("service", svcKey), zap.String("port", port), zap.Error(err))
				continue
			}
			l := &listener{namespace: svc.Namespace, name: svc.Name, port: port, addr: ln.Addr().String(), ln: ln, done: make(chan struct{})}
			p.mu.Lock()
			p.listeners[key] = l
			p.listening[svcKey] = true
			p.mu.Unlock()
			p.log.Info("service proxy listening", zap.String("service", svcKey), zap.String("port", port), zap.String("addr", l.addr))
			go p.accept(l, conns)
		}
	}
	p.mu.Lock()
	var stale []*listener
	for key, l := range p.listeners {
		if !want[key] {
			stale = append(stale, l)
			delete(p.listeners, key)
		}
	}
	for svcKey, ip := range p.addrs {
		if !services[svcKey] {
			delete(p.addrs, svcKey)
			delete(p.listening, svcKey)
			delete(p.used, ip.String())
		}
	}
	p.mu.Unlock()
	for _, l := range stale {
		l.ln.Close()
		<-l.done
	}
	return nil
}

// address returns the IP of svcKey, giving it one when it has none: the
// one its name hashes to, or the next free one.
func (p *Proxy) address(svcKey string) net.IP {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok := p.addrs[svcKey]; ok {
		return ip
	}
	ones, bits := p.network.Mask.Size()
	size := new(big.Int).Lsh(big.NewInt(1), uint(bits-ones))
	usable := new(big.Int).Sub(size, big.NewInt(2)) // neither the network's nor its last address
	h := fnv.New64a()
	_, _ = h.Write([]byte(svcKey))
	start := new(big.Int).Mod(new(big.Int).SetUint64(h.Sum64()), usable)
	base := new(big.Int).SetBytes(p.network.IP)
	limit := 1 << 16 // enough for any edge
	if usable.IsInt64() && usable.Int64() < int64(limit) {
		limit = int(usable.Int64())
	}
	for i := range limit {
		off := new(big.Int).Mod(new(big.Int).Add(start, big.NewInt(int64(i))), usable)
		n := new(big.Int).Add(base, new(big.Int).Add(off, big.NewInt(1)))
		ip := make(net.IP, len(p.network.IP))
		n.FillBytes(ip)
		if _, taken := p.used[ip.String()]; !taken {
			p.used[ip.String()] = svcKey
			p.addrs[svcKey] = ip
			return ip
		}
	}
	return nil
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	ls := p.listeners
	p.listeners = map[string]*listener{}
	p.mu.Unlock()
	for _, l := range ls {
		l.ln.Close()
		<-l.done
	}
}

// accept carries each connection of l until l is closed.
func (p *Proxy) accept(l *listener, conns *sync.WaitGroup) {
	defer close(l.done)
	var mine sync.WaitGroup // this listener's connections
	defer mine.Wait()
	var mu sync.Mutex // guards open
	open := map[net.Conn]bool{}
	defer func() {
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
	}()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		mu.Lock()
		open[c] = true
		mu.Unlock()
		conns.Add(1)
		mine.Go(func() {
			defer conns.Done()
			p.carry(l, c)
			mu.Lock()
			delete(open, c)
			mu.Unlock()
		})
	}
}

// carry connects c to an endpoint of l's Service port and copies both
// ways until both sides are done.
func (p *Proxy) carry(l *listener, c net.Conn) {
	defer c.Close()
	upstream, err := p.dial(l)
	if err != nil {
		p.log.Debug("service proxy: no endpoint reachable", zap.String("service", l.namespace+"/"+l.name), zap.String("port", l.port), zap.Error(err))
		return
	}
	defer upstream.Close()
	var wg sync.WaitGroup
	wg.Go(func() { pipe(upstream, c) })
	pipe(c, upstream)
	wg.Wait()
}

// pipe copies from src to dst, then half-closes dst so the other side
// sees the end of the stream; on an error it closes both.
func pipe(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// dial connects to the next endpoint of l's Service port, round-robin,
// trying the others in turn when it refuses.
func (p *Proxy) dial(l *listener) (net.Conn, error) {
	r, err := p.cfg.Resolver.Resolve(l.namespace, l.name, l.port)
	if err != nil {
		return nil, err
	}
	if len(r.Endpoints) == 0 {
		return nil, errors.New("the service has no endpoints this node routes to")
	}
	first := int(l.next.Add(1)-1) % len(r.Endpoints)
	var errs []error
	for i := range r.Endpoints {
		e := r.Endpoints[(first+i)%len(r.Endpoints)]
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(e.Address, strconv.Itoa(int(e.Port))), p.cfg.DialTimeout)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}
