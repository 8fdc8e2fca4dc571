package e2e_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers"
	"github.com/edgesync/edgesync/controllers/ownership"
	"github.com/edgesync/edgesync/edgeclient"
	"github.com/edgesync/edgesync/edgeclient/agent"
	"github.com/edgesync/edgesync/edgeclient/backoff"
	"github.com/edgesync/edgesync/edgeclient/store"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/ownershiptest"
	"github.com/edgesync/edgesync/internal/repo"
	"github.com/edgesync/edgesync/internal/testcluster"
	"github.com/edgesync/edgesync/server/pki"
)

// Timings of the replicated tests: heartbeats every 5s and a replica Lease
// of 9s, so that the nodes of a killed replica move well within a node
// Lease's 40s.
const (
	replicaLeaseDuration = "9s"
	nodeLeaseDuration    = 40 * time.Second
	ownershipNamespace   = "edgesync-system"
)

// replicaSet is several edgesync-server processes of one deployment: one
// PKI, one ServiceAccount, one ownership namespace.
type replicaSet struct {
	pki      string
	ca       *pki.CA
	replicas []*replicaProc
}

type replicaProc struct {
	id, addr, httpAddr string
	proc               *process
}

// startReplicas starts n replicas with node ownership on.
func startReplicas(t *testing.T, n int) *replicaSet {
	t.Helper()
	testcluster.RESTConfig(t) // skips or fails when there is no devcluster
	root := repo.Root(t)
	kubectl, kubeconfig := repo.Binary(t, "kubectl"), os.Getenv(testcluster.KubeconfigEnv)
	serverBin := repo.Binary(t, "edgesync-server")
	admin := []string{"KUBECONFIG=" + kubeconfig}
	run(t, admin, kubectl, "apply",
		"-f", filepath.Join(root, "deploy", "namespace.yaml"),
		"-f", filepath.Join(root, "deploy", "rbac"))
	token := strings.TrimSpace(run(t, admin, kubectl, "-n", "edgesync-system", "create", "token", "edgesync-server", "--duration=1h"))
	serverKubeconfig := writeTokenKubeconfig(t, kubeconfig, token)

	rs := &replicaSet{pki: filepath.Join(t.TempDir(), "pki")}
	run(t, nil, serverBin, "certs", "init", "--dir", rs.pki, "--hosts", "localhost,127.0.0.1")
	var err error
	if rs.ca, err = pki.LoadCA(filepath.Join(rs.pki, "ca.crt"), filepath.Join(rs.pki, "ca.key")); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(
		"heartbeatInterval: 5s\nownership:\n  namespace: %s\n  leaseDuration: %s\n", ownershipNamespace, replicaLeaseDuration)), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := &replicaProc{
			id:       testcluster.UniqueName(fmt.Sprintf("replica-%c", 'a'+i)),
			addr:     fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		}
		r.proc = start(t, r.id, nil, serverBin,
			"--config", config,
			"--listen", r.addr, "--http-listen", r.httpAddr,
			"--tls-ca", filepath.Join(rs.pki, "ca.crt"),
			"--tls-cert", filepath.Join(rs.pki, "server.crt"),
			"--tls-key", filepath.Join(rs.pki, "server.key"),
			"--kubeconfig", serverKubeconfig,
			"--server-id", r.id, "--ownership-address", r.addr,
			"--log-format", "console")
		rs.replicas = append(rs.replicas, r)
	}
	for _, r := range rs.replicas {
		eventually(t, time.Minute, r.id+" to be ready", func() error { return ready(r.httpAddr) }, r.proc)
	}
	return rs
}

func ready(httpAddr string) error {
	resp, err := http.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("readyz: %s: %s", resp.Status, body)
	}
	return nil
}

// admin dials r with an admin certificate.
func (rs *replicaSet) admin(t *testing.T, r *replicaProc) edgesyncv1.AdminServiceClient {
	t.Helper()
	kp, err := rs.ca.IssueAdmin("failover-test")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: rs.ca.Pool(), MinVersion: tls.VersionTLS12,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return edgesyncv1.NewAdminServiceClient(conn)
}

func (rs *replicaSet) addrs() []string {
	var addrs []string
	for _, r := range rs.replicas {
		addrs = append(addrs, r.addr)
	}
	return addrs
}

// edge is an in-process reference agent for one node.
type edge struct {
	node   string
	client *edgeclient.Client
}

