package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/edgesync/edgesync/internal/bench/cluster"
	"github.com/edgesync/edgesync/internal/bench/edgesim"
	"github.com/edgesync/edgesync/internal/bench/measure"
	"github.com/edgesync/edgesync/server/feed"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// kubeResult holds the scenarios run through the real controllers and a
// real kube-apiserver (devcluster).
type kubeResult struct {
	Done           bool    `json:"done"`
	Nodes          int     `json:"nodes"`
	ControllersQPS float64 `json:"controllers_qps"`
	LeaseQPS       float64 `json:"lease_qps"`
	LeaseRenew     float64 `json:"lease_renew_interval_seconds"`
	// Settings are the server's, as it announced them: the product's
	// defaults unless --kube-* flags overrode them (Settings.Defaults).
	Settings       kubeSettings `json:"settings"`
	SetupSeconds   float64      `json:"setup_seconds"`
	ConnectSeconds float64      `json:"connect_seconds"`

	HeartbeatsDone bool    `json:"heartbeats_done"`
	WindowSeconds  float64 `json:"window_seconds"`
	CPUPercent     float64 `json:"server_cpu_percent_of_one_core"`
	HeartbeatsSent int64   `json:"heartbeats_answered"`
	// LeaseWrites and LeaseCreates are the server's own node Lease writes
	// (edgesync_kube_requests_total), LeaseWritesAPIServer every client's
	// Lease writes as the API server counts them (the control plane's
	// leader-election Leases included).
	LeaseWrites          float64 `json:"lease_writes"`
	LeaseCreates         float64 `json:"lease_creates"`
	LeaseWritesAPIServer float64 `json:"lease_writes_apiserver"`
	// LeaseWritesByVerb are the server's Lease writes by verb (UPDATE,
	// PATCH, CREATE): how each renewal was written.
	LeaseWritesByVerb map[string]float64 `json:"lease_writes_by_verb"`
	// WritesPerRenewal is LeaseWrites per successful renewal.
	WritesPerRenewal   float64 `json:"lease_writes_per_renewal"`
	LeaseWritesPerNode float64 `json:"lease_writes_per_node_per_10s"`
	NodeStatusWrites   float64 `json:"node_status_writes"`
	// From the server's edgesync_lease_renewal_interval_seconds: the
	// renewals in the window, their mean interval, and how many came
	// more than three quarters of the Lease duration (30 s) after the
	// previous one.
	LeaseRenewals         float64 `json:"lease_renewals"`
	LeaseIntervalMean     float64 `json:"lease_renewal_interval_mean_seconds"`
	LeaseIntervalsOver30s float64 `json:"lease_renewal_intervals_over_30s"`
	HeartbeatsNoWrite     float64 `json:"heartbeats_answered_without_lease_write"`
	HeartbeatsPerNode     float64 `json:"heartbeats_per_node_per_10s"`
	// LeaseWritesPerRenewal is Lease writes per node per renew interval
	// (Settings.LeaseRenewInterval).
	LeaseWritesPerRenewal float64 `json:"lease_writes_per_node_per_renew_interval"`
	// Lease lapses: renewals in the window that came more than the Lease
	// duration after the previous one (the server's histogram), and the
	// nodes whose Lease was older than its duration (or missing) when the
	// benchmark listed the Leases at the start and at the end of the
	// window. LeaseLapses is their sum.
	LeaseIntervalsOverDuration float64 `json:"lease_renewal_intervals_over_duration"`
	LeaseStaleAtSamples        int     `json:"leases_stale_at_samples"`
	LeaseSamples               int     `json:"lease_samples"`
	LeaseLapses                float64 `json:"lease_lapses"`
	APIServerCPUPercent        float64 `json:"apiserver_cpu_percent_of_one_core"`

	FanoutDone  bool            `json:"fanout_done"`
	FanoutNodes int             `json:"fanout_nodes"`
	Updates     int             `json:"updates"`
	Latency     measure.Summary `json:"latency"`
	Samples     []time.Duration `json:"-"`
	// FanoutCPUPerUpdateMs is the server process's CPU per ConfigMap
	// update, from the write until every node holds it, less its
	// background CPU (backgroundCPU).
	FanoutCPUPerUpdateMs float64 `json:"fanout_server_cpu_ms_per_update"`

	StormDone       bool    `json:"storm_done"`
	ResyncSeconds   float64 `json:"resync_seconds_after_restart"`
	FromKillSeconds float64 `json:"resync_seconds_after_kill"`
	ObjectsResent   int64   `json:"objects_resent"`
	Redundant       int64   `json:"redundant_objects"`
	// ListGet counts the server's own LIST and GET requests during the
	// resync (edgesync_kube_requests_total); ClusterListGet every client's
	// (apiserver_request_total), the controller-manager's included.
	ListGet        map[string]float64 `json:"list_get_during_resync"`
	ClusterListGet map[string]float64 `json:"cluster_list_get_during_resync"`

	Services      servicesResult      `json:"services"`
	Subscriptions subscriptionsResult `json:"subscriptions"`
}

