package e2e_test

import (
	"fmt"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/internal/testcluster"
)

// TestNodeRecoversAfterAnOutage cuts an agent's link to the server for
// longer than the node monitor grace period, as edge networks fail in the
// field, and brings it back without restarting the agent: the Node, its
// taints, its pod's Ready condition and the pod's endpoint in its Service
// all come back within a node status update period of the reconnect.
// "silent" is a half-open link (NAT timeout, cellular drop: nothing flows,
// nothing is reset); "refused" a link that resets (connections refused).
func TestNodeRecoversAfterAnOutage(t *testing.T) {
	in := install(t)
	for _, mode := range []outage{outageSilent, outageRefused} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			nodeRecoversAfter(t, in, mode)
		})
	}
}

func nodeRecoversAfter(t *testing.T, in *installation, mode outage) {
	client := testcluster.Client(t)
	ctx := t.Context()
	group := testcluster.UniqueName("g")
	// A zone of its own with a node that stays online: the node lifecycle
	// controller taints NoExecute only in zones not wholly disrupted.
	zone := map[string]string{corev1.LabelTopologyZone: group}
	online := in.startAgent(t, client, testcluster.UniqueName("edge-on"), merge(zone, map[string]string{"e2e.edgesync.io/group": group + "-on"}))
	link := startLinkProxy(t, in.addr)
	flaky := in.startAgent(t, client, testcluster.UniqueName("edge-flaky"), merge(zone, map[string]string{"e2e.edgesync.io/group": group}),
		"--server", link.addr)
	procs := []*process{in.server, online.proc, flaky.proc}

	ns := testcluster.Namespace(t, client)
	createWebConfig(t, client, ns)
	template := webPodSpec(group) // selects the flaky node alone
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Template: template,
			Selector: &metav1.LabelSelector{MatchLabels: template.Labels}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Selector: template.Labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	eventually(t, 2*time.Minute, "the web pod Ready on "+flaky.node+" and its endpoint ready in the Service", func() error {
		p, err := webPodOn(t, ns, flaky.node)
		if err != nil {
			return err
		}
		pod = p
		return podAndEndpointReady(t, ns, p, true)
	}, procs...)

	link.down(mode)
	downAt := time.Now()
	eventually(t, 2*time.Minute, flaky.node+" Unknown and tainted unreachable, its pod not Ready", func() error {
		if err := nodeReady(ctx, client, flaky.node, corev1.ConditionUnknown); err != nil {
			return err
		}
		if err := unreachableTaints(t, flaky.node, true); err != nil {
			return err
		}
		return podAndEndpointReady(t, ns, pod, false)
	}, in.server, online.proc, flaky.proc)
	t.Logf("%s: %s Unknown, tainted, its pod not Ready %s after the link went down", mode, flaky.node, time.Since(downAt).Round(time.Second))
	// As in the field, the link stays down until both ends gave up on it:
	// the agent notices a dead link, the server ends the silent session.
	link.waitClientsGaveUp(t, 2*time.Minute)
	eventually(t, 2*time.Minute, "the server to end the session of "+flaky.node, func() error {
		if out := in.grpcurl(t, "edgesync.v1.AdminService/ListSessions"); strings.Contains(out, flaky.node) {
			return fmt.Errorf("the server still lists a session of %s", flaky.node)
		}
		return nil
	}, in.server, online.proc, flaky.proc)
	t.Logf("%s: both ends gave up on the link %s after it went down", mode, time.Since(downAt).Round(time.Second))

	link.up()
	reconnected := link.waitForwarding(t, 2*time.Minute)
	// The node status update period of a kubelet is 10 s; the node
	// lifecycle controller then needs its monitor period (2 s here) to
	// lift the taints, and the endpoint controllers a moment more.
	const within = 30 * time.Second
	eventually(t, within, flaky.node+" Ready, untainted, its pod Ready and in its Service's endpoints again, without an agent restart", func() error {
		if err := nodeReady(ctx, client, flaky.node, corev1.ConditionTrue); err != nil {
			return err
		}
		if err := unreachableTaints(t, flaky.node, false); err != nil {
			return err
		}
		return podAndEndpointReady(t, ns, pod, true)
	}, procs...)
	t.Logf("%s: recovered %s after the agent reconnected (%s after the link returned)", mode,
		time.Since(reconnected).Round(100*time.Millisecond), time.Since(link.upAt()).Round(100*time.Millisecond))
	if err := flaky.proc.exited(); err != nil {
		t.Fatalf("the agent restarted or exited: %v", err)
	}
	if p, err := webPodOn(t, ns, flaky.node); err != nil || p.UID != pod.UID {
		t.Fatalf("the pod on %s was replaced (%v): the outage must not evict it", flaky.node, err)
	}
}