// startEdges runs an agent per node, dialing servers, until the test ends,
// and waits until every Node is Ready.
func (rs *replicaSet) startEdges(t *testing.T, client kubernetes.Interface, nodes []string, labels map[string]string, servers []string) []*edge {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, node := range nodes {
			dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = client.CoreV1().Nodes().Delete(dctx, node, metav1.DeleteOptions{})
			_ = client.CoordinationV1().Leases(ownershipNamespace).Delete(dctx, ownership.RecordName(node), metav1.DeleteOptions{})
			dcancel()
		}
	})
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	edges := make([]*edge, len(nodes))
	clients := make(chan *edge, len(nodes))
	dir := t.TempDir()
	for i, node := range nodes {
		kp, err := rs.ca.IssueNode(node)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile := filepath.Join(dir, node+".crt"), filepath.Join(dir, node+".key")
		if err := kp.WriteFiles(certFile, keyFile, false); err != nil {
			t.Fatal(err)
		}
		e := &edge{node: node}
		edges[i] = e
		cfg := agent.Config{
			Client: edgeclient.Config{
				Servers: servers, CAFile: filepath.Join(rs.pki, "ca.crt"), CertFile: certFile, KeyFile: keyFile,
				NodeName: node, Store: store.NewMemory(), Logger: log.Named(node),
				Backoff: backoff.Config{Initial: 200 * time.Millisecond, Max: 2 * time.Second},
			},
			Labels:   labels,
			OnClient: func(c *edgeclient.Client) { e.client = c; clients <- e },
		}
		wg.Go(func() {
			if err := agent.Run(ctx, cfg); err != nil && ctx.Err() == nil {
				t.Errorf("agent %s: %v", node, err)
			}
		})
	}
	for range nodes {
		select {
		case <-clients:
		case <-time.After(30 * time.Second):
			t.Fatal("agents did not start within 30s")
		}
	}
	eventually(t, 2*time.Minute, "every edge Node to be Ready", func() error {
		for _, node := range nodes {
			if err := nodeReady(t.Context(), client, node, corev1.ConditionTrue); err != nil {
				return err
			}
		}
		return nil
	}, rs.procs()...)
	return edges
}

func (rs *replicaSet) procs() []*process {
	var ps []*process
	for _, r := range rs.replicas {
		if r.proc.exited() == nil {
			ps = append(ps, r.proc)
		}
	}
	return ps
}

