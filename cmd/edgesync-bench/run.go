package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgesync/edgesync/internal/bench/certs"
	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/measure"
	"github.com/edgesync/edgesync/internal/bench/netx"
	"github.com/edgesync/edgesync/internal/bench/simfeed"
	"github.com/edgesync/edgesync/server/feed"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// scale is the size of every scenario.
type scale struct {
	Name string `json:"name"`
	// Density, heartbeat and storm sessions.
	Sessions int `json:"sessions"`
	// IdleWindow is how long idle CPU and heartbeats are measured.
	IdleWindow time.Duration `json:"idle_window"`
	// FanoutNodes receive each of FanoutUpdates ConfigMap updates.
	FanoutNodes   int `json:"fanout_nodes"`
	FanoutUpdates int `json:"fanout_updates"`
	// ThroughputSessions each receive ThroughputMessages messages.
	ThroughputSessions int `json:"throughput_sessions"`
	ThroughputMessages int `json:"throughput_messages"`
	// EncodeMessages are delivered at each recipient count.
	EncodeMessages int `json:"encode_messages"`
	// ObjectsPerNode are held by every density/storm node.
	ObjectsPerNode int `json:"objects_per_node"`
	// Size is the encoded size of each object event.
	Size int `json:"size_bytes"`
	// KubeNodes are the edge nodes of the scenarios run through the real
	// controllers and apiserver.
	KubeNodes int `json:"kube_nodes"`
	// RouterNodes receive RouterRate router calls per second in all,
	// measured over RouterWindow (scenario 10).
	RouterNodes  int           `json:"router_nodes"`
	RouterRate   float64       `json:"router_rate_per_second"`
	RouterWindow time.Duration `json:"router_window"`
}

var scales = map[string]scale{
	"smoke": {Name: "smoke", Sessions: 50, IdleWindow: 5 * time.Second, FanoutNodes: 50, FanoutUpdates: 5,
		ThroughputSessions: 50, ThroughputMessages: 50, EncodeMessages: 2000, ObjectsPerNode: 3, Size: 1024, KubeNodes: 30,
		RouterNodes: 10, RouterRate: 100, RouterWindow: 5 * time.Second},
	"reduced": {Name: "reduced", Sessions: 2000, IdleWindow: 30 * time.Second, FanoutNodes: 1000, FanoutUpdates: 20,
		ThroughputSessions: 1000, ThroughputMessages: 100, EncodeMessages: 50000, ObjectsPerNode: 3, Size: 1024, KubeNodes: 1000,
		RouterNodes: 100, RouterRate: 1000, RouterWindow: 20 * time.Second},
	// The goals' scales (issue 26): 100,000 sessions on one replica, a
	// ConfigMap and encode once on 10,000 nodes, 10,000 nodes through the
	// apiserver.
	"full": {Name: "full", Sessions: 100000, IdleWindow: 60 * time.Second, FanoutNodes: 10000, FanoutUpdates: 20,
		ThroughputSessions: 1000, ThroughputMessages: 300, EncodeMessages: 100000, ObjectsPerNode: 3, Size: 1024, KubeNodes: 10000,
		RouterNodes: 100, RouterRate: 1000, RouterWindow: 60 * time.Second},
}

const heartbeatInterval = 10 * time.Second

// idleSettle is how long sessions stay connected before an idle window is
// measured: the connect burst's garbage is collected, and the heartbeats'
// random phases spread them over the interval.
const idleSettle = 5 * time.Second

// fileHeadroom is the open files a benchmark process needs beyond one per
// session: profiles, logs, the devcluster's connections.
const fileHeadroom = 4096

// sessionFileHeadroom is the open files the server and the simulator keep
// beyond their sessions' sockets when the limit bounds the sessions.
const sessionFileHeadroom = 1024

// connectConcurrency bounds how many simulated edges dial at once.
func connectConcurrency() int { return 4 * runtime.GOMAXPROCS(0) }

// bench is one run of the benchmark.
type bench struct {
	sc     scale
	out    string
	certs  *certs.Set
	names  []string
	nodes  []tls.Certificate
	prog   *progress
	result *results

	devcluster string        // bin/devcluster, or "" to skip the apiserver scenarios
	kubeQPS    float64       // the controllers' API-server QPS
	leaseQPS   float64       // the controllers' Lease-renewal QPS
	leaseRenew time.Duration // the controllers' Lease renew interval
	// kubeHeartbeat is the heartbeat interval of the apiserver scenarios
	// but 8 and 10. Zero, like kubeQPS, leaseQPS and leaseRenew: the
	// product's default.
	kubeHeartbeat time.Duration
	kubePort      int  // the server's port in the apiserver scenarios
	edgeclient    bool // edges run the edgeclient library
	// singleEvents: lean edges do not accept event batches.
	singleEvents bool
	// subscriptions, while set, gives the subscriptions each node of a
	// new fleet sends in its Hello (scenario 9).
	subscriptions func(node string) []*edgesyncv1.Subscription
	crds          string // deploy/crds: the router's CRDs (scenario 10)
	mosquitto     string // the MQTT broker binary (scenario 10)
}