func merge(a, b map[string]string) map[string]string {
	out := maps.Clone(a)
	maps.Copy(out, b)
	return out
}

// webPodOn is the web pod bound to node.
func webPodOn(t *testing.T, ns, node string) (corev1.Pod, error) {
	pods, err := testcluster.Client(t).CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=web"})
	if err != nil {
		return corev1.Pod{}, err
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			return p, nil
		}
	}
	return corev1.Pod{}, fmt.Errorf("no web pod on %s", node)
}

// podAndEndpointReady checks the pod's Ready condition and its endpoint's
// ready condition in the EndpointSlices of the web Service.
func podAndEndpointReady(t *testing.T, ns string, want corev1.Pod, ready bool) error {
	client := testcluster.Client(t)
	p, err := client.CoreV1().Pods(ns).Get(t.Context(), want.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	podReady := false
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			podReady = c.Status == corev1.ConditionTrue
		}
	}
	if podReady != ready {
		return fmt.Errorf("pod %s Ready=%v, want %v", p.Name, podReady, ready)
	}
	slices, err := client.DiscoveryV1().EndpointSlices(ns).List(t.Context(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
	if err != nil {
		return err
	}
	for _, s := range slices.Items {
		for _, ep := range s.Endpoints {
			if ep.TargetRef == nil || ep.TargetRef.UID != want.UID {
				continue
			}
			if got := ep.Conditions.Ready != nil && *ep.Conditions.Ready; got != ready {
				return fmt.Errorf("endpoint of pod %s in the web Service is ready=%v, want %v", p.Name, got, ready)
			}
			return nil
		}
	}
	return fmt.Errorf("pod %s has no endpoint in the web Service's EndpointSlices", p.Name)
}

// unreachableTaints checks that node carries (or no longer carries) both
// unreachable taints.
func unreachableTaints(t *testing.T, node string, want bool) error {
	n, err := testcluster.Client(t).CoreV1().Nodes().Get(t.Context(), node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, effect := range []corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectNoExecute} {
		if hasTaint(n, corev1.TaintNodeUnreachable, effect) != want {
			return fmt.Errorf("node %s taints %v: want %s:%s present=%v", node, n.Spec.Taints, corev1.TaintNodeUnreachable, effect, want)
		}
	}
	return nil
}

// outage is how a link fails.
type outage string

const (
	// outageSilent: connections stay open and nothing flows either way;
	// new connections are accepted and hang.
	outageSilent outage = "silent"
	// outageRefused: every connection is reset and new ones are refused.
	outageRefused outage = "refused"
)

// linkProxy is a TCP link between agents and the server that can fail
// and come back.
type linkProxy struct {
	addr    string
	backend string
	wg      sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	lis       net.Listener
	open      chan struct{} // closed while the link is up
	conns     map[net.Conn]struct{}
	pairs     map[*linkPair]struct{} // forwarded connections
	cut       []*linkPair            // those open when the link went down
	upSince   time.Time
	forwarded time.Time     // first connection forwarded since upSince
	changed   chan struct{} // closed and replaced on every change above
	closed    bool
}

// linkPair is one forwarded connection; clientLeft says its client (the
// agent) closed it (guarded by linkProxy.mu).
type linkPair struct{ clientLeft bool }

func startLinkProxy(t *testing.T, backend string) *linkProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{addr: lis.Addr().String(), backend: backend, lis: lis, open: make(chan struct{}),
		conns: map[net.Conn]struct{}{}, pairs: map[*linkPair]struct{}{}, changed: make(chan struct{})}
	close(p.open)
	p.serve(lis)
	t.Cleanup(func() {
		p.mu.Lock()
		p.closed = true
		if p.lis != nil {
			_ = p.lis.Close()
		}
		select {
		case <-p.open:
		default:
			close(p.open)
		}
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *linkProxy) serve(lis net.Listener) {
	p.wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.forward(c) })
		}
	})
}