// edgeApp is what an edge user writes: a DaemonSet on the test's edge
// nodes using a ConfigMap.
func edgeApp(t *testing.T, client kubernetes.Interface, ns string, nodeSelector map[string]string) {
	t.Helper()
	if _, err := client.CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "settings"}, Data: map[string]string{"generation": "0"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "edge-app"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "edge-app"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: nodeSelector,
					Containers: []corev1.Container{{
						Name: "app", Image: "registry.example/edge-app:1",
						EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
					}},
				},
			},
		},
	}
	if _, err := client.AppsV1().DaemonSets(ns).Create(t.Context(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// churner updates the ConfigMap every 200ms until stopped.
type churner struct {
	mu      sync.Mutex // guards updates and changed
	updates int
	changed chan struct{} // closed and replaced on every update
	stop    func() (int, string)
}

// after waits until n more updates were made.
func (c *churner) after(t *testing.T, n int) {
	t.Helper()
	c.mu.Lock()
	target := c.updates + n
	c.mu.Unlock()
	for {
		c.mu.Lock()
		done, changed := c.updates >= target, c.changed
		c.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-time.After(30 * time.Second):
			t.Fatalf("the ConfigMap was not updated %d times within 30s", n)
		}
	}
}

// churn updates the ConfigMap until stop is called, which returns the
// number of updates and the last resourceVersion.
func churn(t *testing.T, client kubernetes.Interface, ns string) *churner {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c := &churner{changed: make(chan struct{})}
	var last string
	go func() {
		defer close(done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cm, err := client.CoreV1().ConfigMaps(ns).Get(ctx, "settings", metav1.GetOptions{})
			if err != nil {
				continue
			}
			c.mu.Lock()
			cm.Data["generation"] = fmt.Sprint(c.updates + 1)
			c.mu.Unlock()
			if cm, err = client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err == nil {
				last = cm.ResourceVersion
				c.mu.Lock()
				c.updates++
				close(c.changed)
				c.changed = make(chan struct{})
				c.mu.Unlock()
			}
		}
	}()
	c.stop = sync.OnceValues(func() (int, string) {
		cancel()
		<-done
		// An Update cut short by the cancel may still have been written:
		// the apiserver's version is the last one, not the last answer.
		if cm, err := client.CoreV1().ConfigMaps(ns).Get(context.Background(), "settings", metav1.GetOptions{}); err == nil {
			last = cm.ResourceVersion
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.updates, last
	})
	t.Cleanup(func() { c.stop() })
	return c
}

// leaseGaps records, per node, the longest time between renewals of its
// Lease in kube-node-lease.
type leaseGaps struct {
	mu      sync.Mutex // guards last and longest
	last    map[string]time.Time
	longest map[string]time.Duration
	done    chan struct{}
}

func watchLeaseGaps(t *testing.T, client kubernetes.Interface, nodes []string) *leaseGaps {
	t.Helper()
	g := &leaseGaps{last: map[string]time.Time{}, longest: map[string]time.Duration{}, done: make(chan struct{})}
	mine := map[string]bool{}
	for _, n := range nodes {
		mine[n] = true
	}
	w, err := client.CoordinationV1().Leases("kube-node-lease").Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(g.done)
		for ev := range w.ResultChan() {
			l, ok := ev.Object.(*coordinationv1.Lease)
			if !ok || !mine[l.Name] || ev.Type == watch.Deleted || l.Spec.RenewTime == nil {
				continue
			}
			g.mu.Lock()
			if prev, ok := g.last[l.Name]; ok {
				g.longest[l.Name] = max(g.longest[l.Name], l.Spec.RenewTime.Sub(prev))
			}
			g.last[l.Name] = l.Spec.RenewTime.Time
			g.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.Stop(); <-g.done })
	return g
}

// check fails the test for a node whose Lease went longer than its
// duration without renewal, up to now.
func (g *leaseGaps) check(t *testing.T, nodes []string) time.Duration {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	var worst time.Duration
	for _, n := range nodes {
		gap := max(g.longest[n], time.Since(g.last[n]))
		worst = max(worst, gap)
		if gap >= nodeLeaseDuration {
			t.Errorf("the Lease of node %s went %s without renewal (duration %s): it lapsed", n, gap.Round(time.Millisecond), nodeLeaseDuration)
		}
	}
	return worst
}

// waitHoldCurrent waits until every edge holds the ConfigMap at version rv
// and exactly its node's pod (holdsCurrent), showing the replicas' logs
// when it times out.
func (rs *replicaSet) waitHoldCurrent(t *testing.T, timeout time.Duration, what string, client kubernetes.Interface, ns, rv string, edges []*edge) {
	t.Helper()
	eventually(t, timeout, what, func() error {
		for _, e := range edges {
			if err := e.holdsCurrent(t.Context(), client, ns, rv); err != nil {
				return err
			}
		}
		return nil
	}, rs.procs()...)
}

// holdsCurrent reports whether the edge holds the ConfigMap at version rv
// and exactly the pod the apiserver has bound to its node.
func (e *edge) holdsCurrent(ctx context.Context, client kubernetes.Interface, ns, rv string) error {
	cm, err := e.client.ConfigMap(ns, "settings")
	if err != nil {
		return fmt.Errorf("%s: %w", e.node, err)
	}
	if cm == nil || cm.ResourceVersion != rv {
		got := "nothing"
		if cm != nil {
			got = cm.ResourceVersion
		}
		return fmt.Errorf("%s holds ConfigMap settings at %s, the apiserver at %s", e.node, got, rv)
	}
	pods, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + e.node})
	if err != nil {
		return err
	}
	held, err := e.client.Pods()
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, p := range pods.Items {
		want[string(p.UID)] = true
	}
	got := map[string]bool{}
	for _, p := range held {
		if p.Namespace == ns {
			got[string(p.UID)] = true
		}
	}
	if len(want) != 1 || fmt.Sprint(want) != fmt.Sprint(got) {
		return fmt.Errorf("%s holds pods %v of %s, the apiserver binds %v to it", e.node, got, ns, want)
	}
	return nil
}

// owners counts the nodes each replica owns, from the ownership records.
func owners(ctx context.Context, client kubernetes.Interface, nodes []string) (map[string]int, map[string]string, error) {
	count, by := map[string]int{}, map[string]string{}
	for _, n := range nodes {
		rec, err := client.CoordinationV1().Leases(ownershipNamespace).Get(ctx, ownership.RecordName(n), metav1.GetOptions{})
		if err != nil {
			return nil, nil, err
		}
		h := ptr.Deref(rec.Spec.HolderIdentity, "")
		count[h]++
		by[n] = h
	}
	return count, by, nil
}

