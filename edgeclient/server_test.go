package edgeclient_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"

	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/backoff"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/feed"
	"github.com/edgesync/edgesync/server/pki"
)

// The tests in this file run the client against the real sync server
// (internal/servertest) over real mTLS on loopback, through a TCP proxy
// that can cut every connection, as a flaky link does, or refuse them, as
// an unreachable cloud does.

// proxy forwards TCP connections to target; with no target it refuses them.
type proxy struct {
	lis net.Listener
	wg  sync.WaitGroup

	mu     sync.Mutex // guards target and conns
	target string
	conns  map[net.Conn]struct{}
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{lis: lis, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.lis.Addr().String() }

func (p *proxy) setTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

func (p *proxy) accept() {
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		target := p.target
		p.mu.Unlock()
		if target == "" {
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		p.wg.Go(func() { pipe(out, in) })
		p.wg.Go(func() { pipe(in, out) })
	}
}

// cut closes every open connection.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

func (p *proxy) close() {
	p.lis.Close()
	p.cut()
	p.wg.Wait()
}

type agent struct {
	*edgeclient.Client
	cancel context.CancelFunc
	done   chan error
}

func newClient(t *testing.T, addr, caFile, certFile, keyFile, node, storeDir string, configure ...func(*edgeclient.Config)) *agent {
	t.Helper()
	cfg := edgeclient.Config{
		Server: addr, CAFile: caFile, CertFile: certFile, KeyFile: keyFile, NodeName: node,
		StoreDir: storeDir, AgentVersion: "edgeclient-test",
		Logger:  zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Backoff: backoff.Config{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond},
	}
	for _, f := range configure {
		f(&cfg)
	}
	c, err := edgeclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{Client: c}
	t.Cleanup(func() {
		a.stop(t)
		c.Close()
	})
	return a
}

func (a *agent) start() {
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	go func() { a.done <- a.Run(ctx) }()
}

func (a *agent) stop(t *testing.T) {
	if a.cancel == nil {
		return
	}
	a.cancel()
	if err := <-a.done; err != nil {
		t.Errorf("Run: %v", err)
	}
	a.cancel = nil
}

func wait(t *testing.T, c *edgeclient.Client, what string, cond func(edgeclient.State) bool) edgeclient.State {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	s, err := c.WaitFor(ctx, cond)
	if err != nil {
		t.Fatalf("waiting for %s: %v (state %+v)", what, err, s)
	}
	return s
}

// held describes the client's store as key -> resourceVersion.
func held(c *edgeclient.Client) map[string]string {
	out := map[string]string{}
	objs, err := c.List(edgesyncv1.Kind_KIND_UNSPECIFIED)
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	for _, o := range objs {
		switch {
		case o.Pod != nil:
			out["Pod "+o.Pod.Namespace+"/"+o.Pod.Name] = o.Pod.ResourceVersion
		case o.ConfigMap != nil:
			out["ConfigMap "+o.ConfigMap.Namespace+"/"+o.ConfigMap.Name] = o.ConfigMap.ResourceVersion
		}
	}
	return out
}

// desired describes what the controllers say node should hold.
func desired(t *testing.T, ctrls *feedtest.Controllers, node string) map[string]string {
	objs, err := ctrls.Desired(node)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, o := range objs {
		kind := "Pod"
		if o.Key.Kind == edgesyncv1.Kind_KIND_CONFIG_MAP {
			kind = "ConfigMap"
		}
		out[kind+" "+o.Key.Namespace+"/"+o.Key.Name] = o.ResourceVersion
	}
	return out
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestServerKillConnectionMidStream(t *testing.T) {
	const node = "edge-kill"
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	p := newProxy(t, env.Addr)
	certFile, keyFile := env.NodeCert(t, node)

	sent := 0 // object versions the server was given for the node
	var initial []*feed.Object
	for i := range 30 {
		initial = append(initial, feedtest.ConfigMap("ns", fmt.Sprint("cm-", i), "1", map[string]string{"i": fmt.Sprint(i)}))
	}
	ctrls.Set(node, initial...)
	sent += len(initial)

	c := newClient(t, p.addr(), env.CAFile, certFile, keyFile, node, t.TempDir())
	c.start()
	for round := range 20 {
		wait(t, c.Client, fmt.Sprint("connection ", round+1), func(s edgeclient.State) bool { return s.Connections > uint64(round) && s.Connected })
		for i := range 6 {
			name := fmt.Sprint("cm-", (round*7+i)%30)
			switch {
			case i == 3:
				p.cut() // in the middle of a burst of changes
			case (round+i)%5 == 0:
				ctrls.Delete(node, feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: "ns", Name: name})
			default:
				ctrls.Put(node, feedtest.ConfigMap("ns", name, fmt.Sprint(100+round*10+i), map[string]string{"round": fmt.Sprint(round)}))
				sent++
			}
		}
		ctrls.Put(node, feedtest.Pod("ns", fmt.Sprint("pod-", round), node, fmt.Sprint(round+1)))
		sent++
	}
	want := desired(t, ctrls, node)
	s := wait(t, c.Client, "the store to equal what the node should hold", func(s edgeclient.State) bool {
		return s.Connections == 21 && s.Synced && sameMap(held(c.Client), want)
	})
	// Had unchanged objects been sent again on each of the 20 reconnects,
	// the client would have received hundreds more.
	if s.ObjectsReceived > uint64(sent) {
		t.Errorf("received %d object versions, but only %d were ever published: unchanged objects were sent again", s.ObjectsReceived, sent)
	}
	t.Logf("published %d versions, received %d, %d connections", sent, s.ObjectsReceived, s.Connections)
}

func TestServerOfflineStartThenServerAppears(t *testing.T) {
	const node = "edge-offline"
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	p := newProxy(t, env.Addr)
	certFile, keyFile := env.NodeCert(t, node)
	dir := t.TempDir()
	ctrls.Set(node, feedtest.Pod("ns", "web", node, "5"), feedtest.ConfigMap("ns", "cfg", "3", map[string]string{"k": "v"}))

	first := newClient(t, p.addr(), env.CAFile, certFile, keyFile, node, dir)
	first.start()
	wait(t, first.Client, "first sync", func(s edgeclient.State) bool { return s.Synced && s.ObjectsHeld == 2 })
	first.stop(t)
	first.Close()

	// The cloud goes away; meanwhile the configmap changes.
	p.setTarget("")
	p.cut()
	ctrls.Put(node, feedtest.ConfigMap("ns", "cfg", "4", map[string]string{"k": "v2"}))

	c := newClient(t, p.addr(), env.CAFile, certFile, keyFile, node, dir)
	pod, err := c.Pod("ns", "web")
	if err != nil || pod == nil || pod.ResourceVersion != "5" || pod.Spec.NodeName != node {
		t.Fatalf("before any connection, Pod(ns/web) = %v, %v; want the stored pod", pod, err)
	}
	c.start()
	wait(t, c.Client, "failed attempts", func(s edgeclient.State) bool { return s.Reconnects >= 3 })
	cm, err := c.ConfigMap("ns", "cfg")
	if err != nil || cm == nil || cm.Data["k"] != "v" {
		t.Fatalf("while the server is unreachable, ConfigMap(ns/cfg) = %v, %v; want the stored one", cm, err)
	}

	p.setTarget(env.Addr)
	s := wait(t, c.Client, "sync once the server is reachable", func(s edgeclient.State) bool { return s.Synced })
	if s.LastSyncSent != 1 {
		t.Errorf("server sent %d objects on resume, want only the changed configmap", s.LastSyncSent)
	}
	if cm, _ := c.ConfigMap("ns", "cfg"); cm == nil || cm.ResourceVersion != "4" || cm.Data["k"] != "v2" {
		t.Errorf("after sync ConfigMap(ns/cfg) = %v, want version 4", cm)
	}
}

func TestServerReportsMadeOfflineArriveAfterReconnect(t *testing.T) {
	const node = "edge-reports"
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	p := newProxy(t, "")
	certFile, keyFile := env.NodeCert(t, node)
	c := newClient(t, p.addr(), env.CAFile, certFile, keyFile, node, t.TempDir())
	c.start()
	wait(t, c.Client, "a failed attempt", func(s edgeclient.State) bool { return s.Reconnects >= 1 })

	var reports []*edgeclient.Report
	podStatus := func(name string, phase corev1.PodPhase) {
		r, err := c.ReportPodStatus("ns", name, "uid-ns-"+name, &corev1.PodStatus{Phase: phase})
		if err != nil {
			t.Fatal(err)
		}
		reports = append(reports, r)
	}
	podStatus("a", corev1.PodPending)
	podStatus("a", corev1.PodRunning) // supersedes the first
	podStatus("b", corev1.PodSucceeded)
	dev, err := c.ReportDeviceStatus(&edgesyncv1.DeviceStatus{Namespace: "ns", Name: "thermo", State: "online"})
	if err != nil {
		t.Fatal(err)
	}
	reports = append(reports, dev)

	p.setTarget(env.Addr)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if _, err := reports[0].Wait(ctx); err != edgeclient.ErrSuperseded {
		t.Errorf("superseded report: Wait = %v, want ErrSuperseded", err)
	}
	for _, r := range reports[1:] {
		res, err := r.Wait(ctx)
		if err != nil || res.GetRequestId() != r.ID() {
			t.Errorf("report %d: %v, %v; want an OK answer", r.ID(), res, err)
		}
	}
	got := map[string][]string{}
	for _, r := range ctrls.Reports() {
		switch m := r.Request.GetMessage().(type) {
		case *edgesyncv1.SyncRequest_PodStatus:
			got[m.PodStatus.GetName()] = append(got[m.PodStatus.GetName()], m.PodStatus.GetStatus().GetPhase())
		case *edgesyncv1.SyncRequest_DeviceStatus:
			got[m.DeviceStatus.GetName()] = append(got[m.DeviceStatus.GetName()], m.DeviceStatus.GetState())
		}
	}
	want := map[string][]string{"a": {"Running"}, "b": {"Succeeded"}, "thermo": {"online"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("server received %v, want the latest report per object once: %v", got, want)
	}
}

func TestServerRotatedCertificateWithoutRestart(t *testing.T) {
	const node = "edge-rotate"
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls)
	admin := edgesyncv1.NewAdminServiceClient(env.DialAdmin(t))

	// Start with a certificate from a CA the server does not trust.
	foreign, err := pki.NewCA("foreign")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key")
	write := func(ca *pki.CA) {
		kp, err := ca.IssueNode(node)
		if err != nil {
			t.Fatal(err)
		}
		if err := kp.WriteFiles(certFile, keyFile, true); err != nil {
			t.Fatal(err)
		}
	}
	write(foreign)
	c := newClient(t, env.Addr, env.CAFile, certFile, keyFile, node, t.TempDir())
	c.start()
	wait(t, c.Client, "refused attempts", func(s edgeclient.State) bool { return s.Reconnects >= 3 })
	if s := c.State(); s.Connections != 0 {
		t.Fatalf("the server accepted a certificate from a foreign CA (%d connections)", s.Connections)
	}

	// Rotate to a certificate the server trusts: the next attempt uses it.
	write(env.CA)
	wait(t, c.Client, "connection with the rotated certificate", func(s edgeclient.State) bool { return s.Connected })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := admin.GetSession(ctx, &edgesyncv1.GetSessionRequest{NodeName: node}); err != nil {
		t.Fatalf("server has no session for the node: %v", err)
	}

	// Rotate back to the untrusted one and drop the stream: the client
	// reconnects with it, and is refused.
	write(foreign)
	before := c.State().Reconnects
	if _, err := admin.DisconnectNode(ctx, &edgesyncv1.DisconnectNodeRequest{NodeName: node, Reason: "rotation test"}); err != nil {
		t.Fatal(err)
	}
	s := wait(t, c.Client, "attempts with the foreign certificate", func(s edgeclient.State) bool { return s.Reconnects >= before+3 })
	if s.Connections != 1 {
		t.Errorf("%d connections after rotating to an untrusted certificate, want still 1: the old certificate was reused", s.Connections)
	}
}

func TestServerHeartbeatsOnWelcomeInterval(t *testing.T) {
	const node = "edge-heartbeat"
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.HeartbeatInterval = 20 * time.Millisecond })
	certFile, keyFile := env.NodeCert(t, node)
	c := newClient(t, env.Addr, env.CAFile, certFile, keyFile, node, t.TempDir())
	c.start()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for n := 1; ; n++ {
		reports, err := ctrls.WaitReports(ctx, n)
		if err != nil {
			t.Fatalf("waiting for heartbeats: %v", err)
		}
		beats := 0
		for _, r := range reports {
			if r.Request.GetHeartbeat() != nil {
				beats++
			}
		}
		if beats >= 5 {
			break
		}
	}
	if s := c.State(); s.Connections != 1 || s.PendingReports > 1 {
		t.Errorf("after five heartbeats: %d connections, %d unanswered reports; want 1 and at most 1", s.Connections, s.PendingReports)
	}
}