const kubeNamespace = "bench"

// kubeScenarios runs scenarios 6, 2, 7, 9 and 5 end to end: the real controllers
// in the server process, a devcluster apiserver, and simulated edges.
func (b *bench) kubeScenarios(ctx context.Context, run map[int]bool) error {
	k := &b.result.Kube
	n := b.sc.KubeNodes
	fanout := min(b.sc.FanoutNodes, n)
	k.Nodes, k.FanoutNodes = n, fanout
	setup := time.Now()
	b.prog.say("starting devcluster (etcd + kube-apiserver)")
	cl, err := cluster.Start(ctx, b.devcluster, filepath.Join(b.out, "cluster"))
	if err != nil {
		return err
	}
	defer cl.Stop()
	b.prog.say("creating %d edge nodes and pods", n)
	if err := cl.Create(ctx, cluster.Workload{Namespace: kubeNamespace, Nodes: b.names[:n], FanoutNodes: fanout, Base: "base", Fanout: "fanout"}); err != nil {
		return err
	}
	var gadgetClient dynamic.Interface
	if run[9] {
		// The nodes subscribe in their Hello, so the resource and the
		// ServiceAccount's RBAC exist before they connect.
		if gadgetClient, err = prepareSubscriptions(ctx, cl); err != nil {
			return err
		}
		subscribed := map[string]bool{}
		for _, name := range b.names[:fanout] {
			subscribed[name] = true
		}
		b.subscriptions = func(node string) []*edgesyncv1.Subscription {
			if subscribed[node] {
				return []*edgesyncv1.Subscription{gadgetSubscription()}
			}
			return nil
		}
		defer func() { b.subscriptions = nil }()
	}
	k.SetupSeconds = time.Since(setup).Seconds()
	start := func(name string) (*child, error) {
		// Zero flags are the product's defaults.
		return startChild(ctx, filepath.Join(b.out, name+".log"),
			"--kind", "edgesync", "--certs", b.certs.Dir, "--addr", "127.0.0.1:"+strconv.Itoa(b.kubePort),
			"--heartbeat", b.kubeHeartbeat.String(), "--kubeconfig", cl.Kubeconfig,
			"--kube-qps", strconv.FormatFloat(b.kubeQPS, 'f', -1, 64), "--kube-burst", strconv.Itoa(int(2*b.kubeQPS)),
			"--kube-lease-qps", strconv.FormatFloat(b.leaseQPS, 'f', -1, 64), "--kube-lease-renew", b.leaseRenew.String())
	}
	// The port is picked now, not when the run began: minutes of
	// scenarios (thousands of client connections) in between could take
	// it. The restart of scenario 5 reuses it.
	if b.kubePort, err = freePort(); err != nil {
		return err
	}
	srv, err := start("server-kube")
	if err != nil {
		return err
	}
	if srv.ready.Settings == nil {
		srv.kill()
		return fmt.Errorf("the server with the real controllers announced no settings")
	}
	k.Settings = *srv.ready.Settings
	k.ControllersQPS, k.LeaseQPS, k.LeaseRenew = k.Settings.QPS, k.Settings.LeaseQPS, k.Settings.LeaseRenewInterval.Seconds()
	heartbeat := k.Settings.HeartbeatInterval
	b.prog.say("server with the real controllers: %s", k.Settings)
	defer func() { srv.kill() }()
	fleet, stopFleet, err := b.startFleet(ctx, "kube", srv.ready.GRPC, n, true, true)
	if err != nil {
		return err
	}
	defer stopFleet()
	connect := time.Now()
	if err := waitFor(ctx, time.Duration(n/20+120)*time.Second, "edges synced through the controllers", func() bool { return int(fleet.C.Synced.Load()) == n }); err != nil {
		return fmt.Errorf("%w (%d of %d; last error: %v)", err, fleet.C.Synced.Load(), n, fleet.LastError())
	}
	k.ConnectSeconds = time.Since(connect).Seconds()
	b.prog.say("%d edges synced through the real controllers in %.1fs", n, k.ConnectSeconds)
	// Every node's first heartbeat (which creates its Lease) falls within
	// one interval of connecting; measure after that.
	if err := hold(ctx, heartbeat+2*time.Second); err != nil {
		return err
	}

	if run[6] {
		// At 10,000 nodes on a loaded machine the first renewals (a
		// patch and a create each) take longer than that: measure once
		// every node's Lease was written, or the start sample counts
		// Leases not created yet as lapsed.
		var asked time.Time
		if err := waitFor(ctx, 2*time.Minute, "every node's Lease written", func() bool {
			if time.Since(asked) < time.Second { // one scrape of the server's metrics a second
				return false
			}
			asked = time.Now()
			return leaseRenewals(ctx, srv).ok >= float64(n)
		}); err != nil {
			return err
		}
		stale, err := staleLeases(ctx, cl, b.names[:n], time.Now())
		if err != nil {
			return err
		}
		k.LeaseStaleAtSamples += stale
		m0, err := cl.Metrics(ctx)
		if err != nil {
			return err
		}
		cpu0, _ := srv.proc()
		api0 := apiserverCPU(cl)
		hb0 := heartbeatsAnswered(ctx, srv)
		lease0 := leaseRenewals(ctx, srv)
		own0 := leaseWrites(ctx, srv)
		b.prog.say("heartbeat window of %s through the real controllers", b.sc.IdleWindow)
		profDone := make(chan error, 1)
		go func() {
			profDone <- srv.profile(ctx, "profile", int(b.sc.IdleWindow/time.Second/2), filepath.Join(b.out, "heartbeats-apiserver-cpu.pprof"))
		}()
		if err := hold(ctx, b.sc.IdleWindow); err != nil {
			return err
		}
		if err := <-profDone; err != nil {
			fmt.Fprintf(os.Stderr, "heartbeat profile: %v\n", err)
		}
		m1, err := cl.Metrics(ctx)
		if err != nil {
			return err
		}
		cpu1, _ := srv.proc()
		k.WindowSeconds = b.sc.IdleWindow.Seconds()
		periods := k.WindowSeconds / 10 // the figures per 10 s
		k.CPUPercent = 100 * (cpu1.CPUSeconds - cpu0.CPUSeconds) / k.WindowSeconds
		k.APIServerCPUPercent = 100 * (apiserverCPU(cl) - api0) / k.WindowSeconds
		k.HeartbeatsSent = int64(heartbeatsAnswered(ctx, srv) - hb0)
		lease1 := leaseRenewals(ctx, srv)
		k.LeaseRenewals = lease1.intervals.Count - lease0.intervals.Count
		if k.LeaseRenewals > 0 {
			k.LeaseIntervalMean = (lease1.intervals.Sum - lease0.intervals.Sum) / k.LeaseRenewals
		}
		k.LeaseIntervalsOver30s = lease1.intervals.Above(30) - lease0.intervals.Above(30)
		duration := k.Settings.LeaseDuration.Seconds()
		k.LeaseIntervalsOverDuration = lease1.intervals.Above(duration) - lease0.intervals.Above(duration)
		k.HeartbeatsNoWrite = lease1.skipped - lease0.skipped
		k.HeartbeatsPerNode = float64(k.HeartbeatsSent) / float64(n) / periods
		own1 := leaseWrites(ctx, srv)
		k.LeaseWritesByVerb = map[string]float64{}
		// The API server names writes by HTTP method (PUT, POST, PATCH,
		// APPLY), edgesync_kube_requests_total by what they do.
		for _, verb := range []string{"PUT", "PATCH", "APPLY", "POST"} {
			k.LeaseWritesAPIServer += cluster.Requests(m1, verb, "leases", "") - cluster.Requests(m0, verb, "leases", "")
		}
		for _, verb := range []string{"UPDATE", "PATCH", "APPLY", "CREATE"} {
			d := own1[verb] - own0[verb]
			k.LeaseWrites += d
			if d > 0 {
				k.LeaseWritesByVerb[verb] = d
			}
		}
		k.LeaseCreates = k.LeaseWritesByVerb["CREATE"]
		if ok := lease1.ok - lease0.ok; ok > 0 {
			k.WritesPerRenewal = k.LeaseWrites / ok
		}
		for _, verb := range []string{"PUT", "PATCH", "APPLY"} {
			k.NodeStatusWrites += cluster.Requests(m1, verb, "nodes", "status") - cluster.Requests(m0, verb, "nodes", "status")
		}
		k.LeaseWritesPerNode = k.LeaseWrites / float64(n) / periods
		k.LeaseWritesPerRenewal = k.LeaseWrites / float64(n) / (k.WindowSeconds / k.Settings.LeaseRenewInterval.Seconds())
		stale, err = staleLeases(ctx, cl, b.names[:n], time.Now())
		if err != nil {
			return err
		}
		k.LeaseStaleAtSamples += stale
		k.LeaseSamples = 2 * n
		k.LeaseLapses = k.LeaseIntervalsOverDuration + float64(k.LeaseStaleAtSamples)
		k.HeartbeatsDone = true
	}

	if run[2] {
		key := feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: kubeNamespace, Name: "fanout"}
		fleet.Latencies() // drop anything recorded so far
		profDone := make(chan error, 1)
		go func() {
			profDone <- srv.profile(ctx, "profile", 10, filepath.Join(b.out, "fanout-apiserver-cpu.pprof"))
		}()
		background, err := backgroundCPU(ctx, srv)
		if err != nil {
			return err
		}
		cpu0, _ := srv.proc()
		start := time.Now()
		for i := range b.sc.FanoutUpdates {
			// The time is taken before the write is sent, so the figure
			// includes the apiserver's own write latency.
			sentAt := time.Now()
			rv, err := cl.UpdateConfigMap(ctx, kubeNamespace, "fanout", edgesim.SentAtKey, strconv.FormatInt(sentAt.UnixNano(), 10))
			if err != nil {
				return err
			}
			if err := waitFor(ctx, time.Minute, fmt.Sprintf("ConfigMap update %d on every node", i+1), func() bool {
				return fleet.HeldVersion(key, rv) == fanout
			}); err != nil {
				return err
			}
		}
		k.Updates = b.sc.FanoutUpdates
		cpu1, _ := srv.proc()
		k.FanoutCPUPerUpdateMs = 1000 * (cpu1.CPUSeconds - cpu0.CPUSeconds - background*time.Since(start).Seconds()) / float64(k.Updates)
		if err := <-profDone; err != nil {
			fmt.Fprintf(os.Stderr, "fan-out CPU profile: %v\n", err)
		}
		k.Samples = fleet.Latencies()
		k.Latency = measure.Summarize(slices.Clone(k.Samples))
		k.FanoutDone = true
		b.prog.say("fan-out through the apiserver: p50 %.1f ms p99 %.1f ms max %.1f ms", k.Latency.P50Ms, k.Latency.P99Ms, k.Latency.MaxMs)
	}

	if run[7] {
		if err := b.servicesScenario(ctx, cl, fleet, b.names[:n]); err != nil {
			return err
		}
	}

	if run[9] {
		if err := b.subscriptionsScenario(ctx, gadgetClient, srv, fleet, b.names[:fanout]); err != nil {
			return err
		}
	}

	if run[5] {
		objects0, redundant0 := fleet.C.Objects.Load(), fleet.RedundantObjects()
		killed := time.Now()
		srv.kill()
		if err := waitFor(ctx, time.Minute, "edges notice the server is gone", func() bool { return fleet.C.Connected.Load() == 0 }); err != nil {
			return err
		}
		srv, err = start("server-kube-storm")
		if err != nil {
			return err
		}
		restarted := time.Now()
		m0, err := cl.Metrics(ctx)
		if err != nil {
			return err
		}
		s0, err := srv.metrics(ctx)
		if err != nil {
			return err
		}
		b.prog.watch("kube storm", fleet, n)
		if err := waitFor(ctx, 5*time.Minute, "every edge resynced", func() bool { return int(fleet.C.Synced.Load()) == n }); err != nil {
			return fmt.Errorf("%w (%d synced; last error: %v)", err, fleet.C.Synced.Load(), fleet.LastError())
		}
		k.ResyncSeconds = time.Since(restarted).Seconds()
		k.FromKillSeconds = time.Since(killed).Seconds()
		m1, err := cl.Metrics(ctx)
		if err != nil {
			return err
		}
		s1, err := srv.metrics(ctx)
		if err != nil {
			return err
		}
		k.ObjectsResent = fleet.C.Objects.Load() - objects0
		k.Redundant = fleet.RedundantObjects() - redundant0
		k.ListGet, k.ClusterListGet = map[string]float64{}, map[string]float64{}
		for _, res := range []string{"nodes", "pods", "configmaps", "secrets", "leases", "services", "endpointslices", "serviceaccounts"} {
			for _, verb := range []string{"LIST", "GET"} {
				if d := cluster.Requests(m1, verb, res, "") - cluster.Requests(m0, verb, res, ""); d > 0 {
					k.ClusterListGet[verb+" "+res] = d
				}
				own := map[string]string{"verb": verb, "resource": res}
				if d := s1.Sum("edgesync_kube_requests_total", own) - s0.Sum("edgesync_kube_requests_total", own); d > 0 {
					k.ListGet[verb+" "+res] = d
				}
			}
		}
		k.StormDone = true
		b.prog.say("storm through the controllers: %d edges resynced %.1fs after the restart", n, k.ResyncSeconds)
	}
	k.Done = true
	return nil
}

