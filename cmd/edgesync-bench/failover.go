package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"

	"github.com/edgesync/edgesync/controllers/ownership"
	"github.com/edgesync/edgesync/internal/bench/cluster"
	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/measure"
	"github.com/edgesync/edgesync/internal/ownershiptest"
	"github.com/edgesync/edgesync/server/feed"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// failoverResult is scenario 8: edges spread over three replicas with node
// ownership, one replica killed.
type failoverResult struct {
	Done     bool `json:"done"`
	Edges    int  `json:"edges"`
	Replicas int  `json:"replicas"`
	// Killed is the killed replica's id; KilledEdges the edges it held.
	Killed      string `json:"killed"`
	KilledEdges int    `json:"killed_edges"`
	// The ownership settings: the product defaults unless said otherwise.
	OwnershipLease string  `json:"ownership_lease_duration"`
	OwnershipQPS   string  `json:"ownership_qps"`
	SetupSeconds   float64 `json:"setup_seconds"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// SteadySeconds is how long after every edge synced the replicas'
	// first writes (every node's Lease, every pod's token and
	// tolerations) took to finish: the kill comes after them, as a
	// replica's failure in production comes long after its start.
	SteadySeconds float64 `json:"steady_seconds"`

	// From the kill: every edge has a stream to a surviving replica;
	// every edge is synced on it and holds the ConfigMap version written
	// right after the kill; every node record is held by a survivor.
	ReconnectedSeconds float64 `json:"seconds_until_all_reconnected"`
	// FirstReconnectedSeconds is when every edge first had a stream to a
	// survivor (polled), before any was dropped again.
	FirstReconnectedSeconds float64 `json:"seconds_until_all_first_reconnected"`
	ResyncedSeconds         float64 `json:"seconds_until_all_resynced"`
	OwnershipSeconds        float64 `json:"seconds_until_ownership_settled"`
	WindowSeconds           float64 `json:"window_seconds"`

	// Requests during the window, "VERB resource[/subresource]": every
	// client of the apiserver (apiserver_request_total; the
	// controller-manager's and the benchmark's own watches included), and
	// the survivors' own (edgesync_kube_requests_total).
	APIServerRequests map[string]float64 `json:"apiserver_requests"`
	EdgesyncRequests  map[string]float64 `json:"edgesync_requests"`
	EdgesyncListGet   float64            `json:"edgesync_list_get"`

	// From the ownership records' history over the whole run.
	DuplicateOwners int      `json:"duplicate_owners"`
	Violations      []string `json:"violations,omitempty"`
	Transitions     int      `json:"ownership_transitions"`
	Takeovers       int      `json:"takeovers_from_dead_replicas"`
	Handovers       int      `json:"handovers"`

	// NodeLeasesLapsed counts nodes whose Lease (kube-node-lease) expired
	// during the window before it was renewed.
	NodeLeasesLapsed int `json:"node_leases_lapsed"`
	// NodeLeasesLapsedLater counts the same from the kill until one node
	// Lease duration after the window, when every node's new owner has
	// had a heartbeat to renew it: a Lease that expires just after the
	// window lapses all the same.
	NodeLeasesLapsedLater int     `json:"node_leases_lapsed_by_window_plus_lease_duration"`
	LapseWatchSeconds     float64 `json:"lapse_watch_seconds"`
	// KeptLeaseRenewals counts the node Lease renewals the survivors made
	// as keepers of the dead replica's nodes (edgesync_lease_kept_total,
	// result ok) until then.
	KeptLeaseRenewals float64 `json:"kept_lease_renewals"`
	ObjectsResent     int64   `json:"objects_sent_during_resync"`
	Redundant         int64   `json:"redundant_objects"`
	// StreamErrors counts edge streams that ended in the window (each
	// killed edge's first is one); LastStreamError is the last one's.
	StreamErrors int64 `json:"stream_errors"`
	// StreamErrorsBefore counts streams that ended before the kill, while
	// the edges connected and held (a replica that could not renew its
	// replica Lease within its hold limit ends all its sessions).
	StreamErrorsBefore int64  `json:"stream_errors_before_kill"`
	LastStreamError    string `json:"last_stream_error,omitempty"`
}

const (
	failoverReplicas  = 3
	ownershipNS       = "edgesync-system"
	failoverConfigMap = "base"
)

// failover runs scenario 8 on a control plane of its own: KubeNodes edges
// over three replicas running the real controllers with node ownership,
// then replica 0 killed with SIGKILL and a ConfigMap every node holds
// updated right after.
func (b *bench) failover(ctx context.Context, _ map[int]bool) error {
	f := &b.result.Failover
	n := b.sc.KubeNodes
	f.Edges, f.Replicas = n, failoverReplicas
	// The product's ownership settings (controllers.OwnershipConfig's
	// zero values).
	f.OwnershipLease, f.OwnershipQPS = "default ("+ownership.DefaultLeaseDuration.String()+")", "default (200, burst 400)"
	setup := time.Now()
	b.prog.say("failover: starting devcluster (etcd + kube-apiserver)")
	cl, err := cluster.Start(ctx, b.devcluster, filepath.Join(b.out, "cluster-failover"))
	if err != nil {
		return err
	}
	defer cl.Stop()
	b.prog.say("failover: creating %d edge nodes and pods", n)
	if err := cl.Create(ctx, cluster.Workload{Namespace: kubeNamespace, Nodes: b.names[:n], Base: failoverConfigMap, Fanout: "fanout"}); err != nil {
		return err
	}
	if _, err := cl.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ownershipNS}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ownershipNS, err)
	}
	// The recorders' watches read protobuf: 10,000 node Leases renew
	// every 20 s or so.
	rc, err := cl.RESTConfig()
	if err != nil {
		return err
	}
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	watchClient, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	// The ownership history starts before any replica does, so it holds
	// every transition.
	history, err := ownershiptest.Start(ctx, watchClient, ownershipNS)
	if err != nil {
		return err
	}
	defer history.Stop()
	leases, err := watchNodeLeases(ctx, watchClient)
	if err != nil {
		return err
	}
	defer leases.Stop()
	f.SetupSeconds = time.Since(setup).Seconds()

	ids := make([]string, failoverReplicas)
	replicas := make([]*child, failoverReplicas)
	defer func() {
		for _, r := range replicas {
			if r != nil {
				r.kill()
			}
		}
	}()
	var addrs []string
	for i := range replicas {
		ids[i] = "replica-" + strconv.Itoa(i)
		b.prog.say("failover: starting %s", ids[i])
		r, err := startChild(ctx, filepath.Join(b.out, "server-failover-"+ids[i]+".log"),
			"--kind", "edgesync", "--certs", b.certs.Dir, "--addr", "127.0.0.1:0", "--replica-id", ids[i],
			"--heartbeat", heartbeatInterval.String(), "--kubeconfig", cl.Kubeconfig,
			"--kube-qps", strconv.FormatFloat(b.kubeQPS, 'f', -1, 64), "--kube-burst", strconv.Itoa(int(2*b.kubeQPS)),
			"--kube-lease-qps", strconv.FormatFloat(b.leaseQPS, 'f', -1, 64), "--kube-lease-renew", b.leaseRenew.String(),
			"--ownership-namespace", ownershipNS)
		if err != nil {
			return fmt.Errorf("%s: %w", ids[i], err)
		}
		replicas[i] = r
		addrs = append(addrs, r.ready.GRPC)
	}
	fleet, stopFleet, err := b.startFleetAt(ctx, "failover", addrs, n, true, false)
	if err != nil {
		return err
	}
	defer stopFleet()
	connect := time.Now()
	heldBy := func(ids ...string) int {
		held := history.HeldBy()
		sum := 0
		for _, id := range ids {
			sum += held[id]
		}
		return sum
	}
	if err := waitFor(ctx, time.Duration(n/20+120)*time.Second, "edges synced over three replicas, each node owned", func() bool {
		return int(fleet.C.Synced.Load()) == n && heldBy(ids...) == n
	}); err != nil {
		return fmt.Errorf("%w (%d of %d synced, edges by replica: %s, records held %v (history error: %v); last error: %v)", err, fleet.C.Synced.Load(), n, spread(fleet), history.HeldBy(), history.Err(), fleet.LastError())
	}
	f.ConnectSeconds = time.Since(connect).Seconds()
	b.prog.say("failover: %d edges synced over %d replicas in %.1fs (%s)", n, failoverReplicas, f.ConnectSeconds, spread(fleet))
	// Every node's first heartbeat (which creates its Lease) falls within
	// one interval of connecting; then the replicas' first writes finish.
	if err := hold(ctx, heartbeatInterval+2*time.Second); err != nil {
		return err
	}
	steady := time.Now()
	if err := waitSteady(ctx, replicas, time.Duration(n/25+120)*time.Second); err != nil {
		return err
	}
	f.SteadySeconds = time.Since(steady).Seconds()
	b.prog.say("failover: the replicas' first writes done %.1fs later", f.SteadySeconds)

	victim, survivors := replicas[0], replicas[1:]
	f.Killed = ids[0]
	f.KilledEdges = fleet.ByServer()[ids[0]].Connected
	m0, err := cl.Metrics(ctx)
	if err != nil {
		return err
	}
	s0, err := scrapeAll(ctx, survivors)
	if err != nil {
		return err
	}
	objects0, redundant0, streams0 := fleet.C.Objects.Load(), fleet.RedundantObjects(), fleet.C.StreamsEnded.Load()
	b.prog.watch("failover", fleet, n)
	// A survivor's CPU profile covers the failover.
	profDone := make(chan error, 1)
	go func() {
		profDone <- survivors[0].profile(ctx, "profile", 20, filepath.Join(b.out, "failover-survivor-cpu.pprof"))
	}()
	defer func() {
		if err := <-profDone; err != nil {
			fmt.Fprintf(os.Stderr, "failover CPU profile: %v\n", err)
		}
	}()
	killed := time.Now()
	victim.kill()
	replicas[0] = nil
	rv, err := cl.UpdateConfigMap(ctx, kubeNamespace, failoverConfigMap, "failover", strconv.FormatInt(killed.UnixNano(), 10))
	if err != nil {
		return err
	}
	key := feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: kubeNamespace, Name: failoverConfigMap}
	// Every edge's last Welcome and SyncComplete, and when the new
	// version reached it, tell the figures once all is done: an edge that
	// a survivor dropped again after it had synced counts from its last
	// stream.
	var settled, firstBack time.Duration
	done := func() bool {
		if settled == 0 && heldBy(ids[1:]...) == n {
			settled = time.Since(killed)
		}
		by := fleet.ByServer()
		conn, sync := 0, 0
		for _, id := range ids[1:] {
			conn, sync = conn+by[id].Connected, sync+by[id].Synced
		}
		if firstBack == 0 && conn == n {
			firstBack = time.Since(killed)
		}
		return sync == n && fleet.HeldVersion(key, rv) == n
	}
	err = waitFor(ctx, 5*time.Minute, "every edge resynced on a survivor and every node owned by one", func() bool { return done() && settled > 0 })
	if err != nil {
		return fmt.Errorf("%w (edges by replica: %s, %d hold the new version, records held %v; last error: %v)", err, spread(fleet), fleet.HeldVersion(key, rv), history.HeldBy(), fleet.LastError())
	}
	// Requests that follow the last of them (a retried write, a late
	// claim) still belong to the failover, and so do streams dropped then.
	if err := hold(ctx, 2*time.Second); err != nil {
		return err
	}
	if !done() {
		return fmt.Errorf("edges dropped again after all had resynced (edges by replica: %s; last error: %v)", spread(fleet), fleet.LastError())
	}
	var lastWelcome, lastSynced time.Time
	for _, id := range ids[1:] {
		s := fleet.ByServer()[id]
		lastWelcome, lastSynced = latest(lastWelcome, s.LastWelcome), latest(lastSynced, s.LastSynced)
	}
	for _, a := range fleet.Arrivals(key) {
		lastSynced = latest(lastSynced, a.At)
	}
	f.FirstReconnectedSeconds = firstBack.Seconds()
	f.ReconnectedSeconds, f.ResyncedSeconds, f.OwnershipSeconds = lastWelcome.Sub(killed).Seconds(), lastSynced.Sub(killed).Seconds(), settled.Seconds()
	f.ObjectsResent = fleet.C.Objects.Load() - objects0
	f.Redundant = fleet.RedundantObjects() - redundant0
	f.StreamErrors, f.StreamErrorsBefore = fleet.C.StreamsEnded.Load()-streams0, streams0
	if err := fleet.LastError(); err != nil && f.StreamErrors > 0 {
		f.LastStreamError = err.Error()
	}
	end := time.Now()
	f.WindowSeconds = end.Sub(killed).Seconds()
	m1, err := cl.Metrics(ctx)
	if err != nil {
		return err
	}
	s1, err := scrapeAll(ctx, survivors)
	if err != nil {
		return err
	}
	f.APIServerRequests = deltas(requestsBy(m0, "apiserver_request_total", "verb", "resource", "subresource"),
		requestsBy(m1, "apiserver_request_total", "verb", "resource", "subresource"))
	f.EdgesyncRequests = map[string]float64{}
	for i := range survivors {
		for what, d := range deltas(requestsBy(s0[i], "edgesync_kube_requests_total", "verb", "resource"),
			requestsBy(s1[i], "edgesync_kube_requests_total", "verb", "resource")) {
			f.EdgesyncRequests[what] += d
		}
	}
	for what, d := range f.EdgesyncRequests {
		if strings.HasPrefix(what, "LIST ") || strings.HasPrefix(what, "GET ") {
			f.EdgesyncListGet += d
		}
	}
	f.NodeLeasesLapsed = leases.lapsed(killed, end)
	// A Lease that expires just after the window lapses all the same:
	// watch one node Lease duration more.
	b.prog.say("failover: watching node Leases for %s more", leases.longest())
	if err := hold(ctx, leases.longest()); err != nil {
		return err
	}
	later := time.Now()
	f.NodeLeasesLapsedLater, f.LapseWatchSeconds = leases.lapsed(killed, later), later.Sub(killed).Seconds()
	s2, err := scrapeAll(ctx, survivors)
	if err != nil {
		return err
	}
	for i := range survivors {
		f.KeptLeaseRenewals += requestsBy(s2[i], "edgesync_lease_kept_total", "result")["ok"]
	}
	if err := history.Err(); err != nil {
		return fmt.Errorf("the ownership history is incomplete, so duplicate owners cannot be counted: %w", err)
	}
	f.Violations = history.Violations()
	f.DuplicateOwners = len(f.Violations)
	if len(f.Violations) > 10 {
		f.Violations = f.Violations[:10]
	}
	c := history.Counts()
	f.Transitions, f.Takeovers, f.Handovers = c.Transitions, c.Takeovers, c.Handovers
	f.Done = true
	b.prog.say("failover: %d edges of %s reconnected in %.1fs, all resynced in %.1fs, ownership settled in %.1fs; %.0f LIST/GET by edgesync, %d duplicate owners, %d node Leases lapsed (%d within %.0fs of the kill), %.0f renewed by keepers",
		f.KilledEdges, f.Killed, f.ReconnectedSeconds, f.ResyncedSeconds, f.OwnershipSeconds, f.EdgesyncListGet, f.DuplicateOwners, f.NodeLeasesLapsed, f.NodeLeasesLapsedLater, f.LapseWatchSeconds, f.KeptLeaseRenewals)
	return nil
}

// spread says how many edges each replica holds, such as "replica-0 334
// connected, 334 synced; replica-1 ...".
func spread(fleet *edgesim.Fleet) string {
	by := fleet.ByServer()
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(by)) {
		parts = append(parts, fmt.Sprintf("%s %d connected, %d synced", id, by[id].Connected, by[id].Synced))
	}
	return strings.Join(parts, "; ")
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// scrapeAll scrapes every replica's /metrics.
// waitSteady waits until the replicas have made no API write but Lease
// renewals (node Leases, their own) for two samples two seconds apart.
func waitSteady(ctx context.Context, replicas []*child, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	last, quiet := -1.0, 0
	for quiet < 2 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		ms, err := scrapeAll(ctx, replicas)
		if err != nil {
			return err
		}
		writes := 0.0
		for _, m := range ms {
			for what, n := range requestsBy(m, "edgesync_kube_requests_total", "verb", "resource") {
				verb, _, _ := strings.Cut(what, " ")
				if verb != "GET" && verb != "LIST" && verb != "WATCH" && what != "PATCH leases" && what != "UPDATE leases" {
					writes += n
				}
			}
		}
		if writes == last {
			quiet++
		} else {
			quiet = 0
		}
		last = writes
		if time.Now().After(deadline) {
			return fmt.Errorf("the replicas were still writing (%.0f writes so far) %s after every edge synced", writes, timeout)
		}
	}
	return nil
}

func scrapeAll(ctx context.Context, replicas []*child) ([]measure.Metrics, error) {
	out := make([]measure.Metrics, len(replicas))
	for i, r := range replicas {
		m, err := r.metrics(ctx)
		if err != nil {
			return nil, err
		}
		out[i] = m
	}
	return out, nil
}

// requestsBy sums counter name by the values of labels, joined as "VERB
// resource/subresource" (empty values left out).
func requestsBy(m measure.Metrics, name string, labels ...string) map[string]float64 {
	out := map[string]float64{}
	fam, ok := m[name]
	if !ok {
		return out
	}
	for _, metric := range fam.GetMetric() {
		values := make([]string, len(labels))
		for _, lp := range metric.GetLabel() {
			if i := slices.Index(labels, lp.GetName()); i >= 0 {
				values[i] = lp.GetValue()
			}
		}
		what := values[0]
		if len(values) > 1 {
			what += " " + strings.Join(slices.DeleteFunc(values[1:], func(v string) bool { return v == "" }), "/")
		}
		out[what] += metric.GetCounter().GetValue()
	}
	return out
}

// deltas returns after minus before for every key that grew.
func deltas(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for what, v := range after {
		if d := v - before[what]; d > 0 {
			out[what] = d
		}
	}
	return out
}

// nodeLeases records the nodes' Leases (kube-node-lease) from a watch, and
// every time one expired before it was renewed.
type nodeLeases struct {
	mu     sync.Mutex // guards the fields below
	last   map[string]leaseTerm
	lapses []lapse
	done   chan struct{}
	stop   func()
}

type leaseTerm struct {
	renewed  time.Time
	duration time.Duration
}

type lapse struct {
	node    string
	expired time.Time
}

// watchNodeLeases starts recording until Stop. The watch resumes where it
// was when the apiserver closes it.
func watchNodeLeases(ctx context.Context, client kubernetes.Interface) (*nodeLeases, error) {
	leases := client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	list, err := leases.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list node Leases: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return leases.Watch(ctx, opts)
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch node Leases: %w", err)
	}
	l := &nodeLeases{last: map[string]leaseTerm{}, done: make(chan struct{}), stop: func() { cancel(); w.Stop() }}
	for i := range list.Items {
		if list.Items[i].Spec.RenewTime != nil {
			l.observe(&list.Items[i])
		}
	}
	go func() {
		defer close(l.done)
		for ev := range w.ResultChan() {
			if lease, ok := ev.Object.(*coordinationv1.Lease); ok && ev.Type != watch.Deleted && lease.Spec.RenewTime != nil {
				l.observe(lease)
			}
		}
	}()
	return l, nil
}

func (l *nodeLeases) observe(lease *coordinationv1.Lease) {
	term := leaseTerm{renewed: lease.Spec.RenewTime.Time, duration: time.Duration(ptr.Deref(lease.Spec.LeaseDurationSeconds, 0)) * time.Second}
	l.mu.Lock()
	defer l.mu.Unlock()
	if prev, ok := l.last[lease.Name]; ok {
		if expiry := prev.renewed.Add(prev.duration); term.renewed.After(expiry) {
			l.lapses = append(l.lapses, lapse{node: lease.Name, expired: expiry})
		}
	}
	l.last[lease.Name] = term
}

// lapsed counts the nodes whose Lease expired between from and to: renewed
// too late, or not renewed by to.
func (l *nodeLeases) lapsed(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	nodes := map[string]bool{}
	for _, lp := range l.lapses {
		if !lp.expired.Before(from) && !lp.expired.After(to) {
			nodes[lp.node] = true
		}
	}
	for node, term := range l.last {
		if expiry := term.renewed.Add(term.duration); !expiry.Before(from) && expiry.Before(to) {
			nodes[node] = true
		}
	}
	return len(nodes)
}

// longest is the longest node Lease duration seen; 40s (the product's
// default) when none was.
func (l *nodeLeases) longest() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := time.Duration(0)
	for _, term := range l.last {
		d = max(d, term.duration)
	}
	if d == 0 {
		d = 40 * time.Second
	}
	return d
}

// Stop ends the watch and waits for it.
func (l *nodeLeases) Stop() {
	l.stop()
	<-l.done
}