// TestBackoffAcrossClients watches two clients that cannot reach the cloud:
// every delay stays within its attempt's bound, and the two do not retry in
// lockstep.
func TestBackoffAcrossClients(t *testing.T) {
	env := servertest.Start(t, feedtest.New())
	p := newProxy(t, "") // refuses every connection
	cfg := backoff.Config{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}
	var seqs [2][]time.Duration
	for i := range seqs {
		node := fmt.Sprint("edge-backoff-", i)
		certFile, keyFile := env.NodeCert(t, node)
		c := newClient(t, p.addr(), env.CAFile, certFile, keyFile, node, t.TempDir())
		c.start()
		var last uint64
		wait(t, c.Client, "eight failed attempts", func(s edgeclient.State) bool {
			if s.Reconnects != last {
				last = s.Reconnects
				// The capped bound of attempt n (1-based): Initial*2^(n-1), at most Max.
				bound := min(cfg.Initial<<min(s.Reconnects-1, 20), cfg.Max)
				if s.RetryDelay < 0 || s.RetryDelay > bound {
					t.Errorf("client %d attempt %d: delay %v outside [0, %v]", i, s.Reconnects, s.RetryDelay, bound)
				}
				seqs[i] = append(seqs[i], s.RetryDelay)
			}
			return s.Reconnects >= 8
		})
		c.stop(t)
	}
	if fmt.Sprint(seqs[0]) == fmt.Sprint(seqs[1]) {
		t.Errorf("two clients drew the same delays: %v", seqs[0])
	}
}