// heartbeatsAnswered returns how many heartbeats the server has answered.
func heartbeatsAnswered(ctx context.Context, srv *child) float64 {
	m, err := srv.metrics(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "server metrics: %v\n", err)
		return 0
	}
	return m.Sum("edgesync_upstream_results_total", map[string]string{"kind": "heartbeat"})
}

// leaseStats are the server's Lease renewal metrics at one moment.
type leaseStats struct {
	intervals measure.Histogram
	skipped   float64
	ok        float64 // successful renewals
}

func leaseRenewals(ctx context.Context, srv *child) leaseStats {
	m, err := srv.metrics(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "server metrics: %v\n", err)
		return leaseStats{}
	}
	return leaseStats{
		intervals: m.Histogram("edgesync_lease_renewal_interval_seconds"),
		skipped:   m.Sum("edgesync_lease_renewals_skipped_total", nil),
		ok:        m.Sum("edgesync_lease_renewals_total", map[string]string{"result": "ok"}),
	}
}

// leaseWrites returns the server's own requests that wrote node Leases,
// by verb (edgesync_kube_requests_total).
func leaseWrites(ctx context.Context, srv *child) map[string]float64 {
	m, err := srv.metrics(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "server metrics: %v\n", err)
		return nil
	}
	by := map[string]float64{}
	for _, verb := range []string{"UPDATE", "PATCH", "APPLY", "CREATE"} {
		by[verb] = m.Sum("edgesync_kube_requests_total", map[string]string{"verb": verb, "resource": "leases"})
	}
	return by
}

// apiserverCPU returns the devcluster process's CPU seconds (etcd and
// kube-apiserver run in it), or 0.
func apiserverCPU(cl *cluster.Cluster) float64 {
	ps, err := measure.ReadProc(cl.PID())
	if err != nil {
		fmt.Fprintf(os.Stderr, "devcluster stats: %v\n", err)
		return 0
	}
	return ps.CPUSeconds
}