func runMain(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	scaleName := fs.String("scale", "reduced", "smoke (seconds), reduced (make bench, minutes) or full (the goals' scales: 100,000 sessions, 10,000 nodes; make bench-full)")
	out := fs.String("out", ".tmp/bench", "directory for results.json, plots, profiles and server logs")
	which := fs.String("scenarios", "1,2,3,4,5,6,7,8,9,10", "scenarios to run (1 density, 2 fan-out, 3 throughput, 4 encode once, 5 reconnect storm, 6 heartbeats, 7 services to the edge, apiserver only; 8 failover: three replicas, one killed, apiserver only; 9 a custom resource the nodes' applications subscribe to, apiserver only; 10 router: REST calls to MQTT on the edges, apiserver and mosquitto)")
	sessions := fs.Int("sessions", 0, "override the density/storm/heartbeat session count")
	fanoutNodes := fs.Int("fanout-nodes", 0, "override the fan-out and encode-once node count")
	tpSessions := fs.Int("throughput-sessions", 0, "override the throughput session count")
	kubeNodes := fs.Int("kube-nodes", 0, "override the node count of the apiserver scenarios")
	routerRate := fs.Float64("router-rate", 0, "override the router calls per second (scenario 10)")
	routerWindow := fs.Duration("router-window", 0, "override how long the router calls are made (scenario 10)")
	crds := fs.String("crds", "deploy/crds", "directory of edgesync's CRDs (the router's, scenario 10)")
	mosquitto := fs.String("mosquitto", "mosquitto", "the MQTT broker of scenario 10 (Debian's mosquitto; make apt-deps)")
	kube := fs.String("kube", "auto", "run scenarios 2, 5 and 6 also through the real controllers and a devcluster apiserver: on, off, or auto (when --devcluster exists)")
	devcluster := fs.String("devcluster", "bin/devcluster", "the devcluster binary (make devcluster)")
	edges := fs.String("edges", "lean", "simulated edge client: lean (the built-in protocol client, smallest), lean-single (lean, not accepting event batches, as edges before them) or edgeclient (the edgeclient library with an in-memory store)")
	// The apiserver scenarios run with the product's defaults (the zero
	// values: edgesync-server's defaults, the same constants) unless these
	// override them; scenario 6's goal is set at the defaults.
	kubeQPS := fs.Float64("kube-qps", 0, "override the controllers' API-server QPS in the apiserver scenarios (burst is twice; 0: the product's default)")
	leaseQPS := fs.Float64("kube-lease-qps", 0, "override the controllers' own QPS for Lease renewals in the apiserver scenarios (burst is twice; 0: the product's default)")
	leaseRenew := fs.Duration("kube-lease-renew", 0, "override the controllers' Lease renew interval in the apiserver scenarios (0: the product's default)")
	kubeHeartbeat := fs.Duration("kube-heartbeat", 0, "override the heartbeat interval of scenarios 2, 5, 6, 7 and 9 (0: the product's default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sc, ok := scales[*scaleName]
	if !ok {
		return fmt.Errorf("unknown --scale %q: use reduced or full", *scaleName)
	}
	for _, o := range []struct {
		flag int
		to   *int
	}{{*sessions, &sc.Sessions}, {*fanoutNodes, &sc.FanoutNodes}, {*tpSessions, &sc.ThroughputSessions}, {*kubeNodes, &sc.KubeNodes}} {
		if o.flag > 0 {
			*o.to = o.flag
		}
	}
	if *routerRate > 0 {
		sc.RouterRate = *routerRate
	}
	if *routerWindow > 0 {
		sc.RouterWindow = *routerWindow
	}
	want := map[int]bool{}
	for _, s := range strings.Split(*which, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 10 {
			return fmt.Errorf("--scenarios: %q is not a scenario number 1-10", s)
		}
		want[n] = true
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if *edges != "lean" && *edges != "lean-single" && *edges != "edgeclient" {
		return fmt.Errorf("--edges must be lean, lean-single or edgeclient, not %q", *edges)
	}
	b := &bench{sc: sc, out: *out, prog: newProgress(os.Stderr), kubeQPS: *kubeQPS, leaseQPS: *leaseQPS, leaseRenew: *leaseRenew, kubeHeartbeat: *kubeHeartbeat, edgeclient: *edges == "edgeclient", singleEvents: *edges == "lean-single", crds: *crds, mosquitto: *mosquitto}
	switch *kube {
	case "on", "auto":
		if _, err := os.Stat(*devcluster); err == nil {
			b.devcluster = *devcluster
		} else if *kube == "on" {
			return fmt.Errorf("--kube=on needs the devcluster binary %s (make devcluster): %w", *devcluster, err)
		}
	case "off":
	default:
		return fmt.Errorf("--kube must be on, off or auto, not %q", *kube)
	}
	var err error
	if b.kubePort, err = freePort(); err != nil {
		return err
	}
	defer b.prog.stop()

	// Every scenario's edges come from one set of node certificates.
	need := 0
	if want[1] || want[5] || want[6] {
		need = max(need, sc.Sessions)
	}
	if want[2] || want[3] || want[4] {
		need = max(need, sc.FanoutNodes, sc.ThroughputSessions)
	}
	if b.devcluster != "" && (want[2] || want[5] || want[6] || want[7] || want[8] || want[9]) {
		need = max(need, sc.KubeNodes)
	}
	if b.devcluster != "" && want[10] {
		need = max(need, sc.RouterNodes)
	}
	// The simulator and the server (which inherits the limit) each hold
	// one socket per session, plus files of their own.
	limit, err := netx.RaiseFileLimit(uint64(need) + fileHeadroom)
	if err != nil {
		return err
	}
	b.result = newResults(sc, limit)
	b.result.Edges = *edges
	// Where the limit cannot be raised (no CAP_SYS_RESOURCE: the hard
	// limit stays), scenarios 1, 5 and 6 run with as many sessions as it
	// allows, and the table says so: their goals' verdicts then project
	// or say "not measured at this scale".
	if most := int(limit) - sessionFileHeadroom; sc.Sessions > most && most > 0 && *sessions == 0 && (want[1] || want[5] || want[6]) {
		b.result.Density.LimitedBy = fmt.Sprintf("%d of %d sessions: the open-file limit is %d and cannot be raised here (the hard limit needs CAP_SYS_RESOURCE)", most, sc.Sessions, limit)
		b.prog.say("density: %s", b.result.Density.LimitedBy)
		sc.Sessions = most
		b.sc.Sessions = most
		b.result.Scale.Sessions = most
		need = 0
		for _, n := range []int{sc.Sessions, sc.FanoutNodes, sc.ThroughputSessions, sc.KubeNodes, sc.RouterNodes} {
			need = max(need, n)
		}
	}
	if uint64(need)+256 > limit {
		return fmt.Errorf("%d sessions need more open files than the limit %d allows: run as root, or raise the hard limit (ulimit -Hn)", need, limit)
	}
	b.certs, err = certs.New(filepath.Join(*out, "certs"))
	if err != nil {
		return err
	}
	b.prog.say("issuing %d node certificates", need)
	b.names = nodeNames(0, need)
	if b.nodes, err = b.certs.IssueNodes(b.names); err != nil {
		return err
	}

	type scenario struct {
		ids []int
		run func(context.Context, map[int]bool) error
		// kube: the group of scenarios 2, 5, 6, 7 and 9 through the
		// apiserver, whose rows are apart from the server-only ones.
		kube bool
	}
	groups := []scenario{
		{[]int{1, 5, 6}, b.densityStormHeartbeats, false},
		{[]int{2, 4}, b.fanoutAndEncode, false},
		{[]int{3}, b.throughput, false},
	}
	if b.devcluster != "" {
		// The failover has a control plane of its own: scenario 5 kills
		// the single server of the kube group.
		groups = append(groups, scenario{[]int{2, 5, 6, 7, 9}, b.kubeScenarios, true}, scenario{[]int{8}, b.failover, false},
			scenario{[]int{10}, b.routerScenario, false})
	} else {
		b.result.KubeSkipped = fmt.Sprintf("no devcluster binary at %s (make devcluster) or --kube=off", *devcluster)
	}
	began := time.Now()
	for i, s := range groups {
		isKube := s.kube
		run := map[int]bool{}
		for _, id := range s.ids {
			if want[id] {
				run[id] = true
			}
		}
		if len(run) == 0 {
			for _, id := range s.ids {
				if !isKube {
					b.result.notRun(id, "not selected with --scenarios")
				}
			}
			continue
		}
		b.prog.say("scenarios %v (group %d of %d), %s since the start", slices.Sorted(maps.Keys(run)), i+1, len(groups), time.Since(began).Round(time.Second))
		if err := s.run(ctx, run); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if isKube {
				b.result.KubeFailed = err.Error()
			} else {
				for id := range run {
					b.result.failed(id, err)
				}
			}
			fmt.Fprintf(os.Stderr, "scenarios %v failed: %v\n", s.ids, err)
		}
	}
	b.prog.stop()
	b.result.Finished = time.Now().UTC()
	b.result.Machine.LoadAvgEnd = loadAvg()
	if err := b.result.write(filepath.Join(*out, "results.json")); err != nil {
		return err
	}
	if err := b.plots(); err != nil {
		fmt.Fprintf(os.Stderr, "plots: %v\n", err)
	}
	summarizeProfiles(ctx, *out)
	b.result.printTable(os.Stdout)
	fmt.Printf("\nresults, plots, profiles and server logs: %s\n", *out)
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startEdgesync starts an edgesync server process.
func (b *bench) startEdgesync(ctx context.Context, name, addr string, nodes, objects int) (*child, error) {
	return startChild(ctx, filepath.Join(b.out, name+".log"),
		"--kind", "edgesync", "--certs", b.certs.Dir, "--addr", addr,
		"--heartbeat", heartbeatInterval.String(),
		"--nodes", strconv.Itoa(nodes), "--objects", strconv.Itoa(objects), "--size", strconv.Itoa(b.sc.Size))
}

// fleet builds n simulated edges for the server at addrs (one address, or
// several replicas that edge i tries from i modulo their number).
func (b *bench) fleet(addrs []string, n int, heartbeats, latency bool) (*edgesim.Fleet, error) {
	cfg := edgesim.Config{
		Roots: b.certs.CA.Pool(), Heartbeats: heartbeats, RecordLatency: latency,
		ConnectConcurrency: connectConcurrency(), SingleEvents: b.singleEvents,
	}
	if len(addrs) == 1 {
		cfg.Addr = addrs[0]
	} else {
		cfg.Addrs = addrs
	}
	cfg.Subscriptions = b.subscriptions
	if b.edgeclient {
		cfg.Edgeclient = &edgesim.EdgeclientConfig{CAFile: b.certs.Path(certs.CACert), CertDir: filepath.Join(b.out, "certs", "nodes")}
	}
	return edgesim.New(cfg, b.names[:n], b.nodes[:n])
}

// startFleet builds n simulated edges for the server at addr, runs them in
// the background with progress shown under label, and returns a stop
// function that ends them and waits.
func (b *bench) startFleet(ctx context.Context, label, addr string, n int, heartbeats, latency bool) (*edgesim.Fleet, func(), error) {
	return b.startFleetAt(ctx, label, []string{addr}, n, heartbeats, latency)
}

// startFleetAt is startFleet for the servers at addrs (see fleet).
func (b *bench) startFleetAt(ctx context.Context, label string, addrs []string, n int, heartbeats, latency bool) (*edgesim.Fleet, func(), error) {
	fleet, err := b.fleet(addrs, n, heartbeats, latency)
	if err != nil {
		return nil, nil, err
	}
	fctx, cancel := context.WithCancel(ctx)
	fleetDone := make(chan struct{})
	go func() { fleet.Run(fctx); close(fleetDone) }()
	b.prog.watch(label, fleet, n)
	return fleet, func() { cancel(); <-fleetDone; fleet.Close() }, nil
}

// waitSynced waits until all n edges of fleet finished their initial sync.
func waitSynced(ctx context.Context, fleet *edgesim.Fleet, n int) error {
	if err := waitFor(ctx, time.Duration(n/50+60)*time.Second, "edges synced", func() bool { return int(fleet.C.Synced.Load()) == n }); err != nil {
		return fmt.Errorf("%w (%d of %d; last error: %v)", err, fleet.C.Synced.Load(), n, fleet.LastError())
	}
	return nil
}

// waitFor polls cond until it holds or timeout passes: the benchmark
// observes another process and a fleet of connections, so it watches their
// state rather than waiting on one event.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// hold waits d unless ctx ends first: the measuring window of a scenario.
func hold(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// densityStormHeartbeats runs scenarios 1, 6 and 5 on one edgesync fleet,
// then, once that fleet and its server are gone, the raw grpc-go baseline
// of the idle window: the same sessions heartbeating the same way.
func (b *bench) densityStormHeartbeats(ctx context.Context, run map[int]bool) error {
	err := b.edgesyncDensityStormHeartbeats(ctx, run)
	if !b.result.Density.Done || !run[1] && !run[6] || ctx.Err() != nil {
		return err
	}
	if rerr := b.idleRaw(ctx, b.sc.Sessions); rerr != nil {
		if ctx.Err() != nil {
			return errors.Join(err, ctx.Err())
		}
		b.result.Density.RawIdleError = rerr.Error()
		fmt.Fprintf(os.Stderr, "raw grpc-go heartbeat baseline: %v\n", rerr)
	}
	return err
}

// edgesyncDensityStormHeartbeats runs scenarios 1, 6 and 5 on one fleet:
// connect, measure memory, measure an idle window with heartbeats, then
// kill and restart the server and measure the resync. It returns once the
// fleet is closed and the server killed.
func (b *bench) edgesyncDensityStormHeartbeats(ctx context.Context, run map[int]bool) error {
	n := b.sc.Sessions
	srv, err := b.startEdgesync(ctx, "server-density", "127.0.0.1:0", n, b.sc.ObjectsPerNode)
	if err != nil {
		return err
	}
	defer func() { srv.kill() }()
	addr := srv.ready.GRPC
	base, err := srv.proc()
	if err != nil {
		return err
	}
	fleet, stopFleet, err := b.startFleet(ctx, "density", addr, n, true, false)
	if err != nil {
		return err
	}
	defer stopFleet()

	// Ramp: sample the server's RSS against the sessions connected.
	d := &b.result.Density
	d.Sessions = n
	d.BaseRSSBytes = base.RSSBytes
	start := time.Now()
	samples := time.NewTicker(250 * time.Millisecond)
	rampDeadline := time.Now().Add(time.Duration(n/50+60) * time.Second)
	for int(fleet.C.Synced.Load()) < n {
		select {
		case <-ctx.Done():
			samples.Stop()
			return ctx.Err()
		case <-samples.C:
		}
		if ps, err := srv.proc(); err == nil {
			d.Ramp = append(d.Ramp, rampPoint{Sessions: int(fleet.C.Connected.Load()), RSSBytes: ps.RSSBytes})
		}
		if time.Now().After(rampDeadline) {
			samples.Stop()
			return fmt.Errorf("only %d of %d edges synced after %s (last error: %v)", fleet.C.Synced.Load(), n, time.Since(start).Round(time.Second), fleet.LastError())
		}
	}
	samples.Stop()
	d.ConnectSeconds = time.Since(start).Seconds()
	b.prog.say("%d sessions synced in %.1fs", n, d.ConnectSeconds)

	// Let the connect burst's garbage be collected before measuring.
	if err := hold(ctx, idleSettle); err != nil {
		return err
	}
	full, err := srv.proc()
	if err != nil {
		return err
	}
	d.Ramp = append(d.Ramp, rampPoint{Sessions: n, RSSBytes: full.RSSBytes})
	d.RSSBytes = full.RSSBytes
	d.RSSPerSessionBytes = float64(full.RSSBytes-base.RSSBytes) / float64(n)
	if m, err := srv.metrics(ctx); err == nil {
		d.Goroutines = m.Sum("go_goroutines", nil)
		d.HeapBytes = m.Sum("go_memstats_heap_inuse_bytes", nil)
		d.StackBytes = m.Sum("go_memstats_stack_inuse_bytes", nil)
		d.ServerSessions = m.Sum("edgesync_sessions_connected", nil)
	}
	if err := srv.profile(ctx, "heap", 0, filepath.Join(b.out, "density-heap.pprof")); err != nil {
		fmt.Fprintf(os.Stderr, "heap profile: %v\n", err)
	}
	d.BenchRSSBytes = selfRSS()

	// Idle window: heartbeats only. The CPU profile covers it.
	counts0, err := srv.counts(ctx)
	if err != nil {
		return err
	}
	cpu0, _ := srv.proc()
	self0 := selfCPU()
	profDone := make(chan error, 1)
	go func() {
		profDone <- srv.profile(ctx, "profile", int(b.sc.IdleWindow.Seconds()), filepath.Join(b.out, "idle-cpu.pprof"))
	}()
	b.prog.say("idle window of %s with heartbeats every %s", b.sc.IdleWindow, heartbeatInterval)
	if err := hold(ctx, b.sc.IdleWindow); err != nil {
		return err
	}
	cpu1, _ := srv.proc()
	counts1, err := srv.counts(ctx)
	if err != nil {
		return err
	}
	if err := <-profDone; err != nil {
		fmt.Fprintf(os.Stderr, "idle CPU profile: %v\n", err)
	}
	d.IdleCPUPercent = 100 * (cpu1.CPUSeconds - cpu0.CPUSeconds) / b.sc.IdleWindow.Seconds()
	d.BenchIdleCPUPercent = 100 * (selfCPU() - self0) / b.sc.IdleWindow.Seconds()
	h := &b.result.Heartbeats
	h.Nodes = n
	h.WindowSeconds = b.sc.IdleWindow.Seconds()
	h.CPUPercent = d.IdleCPUPercent
	h.Heartbeats = counts1.Heartbeats - counts0.Heartbeats
	h.OtherReports = counts1.OtherReports - counts0.OtherReports
	h.PerNodePer10s = float64(h.Heartbeats) / float64(n) / (b.sc.IdleWindow.Seconds() / 10)
	d.Done, h.Done = true, true

	if !run[5] {
		return nil
	}
	// Reconnect storm: kill the server, start it again on the same port
	// with the same desired state, and watch every edge come back.
	s := &b.result.Storm
	s.Edges = n
	objects0, redundant0 := fleet.C.Objects.Load(), fleet.RedundantObjects()
	held := fleet.HeldObjects()
	killed := time.Now()
	srv.kill()
	if err := waitFor(ctx, time.Minute, "edges notice the server is gone", func() bool { return fleet.C.Connected.Load() == 0 }); err != nil {
		return err
	}
	s.DownSeconds = time.Since(killed).Seconds()
	srv, err = b.startEdgesync(ctx, "server-storm", addr, n, b.sc.ObjectsPerNode)
	if err != nil {
		return err
	}
	restarted := time.Now()
	b.prog.watch("storm", fleet, n)
	profDone = make(chan error, 1)
	go func() {
		profDone <- srv.profile(ctx, "profile", 10, filepath.Join(b.out, "storm-cpu.pprof"))
	}()
	defer func() {
		if err := <-profDone; err != nil {
			fmt.Fprintf(os.Stderr, "storm CPU profile: %v\n", err)
		}
	}()
	err = waitFor(ctx, 5*time.Minute, "every edge resynced", func() bool { return int(fleet.C.Synced.Load()) == n })
	if err != nil {
		return fmt.Errorf("%w (%d synced; last error: %v)", err, fleet.C.Synced.Load(), fleet.LastError())
	}
	s.ResyncSeconds = time.Since(restarted).Seconds()
	s.FromKillSeconds = time.Since(killed).Seconds()
	s.ObjectsResent = fleet.C.Objects.Load() - objects0
	s.Redundant = fleet.RedundantObjects() - redundant0
	s.HeldObjects = held
	s.Done = true
	b.prog.say("storm: %d edges resynced %.1fs after the restart", n, s.ResyncSeconds)
	return nil
}

// fanoutAndEncode runs scenarios 2 and 4 on one fleet.
func (b *bench) fanoutAndEncode(ctx context.Context, run map[int]bool) error {
	n := b.sc.FanoutNodes
	srv, err := b.startEdgesync(ctx, "server-fanout", "127.0.0.1:0", 0, 0)
	if err != nil {
		return err
	}
	defer func() { srv.stop() }()
	fleet, stopFleet, err := b.startFleet(ctx, "fan-out", srv.ready.GRPC, n, false, true)
	if err != nil {
		return err
	}
	defer stopFleet()
	if err := waitSynced(ctx, fleet, n); err != nil {
		return err
	}

	if run[2] {
		f := &b.result.Fanout
		f.Nodes, f.Updates = b.sc.FanoutNodes, b.sc.FanoutUpdates
		key := configMapKey("fanout")
		for i := range b.sc.FanoutUpdates {
			start := time.Now()
			rv, err := srv.put(ctx, "fanout", 0, b.sc.FanoutNodes, 1, b.sc.Size)
			if err != nil {
				return err
			}
			if err := waitFor(ctx, time.Minute, fmt.Sprintf("update %d on every node", i+1), func() bool {
				return fleet.HeldVersion(key, rv) == b.sc.FanoutNodes
			}); err != nil {
				return err
			}
			f.RoundsMs = append(f.RoundsMs, float64(time.Since(start).Microseconds())/1000)
		}
		f.Samples = fleet.Latencies()
		f.Latency = measure.Summarize(slices.Clone(f.Samples))
		f.Done = true
		b.prog.say("fan-out: p50 %.1f ms p99 %.1f ms max %.1f ms", f.Latency.P50Ms, f.Latency.P99Ms, f.Latency.MaxMs)
	}
	if run[4] {
		e := &b.result.Encode
		for _, k := range []int{1, 10, 100, 1000, 10000} {
			if k > n {
				break
			}
			total := b.sc.EncodeMessages
			versions := total / k
			total = versions * k
			objects0 := fleet.C.Objects.Load()
			m0, err := srv.metrics(ctx)
			if err != nil {
				return err
			}
			cpu0, _ := srv.proc()
			start := time.Now()
			if _, err := srv.put(ctx, fmt.Sprintf("encode-%d", k), 0, k, versions, b.sc.Size); err != nil {
				return err
			}
			if err := waitFor(ctx, 5*time.Minute, fmt.Sprintf("%d messages to %d recipients", total, k), func() bool {
				return fleet.C.Objects.Load()-objects0 >= int64(total)
			}); err != nil {
				return err
			}
			elapsed := time.Since(start)
			cpu1, _ := srv.proc()
			m1, err := srv.metrics(ctx)
			if err != nil {
				return err
			}
			sent := m1.Sum("edgesync_messages_sent_total", nil) - m0.Sum("edgesync_messages_sent_total", nil)
			e.Points = append(e.Points, encodePoint{
				Recipients: k, Versions: versions, Delivered: total, ServerSent: sent,
				CPUSeconds:      cpu1.CPUSeconds - cpu0.CPUSeconds,
				MicrosPerMsg:    1e6 * (cpu1.CPUSeconds - cpu0.CPUSeconds) / float64(total),
				ElapsedSeconds:  elapsed.Seconds(),
				MessagesPerSecs: float64(total) / elapsed.Seconds(),
			})
		}
		e.Done = len(e.Points) > 0
	}
	return nil
}

func configMapKey(name string) feed.Key {
	return feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: simfeed.Namespace, Name: name}
}

// throughput runs scenario 3: edgesync, then the raw baseline, each with
// the same sessions, message count and size.
func (b *bench) throughput(ctx context.Context, _ map[int]bool) error {
	n, m := b.sc.ThroughputSessions, b.sc.ThroughputMessages
	t := &b.result.Throughput
	t.Sessions, t.MessagesPerSession, t.SizeBytes = n, m, b.sc.Size
	if err := b.throughputEdgesync(ctx, n, m); err != nil {
		return fmt.Errorf("edgesync: %w", err)
	}
	if err := b.throughputRaw(ctx, n, m); err != nil {
		return fmt.Errorf("raw grpc-go: %w", err)
	}
	if t.RawPerSecond > 0 {
		t.Ratio = t.EdgesyncPerSecond / t.RawPerSecond
		t.NodeMajorRatio = t.NodeMajorPerSecond / t.RawPerSecond
	}
	t.Done = true
	return nil
}

func (b *bench) throughputEdgesync(ctx context.Context, n, m int) error {
	t := &b.result.Throughput
	srv, err := b.startEdgesync(ctx, "server-throughput", "127.0.0.1:0", 0, 0)
	if err != nil {
		return err
	}
	defer func() { srv.stop() }()
	fleet, stopFleet, err := b.startFleet(ctx, "throughput edgesync", srv.ready.GRPC, n, false, false)
	if err != nil {
		return err
	}
	defer stopFleet()
	if err := waitSynced(ctx, fleet, n); err != nil {
		return err
	}
	// A first, unmeasured burst creates the m objects every node then
	// holds; the measured bursts update them (a stream of object updates,
	// the issue's scenario; no burst of new objects grows what sessions
	// track). Object-major first, with a CPU profile of the server, then
	// node-major.
	if _, err := b.measureDelivery(ctx, srv, fleet, n, m, "node"); err != nil {
		return fmt.Errorf("creating the objects: %w", err)
	}
	profDone := make(chan error, 1)
	go func() {
		profDone <- srv.profile(ctx, "profile", 10, filepath.Join(b.out, "throughput-cpu.pprof"))
	}()
	obj, err := b.medianDelivery(ctx, srv, fleet, n, m, "object", &t.EdgesyncRuns)
	if err != nil {
		return err
	}
	if err := <-profDone; err != nil {
		fmt.Fprintf(os.Stderr, "throughput CPU profile: %v\n", err)
	}
	node, err := b.medianDelivery(ctx, srv, fleet, n, m, "node", &t.NodeMajorRuns)
	if err != nil {
		return err
	}
	t.EdgesyncSeconds, t.EdgesyncDeliveredSeconds, t.PublishSeconds = obj.seconds, obj.deliveredSeconds, obj.publishSeconds
	t.EdgesyncPerSecond, t.EdgesyncAcked = obj.perSecond, obj.acked
	t.EdgesyncServerCPUSeconds, t.EdgesyncBenchCPUSeconds = obj.serverCPU, obj.benchCPU
	t.NodeMajorPerSecond, t.NodeMajorSeconds, t.NodeMajorPublishSeconds = node.perSecond, node.seconds, node.publishSeconds
	t.NodeMajorServerCPUSeconds, t.NodeMajorBenchCPUSeconds = node.serverCPU, node.benchCPU
	t.EdgesyncEventsPerMessage, t.NodeMajorEventsPerMessage = obj.eventsPerMessage, node.eventsPerMessage
	return nil
}

// delivery is one measured burst of n×m messages.
type delivery struct {
	seconds, deliveredSeconds, publishSeconds float64
	perSecond, acked                          float64
	serverCPU, benchCPU                       float64
	// eventsPerMessage is object events sent per message carrying them
	// (EventBatch carries several).
	eventsPerMessage float64
}

// throughputRuns is how often each throughput burst is measured; the
// median is reported. A burst lasts seconds, and whether senders find one
// message or several waiting when they wake varies from run to run.
const throughputRuns = 3

// medianDelivery measures throughputRuns bursts and returns the one with
// the median rate, appending every rate to rates.
func (b *bench) medianDelivery(ctx context.Context, srv *child, fleet *edgesim.Fleet, n, m int, order string, rates *[]float64) (delivery, error) {
	var runs []delivery
	for range throughputRuns {
		d, err := b.measureDelivery(ctx, srv, fleet, n, m, order)
		if err != nil {
			return d, err
		}
		runs = append(runs, d)
		*rates = append(*rates, d.perSecond)
	}
	slices.SortFunc(runs, func(a, b delivery) int { return cmp.Compare(a.perSecond, b.perSecond) })
	return runs[len(runs)/2], nil
}

// measureDelivery publishes a new version of m objects to each of n
// connected edges in the given order and measures until the server has
// every acknowledgement.
func (b *bench) measureDelivery(ctx context.Context, srv *child, fleet *edgesim.Fleet, n, m int, order string) (delivery, error) {
	var d delivery
	total := int64(n * m)
	m0, err := srv.metrics(ctx)
	if err != nil {
		return d, err
	}
	cpu0, _ := srv.proc()
	self0 := selfCPU()
	start := time.Now()
	objects0 := fleet.C.Objects.Load()
	if _, err := srv.putOrdered(ctx, "throughput", 0, n, m, b.sc.Size, order); err != nil {
		return d, err
	}
	d.publishSeconds = time.Since(start).Seconds()
	if err := waitFor(ctx, 10*time.Minute, "every message delivered", func() bool { return fleet.C.Objects.Load()-objects0 >= total }); err != nil {
		return d, err
	}
	d.deliveredSeconds = time.Since(start).Seconds()
	// Delivered is not done until the server has every acknowledgement.
	err = waitFor(ctx, time.Minute, "every message acknowledged", func() bool {
		m1, err := srv.metrics(ctx)
		if err != nil {
			return false
		}
		d.acked = m1.Sum("edgesync_messages_acked_total", nil) - m0.Sum("edgesync_messages_acked_total", nil)
		if batches := m1.Sum("edgesync_event_batches_sent_total", nil) - m0.Sum("edgesync_event_batches_sent_total", nil); d.acked > 0 {
			batched := m1.Sum("edgesync_batched_events_sent_total", nil) - m0.Sum("edgesync_batched_events_sent_total", nil)
			d.eventsPerMessage = d.acked / (d.acked - batched + batches)
		}
		return d.acked >= float64(total)
	})
	if err != nil {
		return d, fmt.Errorf("%w (%v of %d)", err, d.acked, total)
	}
	elapsed := time.Since(start)
	cpu1, _ := srv.proc()
	d.seconds = elapsed.Seconds()
	d.perSecond = float64(total) / elapsed.Seconds()
	d.serverCPU = cpu1.CPUSeconds - cpu0.CPUSeconds
	d.benchCPU = selfCPU() - self0
	b.prog.say("edgesync, %s-major: %d messages in %.2fs: %.0f/s (%.2f events per message)", order, total, elapsed.Seconds(), d.perSecond, d.eventsPerMessage)
	return d, nil
}

func selfCPU() float64 {
	ps, err := measure.ReadProc(os.Getpid())
	if err != nil {
		return 0
	}
	return ps.CPUSeconds
}

func selfRSS() int64 {
	ps, err := measure.ReadProc(os.Getpid())
	if err != nil {
		return 0
	}
	return ps.RSSBytes
}

// summarizeProfiles writes "go tool pprof -top" of every profile next to it
// when the Go toolchain is on PATH.
func summarizeProfiles(ctx context.Context, dir string) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return
	}
	profiles, _ := filepath.Glob(filepath.Join(dir, "*.pprof"))
	for _, p := range profiles {
		args := []string{"tool", "pprof", "-top", "-nodecount=40"}
		if strings.Contains(p, "heap") {
			args = append(args, "-sample_index=inuse_space")
		}
		out, err := exec.CommandContext(ctx, goBin, append(args, p)...).Output()
		if err != nil {
			continue
		}
		_ = os.WriteFile(strings.TrimSuffix(p, ".pprof")+".top.txt", out, 0o644)
	}
}