// TestFailoverThreeReplicas: 50 edges over three replicas while a ConfigMap
// they hold keeps changing; one replica is killed with SIGKILL. Its edges
// reconnect to the others and resync by difference, every edge ends with
// what the apiserver has, no node Lease lapses, and the ownership records'
// history never shows two owners at once.
func TestFailoverThreeReplicas(t *testing.T) {
	const edgeCount = 50
	client := testcluster.Client(t)
	history := ownershiptest.Watch(t, client, ownershipNamespace)
	rs := startReplicas(t, 3)
	ns := testcluster.Namespace(t, client)
	group := testcluster.UniqueName("fo")
	nodeSelector := map[string]string{controllers.DefaultEdgeLabel: "", "edgesync.io/test-group": group}
	edgeApp(t, client, ns, nodeSelector)

	var nodes []string
	for i := range edgeCount {
		nodes = append(nodes, fmt.Sprintf("%s-%02d", group, i))
	}
	edges := rs.startEdges(t, client, nodes, nodeSelector, rs.addrs())
	cm, err := client.CoreV1().ConfigMaps(ns).Get(t.Context(), "settings", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rs.waitHoldCurrent(t, 2*time.Minute, "every edge to hold its DaemonSet pod and the ConfigMap", client, ns, cm.ResourceVersion, edges)
	count, byNode, err := owners(t.Context(), client, nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("nodes per replica before the failure: %v", count)
	if len(count) < 2 {
		t.Errorf("every edge chose the same replica: %v", count)
	}

	gaps := watchLeaseGaps(t, client, nodes)
	changes := churn(t, client, ns)
	changes.after(t, 5) // the ConfigMap changes before, during and after the failure
	victim := rs.replicas[0]
	for _, r := range rs.replicas {
		if count[r.id] > count[victim.id] {
			victim = r
		}
	}
	var moved []*edge
	for _, e := range edges {
		if byNode[e.node] == victim.id {
			moved = append(moved, e)
		}
	}
	killed := time.Now()
	if err := victim.proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.proc.done
	t.Logf("killed %s (SIGKILL) holding %d of %d nodes", victim.id, len(moved), edgeCount)

	eventually(t, time.Minute, "the killed replica's edges to be served by the others", func() error {
		for _, e := range moved {
			st := e.client.State()
			if !st.Connected || !st.Synced || st.ServerID == victim.id {
				return fmt.Errorf("%s: connected %v, synced %v, server %q, last error %q", e.node, st.Connected, st.Synced, st.ServerID, st.LastError)
			}
		}
		return nil
	}, rs.procs()...)
	resynced := time.Since(killed)
	changes.after(t, 10)
	updates, last := changes.stop()

	rs.waitHoldCurrent(t, time.Minute, "every edge to hold what the apiserver has", client, ns, last, edges)
	var sent, held uint32
	for _, e := range moved {
		st := e.client.State()
		sent += st.LastSyncSent
		held += uint32(st.ObjectsHeld)
		if st.LastSyncSent >= uint32(st.ObjectsHeld) {
			t.Errorf("%s was sent %d objects on reconnecting while holding %d: not a resync by difference", e.node, st.LastSyncSent, st.ObjectsHeld)
		}
	}
	// The edges had their objects at once; their nodes change owner when
	// the killed replica's Lease expires, and their reports (held by the
	// survivors until then) are written from then on.
	var after map[string]int
	eventually(t, time.Minute, "no node to be owned by the killed replica", func() error {
		var err error
		if after, _, err = owners(t.Context(), client, nodes); err != nil {
			return err
		}
		if after[victim.id] != 0 {
			return fmt.Errorf("%d nodes still owned by the killed replica: %v", after[victim.id], after)
		}
		return nil
	}, rs.procs()...)
	settled := time.Since(killed)
	// Any replica answers AdminService for the whole deployment.
	asked := rs.replicas[0]
	if asked == victim {
		asked = rs.replicas[1]
	}
	admin := rs.admin(t, asked)
	list, err := admin.ListSessions(t.Context(), &edgesyncv1.ListSessionsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, byNode, err = owners(t.Context(), client, nodes)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{}
	for _, s := range list.GetSessions() {
		listed[s.GetNodeName()] = s.GetServerId()
	}
	var elsewhere string
	for _, n := range nodes {
		if listed[n] != byNode[n] {
			t.Errorf("%s lists node %s on %q, its ownership record says %q", asked.id, n, listed[n], byNode[n])
		}
		if byNode[n] != asked.id {
			elsewhere = n
		}
	}
	got, err := admin.GetSession(t.Context(), &edgesyncv1.GetSessionRequest{NodeName: elsewhere})
	if err != nil || got.GetSession().GetServerId() != byNode[elsewhere] {
		t.Errorf("%s: GetSession of %s (on %s) = %v, %v", asked.id, elsewhere, byNode[elsewhere], got, err)
	}
	// Disconnecting a node held by another replica ends its session there;
	// the edge connects again.
	var moving *edge
	for _, e := range edges {
		if e.node == elsewhere {
			moving = e
		}
	}
	before := moving.client.State().Connections
	if _, err := admin.DisconnectNode(t.Context(), &edgesyncv1.DisconnectNodeRequest{NodeName: elsewhere, Reason: "failover test"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, elsewhere+" to connect again after DisconnectNode", func() error {
		if st := moving.client.State(); st.Connections == before || !st.Connected {
			return fmt.Errorf("connections %d (before %d), connected %v, last error %q", st.Connections, before, st.Connected, st.LastError)
		}
		return nil
	}, rs.procs()...)

	worst := gaps.check(t, nodes)
	history.Check(t)
	t.Logf("failover: %d edges moved in %s (all resynced), their nodes owned by survivors %s after the kill; on reconnecting they were sent %d objects while holding %d; %d ConfigMap updates; longest node Lease gap %s; nodes per replica after: %v",
		len(moved), resynced.Round(time.Millisecond), settled.Round(time.Millisecond), sent, held, updates, worst.Round(time.Millisecond), after)
}

// TestFlappingEdgeHasOneOwner: an edge whose connections are cut every
// second or two, each new one reaching the other of two replicas, for a
// minute. Ownership follows it, the records never show two owners at once,
// its Lease never lapses, and it ends holding what the apiserver has.
func TestFlappingEdgeHasOneOwner(t *testing.T) {
	client := testcluster.Client(t)
	history := ownershiptest.Watch(t, client, ownershipNamespace)
	rs := startReplicas(t, 2)
	ns := testcluster.Namespace(t, client)
	group := testcluster.UniqueName("flap")
	nodeSelector := map[string]string{controllers.DefaultEdgeLabel: "", "edgesync.io/test-group": group}
	edgeApp(t, client, ns, nodeSelector)
	proxy := startCuttingProxy(t, rs.addrs())
	nodes := []string{group + "-0", group + "-1"}
	edges := rs.startEdges(t, client, nodes, nodeSelector, []string{proxy.addr})
	gaps := watchLeaseGaps(t, client, nodes)
	changes := churn(t, client, ns)

	// The workload: a cut every 1.5s for a minute.
	cuts := time.NewTicker(1500 * time.Millisecond)
	for end := time.Now().Add(time.Minute); time.Now().Before(end); {
		<-cuts.C
		proxy.cut()
	}
	cuts.Stop()
	updates, last := changes.stop()
	rs.waitHoldCurrent(t, time.Minute, "the edges to hold what the apiserver has", client, ns, last, edges)
	worst := gaps.check(t, nodes)
	history.Check(t)
	moves := history.Transitions()
	t.Logf("flapping: %d connections cut, %d ownership transitions, %d ConfigMap updates, longest node Lease gap %s",
		proxy.cuts(), moves, updates, worst.Round(time.Millisecond))
	if moves < 10 {
		t.Errorf("ownership moved %d times in a minute of flapping; the proxy did not move the edges", moves)
	}
}

// cuttingProxy forwards each connection to the next backend in turn, and
// cuts every open connection on demand.
type cuttingProxy struct {
	addr     string
	lis      net.Listener
	backends []string

	mu    sync.Mutex // guards the fields below
	next  int
	conns map[net.Conn]struct{}
	ncuts int
	wg    sync.WaitGroup
}

func startCuttingProxy(t *testing.T, backends []string) *cuttingProxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{addr: lis.Addr().String(), lis: lis, backends: backends, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		lis.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *cuttingProxy) accept() {
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		backend := p.backends[p.next%len(p.backends)]
		p.next++
		p.mu.Unlock()
		out, err := net.Dial("tcp", backend)
		if err != nil {
			in.Close()
			continue
		}
		p.track(in, out)
		p.wg.Go(func() { pipe(out, in) })
		p.wg.Go(func() { pipe(in, out) })
	}
}

func pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *cuttingProxy) track(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
}

// cut closes every open connection.
func (p *cuttingProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
	if len(p.conns) > 0 {
		p.ncuts++
	}
	p.conns = map[net.Conn]struct{}{}
}

func (p *cuttingProxy) cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ncuts
}