// TestServerLargeInitialSync syncs many more objects than the server's ack
// window: the client must acknowledge as it goes for the sync to finish.
func TestServerLargeInitialSync(t *testing.T) {
	const node, n = "edge-large", 2000
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow = 16 })
	objs := make([]*feed.Object, 0, n)
	for i := range n {
		objs = append(objs, feedtest.ConfigMap("ns", fmt.Sprint("cm-", i), "1", map[string]string{"i": fmt.Sprint(i)}))
	}
	ctrls.Set(node, objs...)
	certFile, keyFile := env.NodeCert(t, node)
	c := newClient(t, env.Addr, env.CAFile, certFile, keyFile, node, t.TempDir())
	c.start()
	s := wait(t, c.Client, "initial sync", func(s edgeclient.State) bool { return s.Synced })
	if s.ObjectsHeld != n || s.LastSyncSent != n {
		t.Errorf("after the initial sync: %d held, server sent %d; want %d", s.ObjectsHeld, s.LastSyncSent, n)
	}
}

// TestHeartbeatWhileGatesTheClientsOwnHeartbeats: with HeartbeatWhile
// closed the client sends no heartbeat of its own (the node's Lease lapses
// when, say, its kubelet stops renewing it), Heartbeat still sends one,
// and once the gate opens the periodic heartbeats resume.
func TestHeartbeatWhileGatesTheClientsOwnHeartbeats(t *testing.T) {
	const node = "edge-gated"
	ctrls := feedtest.New()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.HeartbeatInterval = 20 * time.Millisecond })
	certFile, keyFile := env.NodeCert(t, node)
	var (
		open    atomic.Bool
		checked atomic.Int64
		ticked  = make(chan struct{}, 1)
	)
	c := newClient(t, env.Addr, env.CAFile, certFile, keyFile, node, t.TempDir(), func(cfg *edgeclient.Config) {
		cfg.HeartbeatWhile = func() bool {
			checked.Add(1)
			select {
			case ticked <- struct{}{}:
			default:
			}
			return open.Load()
		}
	})
	c.start()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	beats := func() int {
		n := 0
		for _, r := range ctrls.Reports() {
			if r.Request.GetHeartbeat() != nil {
				n++
			}
		}
		return n
	}
	// Five intervals with the gate closed: none.
	for checked.Load() < 5 {
		select {
		case <-ticked:
		case <-ctx.Done():
			t.Fatal("the client never consulted HeartbeatWhile")
		}
	}
	r, err := c.Heartbeat()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if n := beats(); n != 1 {
		t.Fatalf("%d heartbeats with the gate closed and one asked for, want 1", n)
	}
	open.Store(true)
	if _, err := ctrls.WaitReports(ctx, 4); err != nil {
		t.Fatalf("heartbeats after the gate opened: %v", err)
	}
}