// notify wakes the waiters; the caller holds mu.
func (p *linkProxy) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// track adds c to the open connections, or reports that the proxy closed.
func (p *linkProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *linkProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *linkProxy) gate() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

func (p *linkProxy) isUp() bool {
	select {
	case <-p.gate():
		return true
	default:
		return false
	}
}

func (p *linkProxy) forward(in net.Conn) {
	if !p.track(in) {
		_ = in.Close()
		return
	}
	defer p.untrack(in)
	<-p.gate() // a silent link accepts and hangs
	out, err := net.Dial("tcp", p.backend)
	if err != nil || !p.track(out) {
		return
	}
	defer p.untrack(out)
	pair := &linkPair{}
	p.mu.Lock()
	p.pairs[pair] = struct{}{}
	if p.forwarded.IsZero() && !p.upSince.IsZero() {
		p.forwarded = time.Now()
		p.notify()
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pairs, pair)
		p.mu.Unlock()
	}()
	pump := func(dst, src net.Conn, fromClient bool) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && p.isUp() { // a silent link loses what it carries
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		p.mu.Lock()
		pair.clientLeft = pair.clientLeft || fromClient
		p.notify()
		p.mu.Unlock()
		<-p.gate() // a silent link tells neither end that the other left
		_ = in.Close()
		_ = out.Close()
	}
	var wg sync.WaitGroup
	wg.Go(func() { pump(out, in, true) })
	wg.Go(func() { pump(in, out, false) })
	wg.Wait()
}

// down fails the link as mode says.
func (p *linkProxy) down(mode outage) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open = make(chan struct{})
	p.upSince, p.forwarded = time.Time{}, time.Time{}
	p.cut = p.cut[:0]
	for pair := range p.pairs {
		p.cut = append(p.cut, pair)
	}
	if mode == outageRefused {
		_ = p.lis.Close()
		p.lis = nil
		for c := range p.conns {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // reset, not a clean close
			}
			_ = c.Close()
		}
	}
}

// waitClientsGaveUp waits until the clients of every connection the outage
// cut have closed it: the agent noticed the dead link.
func (p *linkProxy) waitClientsGaveUp(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		alive, ch := 0, p.changed
		for _, pair := range p.cut {
			if !pair.clientLeft {
				alive++
			}
		}
		p.mu.Unlock()
		if alive == 0 {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("the agent still holds %d connections the outage cut after %s", alive, timeout)
		}
	}
}

// up restores the link; a refused link listens again on its address.
func (p *linkProxy) up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lis == nil {
		lis, err := net.Listen("tcp", p.addr)
		if err != nil {
			panic(fmt.Sprintf("listen again on %s: %v", p.addr, err))
		}
		p.lis = lis
		p.serve(lis)
	}
	p.upSince = time.Now()
	close(p.open)
}

func (p *linkProxy) upAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.upSince
}

// waitForwarding waits for the first connection forwarded since the link
// came back up (the agent's reconnect) and returns when it was.
func (p *linkProxy) waitForwarding(t *testing.T, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		at, ch := p.forwarded, p.changed
		p.mu.Unlock()
		if !at.IsZero() {
			return at
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("the agent did not reconnect within %s of the link's return", timeout)
		}
	}
}
