package serviceproxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/edgesync/edgesync/edgeclient"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// store is a Resolver over one Service with fixed endpoints.
type store struct {
	mu        sync.Mutex // guards endpoints
	svc       *corev1.Service
	endpoints []edgeclient.Endpoint
}

func (s *store) Services() ([]*corev1.Service, error) { return []*corev1.Service{s.svc}, nil }

func (s *store) Resolve(namespace, name, port string) (*edgeclient.Resolution, error) {
	if namespace != s.svc.Namespace || name != s.svc.Name || port != "http" {
		return nil, edgeclient.ErrNoService
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &edgeclient.Resolution{Service: s.svc, Port: s.svc.Spec.Ports[0], Endpoints: append([]edgeclient.Endpoint(nil), s.endpoints...)}, nil
}

// echo runs a TCP server on loopback that answers each line with its own
// name and the line, until the test ends.
func echo(t *testing.T, name string) int32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					_, _ = io.WriteString(c, name+" "+line)
				}
			})
		}
	})
	return int32(ln.Addr().(*net.TCPAddr).Port)
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) int32 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := int32(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	return port
}

// TestRoundRobinSkippingRefusingEndpoints: connections to a Service port
// reach its endpoint processes in turn, never the one that refuses.
func TestRoundRobinSkippingRefusingEndpoints(t *testing.T) {
	s := &store{
		svc: &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
			Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP}}},
		},
		endpoints: []edgeclient.Endpoint{
			{Address: "127.0.0.1", Port: echo(t, "a")},
			{Address: "127.0.0.1", Port: closedPort(t)},
			{Address: "127.0.0.1", Port: echo(t, "b")},
		},
	}
	p, err := New(Config{CIDR: "127.100.0.0/16", Resolver: s, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// What Run does on each change, once.
	var conns sync.WaitGroup
	t.Cleanup(func() { p.closeAll(); conns.Wait() })
	if err := p.reconcile(t.Context(), &conns); err != nil {
		t.Fatal(err)
	}
	ip, ok := p.Address("shop", "web")
	if !ok {
		t.Fatal("the proxy does not listen for shop/web")
	}
	if !p.network.Contains(ip) {
		t.Fatalf("shop/web got %s, outside %s", ip, p.cfg.CIDR)
	}
	addr := net.JoinHostPort(ip.String(), "8080")
	got := map[string]int{}
	for i := range 6 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "hello %d\n", i)
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		name, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		if err != nil || rest != fmt.Sprintf("hello %d", i) {
			t.Fatalf("round trip %d through %s: got %q, %v", i, addr, line, err)
		}
		got[name]++
	}
	if got["a"] == 0 || got["b"] == 0 || got["a"]+got["b"] != 6 {
		t.Errorf("6 connections reached the endpoints %v, want both serving ones", got)
	}
}

// TestListenersFollowTheServices: Run opens a listener for a Service that
// appears and closes it once the Service is gone.
func TestListenersFollowTheServices(t *testing.T) {
	s := &store{svc: &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.10", Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}},
	}}
	held := &switchable{store: s}
	p, err := New(Config{CIDR: "127.100.0.0/16", Resolver: held, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { p.closeAll(); conns.Wait() })
	if err := p.reconcile(t.Context(), &conns); err != nil {
		t.Fatal(err)
	}
	ip, ok := p.Address("shop", "web")
	if !ok {
		t.Fatal("no listener for shop/web")
	}
	addr := net.JoinHostPort(ip.String(), "8080")
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	} else {
		c.Close()
	}

	held.gone.Store(true)
	if err := p.reconcile(t.Context(), &conns); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Address("shop", "web"); ok {
		t.Error("a Service no longer held still has an address")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after its Service is gone", addr)
	}
}

// switchable holds its store's Service until gone is set.
type switchable struct {
	*store
	gone atomic.Bool
}

func (s *switchable) Services() ([]*corev1.Service, error) {
	if s.gone.Load() {
		return nil, nil
	}
	return s.store.Services()
}
