package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgesync/edgesync/internal/bench/measure"
)

// results is everything one run measured; it is written as results.json.
type results struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Machine  machine   `json:"machine"`
	Scale    scale     `json:"scale"`
	// Edges names the simulated edge client: lean, lean-single (lean edges
	// that do not accept event batches) or edgeclient.
	Edges string `json:"edges"`

	Density    densityResult    `json:"density"`
	Fanout     fanoutResult     `json:"fanout"`
	Throughput throughputResult `json:"throughput"`
	Encode     encodeResult     `json:"encode_once"`
	Storm      stormResult      `json:"reconnect_storm"`
	Heartbeats heartbeatResult  `json:"heartbeats"`
	// Kube holds scenarios 2, 5 and 6 run through the real controllers
	// and a devcluster apiserver.
	Kube        kubeResult `json:"kube"`
	KubeSkipped string     `json:"kube_skipped,omitempty"`
	KubeFailed  string     `json:"kube_failed,omitempty"`
	// Failover is scenario 8, also through a devcluster apiserver.
	Failover failoverResult `json:"failover"`
	// Router is scenario 10, also through a devcluster apiserver.
	Router routerResult `json:"router"`

	// Skipped and Failed say why a scenario has no figures.
	Skipped map[int]string `json:"skipped,omitempty"`
	Failed  map[int]string `json:"failed,omitempty"`
	Table   []row          `json:"table"`
}

type machine struct {
	CPUs          int    `json:"cpus"`
	MemTotalBytes int64  `json:"mem_total_bytes"`
	GoVersion     string `json:"go_version"`
	OS            string `json:"os"`
	FileLimit     uint64 `json:"open_file_limit"`
	// LoadAvgStart and LoadAvgEnd are /proc/loadavg when the run started
	// and ended: other work on the machine shows there.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

type rampPoint struct {
	Sessions int   `json:"sessions"`
	RSSBytes int64 `json:"rss_bytes"`
}

type densityResult struct {
	Done               bool    `json:"done"`
	Sessions           int     `json:"sessions"`
	ConnectSeconds     float64 `json:"connect_seconds"`
	BaseRSSBytes       int64   `json:"base_rss_bytes"`
	RSSBytes           int64   `json:"rss_bytes"`
	RSSPerSessionBytes float64 `json:"rss_per_session_bytes"`
	HeapBytes          float64 `json:"heap_inuse_bytes"`
	StackBytes         float64 `json:"stack_inuse_bytes"`
	Goroutines         float64 `json:"goroutines"`
	ServerSessions     float64 `json:"server_sessions_gauge"`
	IdleCPUPercent     float64 `json:"idle_cpu_percent_of_one_core"`
	BenchRSSBytes      int64   `json:"simulator_rss_bytes"`
	// BenchIdleCPUPercent is the simulator's own CPU over the idle window.
	BenchIdleCPUPercent float64 `json:"simulator_idle_cpu_percent_of_one_core"`
	// LimitedBy says why fewer sessions ran than the scale asked for.
	LimitedBy string      `json:"sessions_limited_by,omitempty"`
	Ramp      []rampPoint `json:"ramp"`

	// The raw grpc-go baseline of the idle window (rawstream's heartbeat
	// mode): as many connections, heartbeating on the same interval with
	// messages of the sizes of edgesync's Heartbeat and StatusResult,
	// measured over a window as long.
	RawIdleDone                bool    `json:"raw_idle_done"`
	RawIdleCPUPercent          float64 `json:"raw_idle_cpu_percent_of_one_core"`
	IdleCPURatioToRaw          float64 `json:"idle_cpu_ratio_to_raw"`
	RawHeartbeatsPerNodePer10s float64 `json:"raw_heartbeats_per_node_per_10s"`
	RawHeartbeatBytes          int     `json:"raw_heartbeat_bytes"`
	RawAnswerBytes             int     `json:"raw_answer_bytes"`
	RawConnectSeconds          float64 `json:"raw_connect_seconds"`
	// RawRSSPerSessionBytes is the raw server's RSS per connection, after
	// the settle, measured as edgesync's.
	RawRSSPerSessionBytes float64 `json:"raw_rss_per_session_bytes"`
	RawIdleError          string  `json:"raw_idle_error,omitempty"`
}

// rawIdleNote is what the raw grpc-go baseline adds to the idle CPU figure.
func (d densityResult) rawIdleNote() string {
	switch {
	case d.RawIdleDone && d.RawIdleCPUPercent > 0:
		return fmt.Sprintf(" (raw grpc-go, same heartbeats: %.1f %%, %.2f×)", d.RawIdleCPUPercent, d.IdleCPURatioToRaw)
	case d.RawIdleDone:
		return fmt.Sprintf(" (raw grpc-go, same heartbeats: %.1f %%)", d.RawIdleCPUPercent)
	case d.RawIdleError != "":
		return " (raw grpc-go baseline failed: " + d.RawIdleError + ")"
	}
	return ""
}

type fanoutResult struct {
	Done     bool            `json:"done"`
	Nodes    int             `json:"nodes"`
	Updates  int             `json:"updates"`
	Latency  measure.Summary `json:"latency"`
	RoundsMs []float64       `json:"rounds_ms"`
	Samples  []time.Duration `json:"-"`
	Source   string          `json:"source"`
}

type throughputResult struct {
	Done                     bool    `json:"done"`
	Sessions                 int     `json:"sessions"`
	MessagesPerSession       int     `json:"messages_per_session"`
	SizeBytes                int     `json:"size_bytes"`
	EdgesyncMessageBytes     int     `json:"edgesync_message_bytes"`
	RawMessageBytes          int     `json:"raw_message_bytes"`
	PublishSeconds           float64 `json:"edgesync_publish_seconds"`
	EdgesyncSeconds          float64 `json:"edgesync_seconds"`
	EdgesyncDeliveredSeconds float64 `json:"edgesync_delivered_seconds"`
	EdgesyncPerSecond        float64 `json:"edgesync_per_second"`
	EdgesyncAcked            float64 `json:"edgesync_acked"`
	EdgesyncServerCPUSeconds float64 `json:"edgesync_server_cpu_seconds"`
	EdgesyncBenchCPUSeconds  float64 `json:"edgesync_simulator_cpu_seconds"`
	// Node-major: every object to one node, then the next node.
	NodeMajorPerSecond        float64 `json:"node_major_per_second"`
	NodeMajorSeconds          float64 `json:"node_major_seconds"`
	NodeMajorPublishSeconds   float64 `json:"node_major_publish_seconds"`
	NodeMajorServerCPUSeconds float64 `json:"node_major_server_cpu_seconds"`
	NodeMajorBenchCPUSeconds  float64 `json:"node_major_simulator_cpu_seconds"`
	NodeMajorRatio            float64 `json:"node_major_ratio"`
	RawSeconds                float64 `json:"raw_seconds"`
	RawPerSecond              float64 `json:"raw_per_second"`
	RawServerCPUSeconds       float64 `json:"raw_server_cpu_seconds"`
	RawBenchCPUSeconds        float64 `json:"raw_client_cpu_seconds"`
	Ratio                     float64 `json:"ratio"`
	// The rate of every burst measured; the figures above are the median's.
	EdgesyncRuns  []float64 `json:"edgesync_runs_per_second"`
	NodeMajorRuns []float64 `json:"node_major_runs_per_second"`
	RawRuns       []float64 `json:"raw_runs_per_second"`
	// Object events per message sent (above 1 when edges accept batches,
	// EventBatch), object-major and node-major, in the median bursts.
	EdgesyncEventsPerMessage  float64 `json:"edgesync_events_per_message,omitempty"`
	NodeMajorEventsPerMessage float64 `json:"node_major_events_per_message,omitempty"`
}

type encodePoint struct {
	Recipients      int     `json:"recipients"`
	Versions        int     `json:"versions"`
	Delivered       int     `json:"delivered"`
	ServerSent      float64 `json:"server_sent"`
	CPUSeconds      float64 `json:"server_cpu_seconds"`
	MicrosPerMsg    float64 `json:"server_cpu_us_per_message"`
	ElapsedSeconds  float64 `json:"elapsed_seconds"`
	MessagesPerSecs float64 `json:"messages_per_second"`
}

type encodeResult struct {
	Done   bool          `json:"done"`
	Points []encodePoint `json:"points"`
}

type stormResult struct {
	Done            bool    `json:"done"`
	Edges           int     `json:"edges"`
	HeldObjects     int     `json:"held_objects"`
	DownSeconds     float64 `json:"seconds_until_all_edges_noticed"`
	ResyncSeconds   float64 `json:"resync_seconds_after_restart"`
	FromKillSeconds float64 `json:"resync_seconds_after_kill"`
	ObjectsResent   int64   `json:"objects_resent"`
	Redundant       int64   `json:"redundant_objects"`
}

type heartbeatResult struct {
	Done          bool    `json:"done"`
	Nodes         int     `json:"nodes"`
	WindowSeconds float64 `json:"window_seconds"`
	CPUPercent    float64 `json:"cpu_percent_of_one_core"`
	Heartbeats    int64   `json:"heartbeats"`
	OtherReports  int64   `json:"other_reports"`
	PerNodePer10s float64 `json:"heartbeats_per_node_per_10s"`
}

// row is one line of the goal table.
type row struct {
	Scenario string `json:"scenario"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      string `json:"met"`
}

func newResults(sc scale, fileLimit uint64) *results {
	r := &results{
		Started: time.Now().UTC(),
		Scale:   sc,
		Machine: machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, FileLimit: fileLimit, LoadAvgStart: loadAvg()},
		Skipped: map[int]string{},
		Failed:  map[int]string{},
	}
	r.Fanout.Source = "published in-process through feed.Publisher (simulated controllers); no apiserver or informer in the path"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				r.Machine.MemTotalBytes = kb * 1024
			}
		}
	}
	return r
}

func (r *results) notRun(id int, why string) { r.Skipped[id] = why }
func (r *results) failed(id int, err error)  { r.Failed[id] = err.Error() }

func (r *results) write(path string) error {
	r.Table = r.table()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

const (
	kib = 1024
	mib = 1024 * 1024
)

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// atScale is the verdict on a goal set at goalScale (sessions, nodes,
// edges) for a figure measured at n: below the goal's scale a figure that
// meets it never earns "yes", it says at which scale it was met; one that
// misses it is a miss at any scale.
// The goals of the performance issue (26), each at the scale it names.
// A figure measured below that scale never earns "yes" (atScale).
const (
	goalDensitySessions  = 100000 // sessions on one replica
	goalRSSPerSessionKiB = 48     // RSS per session
	goalIdleCPURatio     = 1.1    // idle CPU against raw grpc-go's
	goalFanoutNodes      = 10000  // nodes of one ConfigMap
	goalFanoutP99Ms      = 250
	goalFanoutSmallNodes = 1000 // the fan-out goal for 1,000 nodes
	goalFanoutSmallP99Ms = 100
	goalObjectMajor      = 0.8   // throughput object by object, × raw
	goalNodeMajor        = 1.0   // throughput node by node, × raw
	goalEncodeRecipients = 10000 // the largest recipient count of encode once
	goalHeartbeatNodes   = 10000
	goalHeartbeatCPU     = 15 // % of a core, via apiserver
	goalFailoverEdges    = 10000
	goalFailoverResync   = 10 // s
	goalFailoverOwned    = 20 // s
	// encodeRise is how much a cost per message may exceed the one at
	// fewer recipients before it counts as rising: the run-to-run spread
	// measured at 100 and 1,000 recipients (±2 µs on 5–8 µs).
	encodeRise = 1.25
)

func atScale(ok bool, n, goalScale int) string {
	switch {
	case n >= goalScale:
		return yesNo(ok)
	case ok:
		return fmt.Sprintf("not measured at this scale (met at %d of %d)", n, goalScale)
	}
	return fmt.Sprintf("no (at %d of %d)", n, goalScale)
}

// table turns the figures into the goal table. A scenario without figures
// says why.
func (r *results) table() []row {
	var rows []row
	missing := func(id int, name, goal string) bool {
		if why, ok := r.Failed[id]; ok {
			rows = append(rows, row{name, goal, "failed: " + why, "not run"})
			return true
		}
		if why, ok := r.Skipped[id]; ok {
			rows = append(rows, row{name, goal, why, "not run"})
			return true
		}
		return false
	}
	scaleNote := func(n, goal int) string {
		if n < goal {
			return fmt.Sprintf(" (reduced: %d of %d)", n, goal)
		}
		return ""
	}

	name, goal := "1 density", "100,000 sessions on one replica, heartbeats every 10 s: RSS ≤ 48 KiB/session; idle CPU ≤ 1.1× raw grpc-go carrying the same heartbeats on the same machine"
	if d := r.Density; !missing(1, name, goal) && d.Done {
		perKiB := d.RSSPerSessionBytes / kib
		memOK := perKiB <= goalRSSPerSessionKiB
		cpuOK := d.RawIdleDone && d.IdleCPURatioToRaw > 0 && d.IdleCPURatioToRaw <= goalIdleCPURatio
		met := atScale(memOK && cpuOK, d.Sessions, goalDensitySessions)
		if !memOK || !cpuOK {
			cpu := yesNo(cpuOK)
			if !d.RawIdleDone {
				cpu = "no raw baseline"
			}
			met = fmt.Sprintf("no (memory: %s, idle CPU: %s)", yesNo(memOK), cpu)
			if d.Sessions < goalDensitySessions {
				met += fmt.Sprintf(" (at %d of %d)", d.Sessions, goalDensitySessions)
			}
		}
		if d.Sessions < goalDensitySessions {
			projected := float64(d.BaseRSSBytes) + goalDensitySessions*d.RSSPerSessionBytes
			met += fmt.Sprintf("; RSS projected to %d sessions: %.0f MiB (base + sessions × per session)", goalDensitySessions, projected/mib)
		}
		limited := ""
		if d.LimitedBy != "" {
			limited = " (" + d.LimitedBy + ")"
		}
		rawRSS := ""
		if d.RawRSSPerSessionBytes > 0 {
			rawRSS = fmt.Sprintf(" (raw grpc-go holding the same heartbeating connections: %.1f KiB/session)", d.RawRSSPerSessionBytes/kib)
		}
		rows = append(rows, row{name, goal, fmt.Sprintf("%d sessions%s%s: RSS %.0f MiB, %.1f KiB/session%s (heap %.0f MiB, stacks %.0f MiB), %.0f goroutines, idle CPU %.1f %%%s; the simulator's own RSS %.0f MiB (%.1f KiB/edge), CPU %.1f %% in the idle window",
			d.Sessions, scaleNote(d.Sessions, goalDensitySessions), limited, float64(d.RSSBytes)/mib, perKiB, rawRSS, d.HeapBytes/mib, d.StackBytes/mib, d.Goroutines, d.IdleCPUPercent, d.rawIdleNote(),
			float64(d.BenchRSSBytes)/mib, float64(d.BenchRSSBytes)/kib/float64(max(d.Sessions, 1)), d.BenchIdleCPUPercent), met})
	}

	name, goal = "2 fan-out latency, server only", fanoutGoal
	if f := r.Fanout; !missing(2, name, goal) && f.Done {
		rows = append(rows, row{name, goal, fmt.Sprintf("%d nodes × %d updates, from publish (no apiserver): p50 %.1f ms, p99 %.1f ms, max %.1f ms",
			f.Nodes, f.Updates, f.Latency.P50Ms, f.Latency.P99Ms, f.Latency.MaxMs), fanoutVerdict(f.Nodes, f.Latency.P99Ms) + " (without apiserver/informer)"})
	}

	rows = append(rows, r.kubeRow(2)...)

	name, goal = "3 throughput vs raw", "1,000 sessions: delivered+acked msg/s ≥ 0.8× raw grpc-go object by object, ≥ 1.0× node by node"
	if t := r.Throughput; !missing(3, name, goal) && t.Done {
		runs := ""
		if len(t.EdgesyncRuns) > 1 {
			runs = fmt.Sprintf(" (median of %d bursts each; object-major bursts %s/s, node-major %s/s, raw %s/s)", len(t.EdgesyncRuns), rates(t.EdgesyncRuns), rates(t.NodeMajorRuns), rates(t.RawRuns))
		}
		rows = append(rows, row{name, goal, fmt.Sprintf("%d sessions × %d msgs of ~%d B, raw %.0f/s; edgesync published object by object to all nodes %.0f/s = %.2f×; node by node %.0f/s = %.2f×%s",
			t.Sessions, t.MessagesPerSession, t.SizeBytes, t.RawPerSecond, t.EdgesyncPerSecond, t.Ratio, t.NodeMajorPerSecond, t.NodeMajorRatio, runs),
			fmt.Sprintf("%s (object-major), %s (node-major)", atScale(t.Ratio >= goalObjectMajor, t.Sessions, 1000), atScale(t.NodeMajorRatio >= goalNodeMajor, t.Sessions, 1000))})
	}

	name, goal = "4 encode once", "server CPU per delivered message never rises with the recipient count (1 → 10 → 100 → 1,000 → 10,000)"
	if e := r.Encode; !missing(4, name, goal) && e.Done {
		var parts []string
		neverRises := true
		for i, p := range e.Points {
			parts = append(parts, fmt.Sprintf("%d: %.1f µs", p.Recipients, p.MicrosPerMsg))
			if i > 0 && p.MicrosPerMsg > encodeRise*e.Points[i-1].MicrosPerMsg {
				neverRises = false
			}
		}
		most := e.Points[len(e.Points)-1].Recipients
		rows = append(rows, row{name, goal, fmt.Sprintf("CPU/msg by recipients %s (a point counts as rising when it is more than %.0f %% above the one before: the run-to-run spread)",
			strings.Join(parts, ", "), 100*(encodeRise-1)), atScale(neverRises, most, goalEncodeRecipients)})
	}

	name, goal = "5 reconnect storm, server only", stormGoal
	if s := r.Storm; !missing(5, name, goal) && s.Done {
		rows = append(rows, row{name, goal, fmt.Sprintf("%d edges%s holding %d objects: all resynced %.1f s after restart (%.1f s after kill; in-memory controllers: no informer cache to sync); %d objects re-sent, %d already held; LIST/GET not measured",
			s.Edges, scaleNote(s.Edges, 10000), s.HeldObjects, s.ResyncSeconds, s.FromKillSeconds, s.ObjectsResent, s.Redundant),
			atScale(s.ResyncSeconds <= 30 && s.Redundant == 0, s.Edges, 10000) + " (LIST/GET not measured)"})
	}

	rows = append(rows, r.kubeRow(5)...)

	name, goal = "6 heartbeats, server only", "no goal of its own (the goal is via apiserver, below; the server's idle CPU against raw grpc-go is row 1's)"
	if h := r.Heartbeats; !missing(6, name, goal) && h.Done {
		rows = append(rows, row{name, goal, fmt.Sprintf("%d nodes over %.0f s: server CPU %.1f %%%s; %.2f heartbeats/node/10 s and %d other reports reached the controllers; Lease/NodeStatus writes not measured (in-memory controllers)",
			h.Nodes, h.WindowSeconds, h.CPUPercent, r.Density.rawIdleNote(), h.PerNodePer10s, h.OtherReports), "n/a"})
	}
	rows = append(rows, r.kubeRow(6)...)
	rows = append(rows, r.kubeRow(7)...)
	rows = append(rows, r.kubeRow(9)...)

	name, goal = "8 failover, via apiserver", "10,000 edges over 3 replicas, one killed: all resynced ≤ 10 s, every node owned ≤ 20 s, 0 node Leases lapsed, 0 LIST/GET, 0 duplicate owners"
	if r.KubeSkipped != "" && r.Skipped[8] == "" && r.Failed[8] == "" {
		rows = append(rows, row{name, goal, r.KubeSkipped, "not run"})
	} else if f := r.Failover; !missing(8, name, goal) && f.Done {
		ok := f.ResyncedSeconds <= goalFailoverResync && f.OwnershipSeconds <= goalFailoverOwned && f.NodeLeasesLapsed == 0 && f.EdgesyncListGet == 0 && f.DuplicateOwners == 0
		rows = append(rows, row{name, goal, f.measured(), atScale(ok, f.Edges, goalFailoverEdges)})
	}

	name, goal = "10 router rest → eventbus, via apiserver", "1,000 messages/s spread over 100 nodes: p99 ≤ 50 ms from the POST to the MQTT subscriber; server CPU per message"
	if r.KubeSkipped != "" && r.Skipped[10] == "" && r.Failed[10] == "" {
		rows = append(rows, row{name, goal, r.KubeSkipped, "not run"})
	} else if v := r.Router; !missing(10, name, goal) && v.Done {
		rows = append(rows, row{name, goal, v.measured(), v.met()})
	}

	// Every scenario has a row, even when nothing measured it.
	names := map[int]string{1: "1 density", 2: "2 fan-out latency", 3: "3 throughput vs raw", 4: "4 encode once", 5: "5 reconnect storm", 6: "6 heartbeats", 7: "7 services to the edge", 8: "8 failover", 9: "9 subscribed custom resource", 10: "10 router"}
	for id := 1; id <= 10; id++ {
		prefix := strconv.Itoa(id) + " "
		if !slices.ContainsFunc(rows, func(r row) bool { return strings.HasPrefix(r.Scenario, prefix) }) {
			why := "not selected with --scenarios"
			if w, ok := r.Skipped[id]; ok {
				why = w
			}
			rows = append(rows, row{names[id], "see docs/benchmarks.md", why, "not run"})
		}
	}
	slices.SortStableFunc(rows, func(a, b row) int { return scenarioNumber(a) - scenarioNumber(b) })
	return rows
}

// scenarioNumber is the number a row's scenario name starts with.
func scenarioNumber(r row) int {
	n, _, _ := strings.Cut(r.Scenario, " ")
	v, _ := strconv.Atoi(n)
	return v
}

// kubeRow is the row of scenario id measured through the real controllers
// and apiserver, or why it is missing.
// fanoutGoal and stormGoal are the goals of scenarios 2 and 5, server only
// and via apiserver alike.
const (
	fanoutGoal = "1 ConfigMap on 10,000 nodes updated 20×: p99 ≤ 250 ms from the write (1,000 nodes: ≤ 100 ms)"
	stormGoal  = "10,000 edges, server killed+restarted: all resynced ≤ 30 s; 0 LIST/GET; 0 objects re-sent that an edge held"
)

// fanoutVerdict judges a fan-out's p99 against the goal for the nodes it
// reached: 10,000 nodes ≤ 250 ms; 1,000 nodes ≤ 100 ms, which alone
// never meets the goal set for 10,000.
func fanoutVerdict(nodes int, p99Ms float64) string {
	switch {
	case nodes >= goalFanoutNodes:
		return yesNo(p99Ms <= goalFanoutP99Ms)
	case nodes >= goalFanoutSmallNodes && p99Ms <= goalFanoutSmallP99Ms:
		return fmt.Sprintf("met for %d nodes (≤ %d ms); %d nodes not measured at this scale", nodes, goalFanoutSmallP99Ms, goalFanoutNodes)
	case nodes >= goalFanoutSmallNodes:
		return fmt.Sprintf("no (%d nodes: p99 above %d ms)", nodes, goalFanoutSmallP99Ms)
	}
	return fmt.Sprintf("not measured at this scale (%d of %d nodes)", nodes, goalFanoutSmallNodes)
}

func (r *results) kubeRow(id int) []row {
	k := r.Kube
	goals := map[int][2]string{
		2: {"2 fan-out latency, via apiserver", fanoutGoal},
		5: {"5 reconnect storm, via apiserver", stormGoal},
		6: {"6 heartbeats, via apiserver", "10,000 nodes with the product's default settings: server CPU ≤ 15 % of a core, ≤ 1 Lease write/node/renewal interval, no Lease lapses"},
		7: {"7 services to the edge, via apiserver", "1 Service, 1,000 endpoints on 1,000 nodes in 10 zones, endpoints churn: 10 encodings per slice change; p99 ≤ 250 ms"},
		9: {"9 subscribed custom resource, via apiserver", "1,000 nodes subscribed to one 1 KiB custom object updated 20×: p99 ≤ 150 ms from the write; cloud CPU per update beside a ConfigMap's"},
	}
	name, goal := goals[id][0], goals[id][1]
	switch {
	case r.KubeSkipped != "":
		return []row{{name, goal, r.KubeSkipped, "not run"}}
	case r.KubeFailed != "" && !(id == 2 && k.FanoutDone || id == 5 && k.StormDone || id == 6 && k.HeartbeatsDone || id == 7 && k.Services.Done || id == 9 && k.Subscriptions.Done):
		return []row{{name, goal, "failed: " + r.KubeFailed, "not run"}}
	}
	if _, skipped := r.Skipped[id]; skipped {
		return nil
	}
	scaleNote := ""
	if k.Nodes < goalHeartbeatNodes && id != 2 {
		scaleNote = fmt.Sprintf(" (reduced: %d of %d)", k.Nodes, goalHeartbeatNodes)
	}
	switch id {
	case 2:
		if !k.FanoutDone {
			return nil
		}
		return []row{{name, goal, fmt.Sprintf("%d nodes × %d updates, ConfigMap PATCH → controllers → server → edge: p50 %.1f ms, p99 %.1f ms, max %.1f ms",
			k.FanoutNodes, k.Updates, k.Latency.P50Ms, k.Latency.P99Ms, k.Latency.MaxMs), fanoutVerdict(k.FanoutNodes, k.Latency.P99Ms)}}
	case 5:
		if !k.StormDone {
			return nil
		}
		var lg float64
		var parts []string
		for what, n := range k.ListGet {
			lg += n
			parts = append(parts, fmt.Sprintf("%s %.0f", what, n))
		}
		slices.Sort(parts)
		detail := ""
		if len(parts) > 0 {
			detail = " (" + strings.Join(parts, ", ") + ")"
		}
		var cluster []string
		for what, n := range k.ClusterListGet {
			cluster = append(cluster, fmt.Sprintf("%s %.0f", what, n))
		}
		slices.Sort(cluster)
		others := ""
		if len(cluster) > 0 {
			others = "; every client of the apiserver, the controller-manager included: " + strings.Join(cluster, ", ")
		}
		return []row{{name, goal, fmt.Sprintf("%d edges%s: all resynced %.1f s after restart (%.1f s after kill; the new process serves once its informers' caches synced, and that time is included); %.0f LIST/GET by edgesync during resync%s%s; %d objects sent, %d of them already held",
			k.Nodes, scaleNote, k.ResyncSeconds, k.FromKillSeconds, lg, detail, others, k.ObjectsResent, k.Redundant), atScale(k.ResyncSeconds <= 30 && lg == 0 && k.Redundant == 0, k.Nodes, 10000)}}
	case 6:
		if !k.HeartbeatsDone {
			return nil
		}
		renew := "never"
		if k.LeaseWrites > 0 {
			renew = fmt.Sprintf("every %.0f s", k.WindowSeconds*float64(k.Nodes)/k.LeaseWrites)
		}
		// Lapses (a renewal later than the Lease's duration, or a Lease
		// stale when sampled) are the goal's; renewals more than 30 s
		// apart are shown as the margin left.
		freshness := ""
		if k.LeaseRenewals > 0 {
			freshness = fmt.Sprintf("; %.0f heartbeats answered without a write; renewal interval mean %.1f s, %.0f of %.0f renewals more than 30 s after the previous", k.HeartbeatsNoWrite, k.LeaseIntervalMean, k.LeaseIntervalsOver30s, k.LeaseRenewals)
		}
		return []row{{name, goal, fmt.Sprintf("%d nodes%s over %.0f s: %.2f Lease writes/node/10 s, %.2f per renew interval, %.2f per renewal (%.0f writes %v for %d heartbeats answered; each Lease renewed %s on average, duration 40 s%s); %.0f Lease lapses (%.0f renewals later than the duration, %d of %d Leases stale when sampled at the window's start and end); %.0f NodeStatus writes, server CPU %.1f %% (%s; devcluster CPU %.0f %%)",
			k.Nodes, scaleNote, k.WindowSeconds, k.LeaseWritesPerNode, k.LeaseWritesPerRenewal, k.WritesPerRenewal, k.LeaseWrites, k.LeaseWritesByVerb, k.HeartbeatsSent, renew, freshness,
			k.LeaseLapses, k.LeaseIntervalsOverDuration, k.LeaseStaleAtSamples, k.LeaseSamples, k.NodeStatusWrites, k.CPUPercent, k.Settings, k.APIServerCPUPercent),
			atScale(k.LeaseWritesPerRenewal <= 1.05 && k.LeaseLapses == 0 && k.NodeStatusWrites == 0 && k.CPUPercent <= goalHeartbeatCPU, k.Nodes, goalHeartbeatNodes)}}
	case 9:
		v := k.Subscriptions
		if !v.Done {
			return nil
		}
		note, cm := "", "not measured (scenario 2 not run)"
		if v.Nodes < 1000 {
			note = fmt.Sprintf(" (reduced: %d of 1000 nodes)", v.Nodes)
		}
		if k.FanoutDone {
			cm = fmt.Sprintf("%.1f ms", k.FanoutCPUPerUpdateMs)
		}
		return []row{{name, goal, fmt.Sprintf("%d nodes%s × %d updates of a %d B Gadget, PATCH → dynamic informer → server → edge: p50 %.1f ms, p99 %.1f ms, max %.1f ms; server CPU per update %.1f ms (a ConfigMap on %d nodes, scenario 2: %s; both less the server's background CPU, the heartbeats of all %d nodes); %.1f encodings per update, %.0f dynamic informer(s)",
			v.Nodes, note, v.Updates, v.ObjectBytes, v.Latency.P50Ms, v.Latency.P99Ms, v.Latency.MaxMs, v.CPUPerUpdateMs, k.FanoutNodes, cm, k.Nodes, v.EncodesPerUpdate, v.Informers),
			yesNo(v.Latency.P99Ms <= 150 && v.Nodes >= 1000)}}
	case 7:
		v := k.Services
		if !v.Done {
			return nil
		}
		note := ""
		if v.Nodes < 1000 {
			note = fmt.Sprintf(" (reduced: %d of 1000 nodes)", v.Nodes)
		}
		return []row{{name, goal, fmt.Sprintf("%d nodes%s in %d zones, %d endpoints in %d slices, %d readiness changes, each reaching the %d nodes of its zone (%d sends to other nodes), EndpointSlice write → controllers → server → edge: p50 %.1f ms, p99 %.1f ms, max %.1f ms; %.1f encodings per slice change (max %d, distinct versions at the edges)",
			v.Nodes, note, v.Zones, v.Endpoints, v.Slices, v.Updates, v.Receivers, v.OtherReceivers, v.Latency.P50Ms, v.Latency.P99Ms, v.Latency.MaxMs, v.EncodingsMean, v.EncodingsMax),
			yesNo(v.Latency.P99Ms <= 250 && v.EncodingsMax <= v.Zones && v.Nodes >= 1000)}}
	}
	return nil
}

// measured is the failover row's figures.
func (f failoverResult) measured() string {
	note := ""
	if f.Edges < 10000 {
		note = fmt.Sprintf(" (reduced: %d of 10000)", f.Edges)
	}
	list := func(m map[string]float64) string {
		var parts []string
		for what, n := range m {
			parts = append(parts, fmt.Sprintf("%s %.0f", what, n))
		}
		slices.Sort(parts)
		if len(parts) == 0 {
			return "none"
		}
		return strings.Join(parts, ", ")
	}
	return fmt.Sprintf("%d edges%s over %d replicas (their first writes, every node's Lease and every pod's token, done %.0f s after all synced), %s killed with its %d edges (ownership Lease %s, QPS %s): "+
		"all reconnected %.1f s after the kill (first %.1f s; a stream a survivor dropped again counts from its last), all resynced (SyncComplete and the ConfigMap written after the kill) %.1f s, every node owned by a survivor %.1f s; "+
		"%.0f LIST/GET by edgesync in the %.0f s window (edgesync's requests: %s; every client's, the controller-manager and the benchmark's watches included: %s); "+
		"%d duplicate owners (%d ownership transitions: %d takeovers from the dead replica, %d handovers); %d node Leases lapsed (%d by %.0f s after the kill, one node Lease duration past the window; %.0f renewals by survivors keeping the dead replica's nodes); %d objects sent, %d of them already held; %d edge streams ended (%d before the kill)",
		f.Edges, note, f.Replicas, f.SteadySeconds, f.Killed, f.KilledEdges, f.OwnershipLease, f.OwnershipQPS,
		f.ReconnectedSeconds, f.FirstReconnectedSeconds, f.ResyncedSeconds, f.OwnershipSeconds,
		f.EdgesyncListGet, f.WindowSeconds, list(f.EdgesyncRequests), list(f.APIServerRequests),
		f.DuplicateOwners, f.Transitions, f.Takeovers, f.Handovers, f.NodeLeasesLapsed, f.NodeLeasesLapsedLater, f.LapseWatchSeconds, f.KeptLeaseRenewals, f.ObjectsResent, f.Redundant, f.StreamErrors, f.StreamErrorsBefore)
}

// measured is the router row's figures.
func (v routerResult) measured() string {
	var codes []string
	for code, n := range v.Codes {
		codes = append(codes, fmt.Sprintf("%s ×%d", code, n))
	}
	slices.Sort(codes)
	note := ""
	if v.Nodes < 100 || v.Rate < 1000 {
		note = fmt.Sprintf(" (reduced: %d of 100 nodes, %.0f of 1,000/s)", v.Nodes, v.Rate)
	}
	return fmt.Sprintf("%d nodes%s, %d calls of %d B over %.0f s (asked %.0f/s, sent %.0f/s; answers %s), one caller token, REST (HTTPS) → server → edgeclient → %s → subscriber: "+
		"p50 %.1f ms, p99 %.1f ms, max %.1f ms (answer 200 p99 %.1f ms; p99 over 50 ms in %d of %d seconds); %d received, %d lost, %d duplicates; "+
		"server CPU %.1f µs per message (%.0f %% of a core at this rate); TokenReviews %.0f, SubjectAccessReviews %.0f in the window; "+
		"same machine: benchmark (callers, edges, subscriber) %.0f %%, mosquitto %.0f %%, devcluster %.0f %% of a core; load average %s → %s",
		v.Nodes, note, v.Posted, v.BodyBytes, v.WindowSeconds, v.Rate, v.SentRate, strings.Join(codes, ", "), v.Broker,
		v.Latency.P50Ms, v.Latency.P99Ms, v.Latency.MaxMs, v.Answer.P99Ms, v.SecondsOverGoal, len(v.P99BySecond), v.Received, v.Lost, v.Duplicates,
		v.MicrosPerMessage, v.ServerCPUPercent, v.TokenReviews, v.AccessReviews,
		v.BenchCPUPercent, v.MosquittoCPUPercent, v.APIServerCPUPercent, firstField(v.LoadAvgStart), firstField(v.LoadAvgEnd))
}

// met is the router row's verdict: the latency goal at the rate
// and size, with nothing lost (CPU per message has no goal).
func (v routerResult) met() string {
	ok := v.Latency.P99Ms <= 50 && v.Lost == 0 && v.Received == v.Posted
	switch {
	case v.Nodes < 100:
		return atScale(ok, v.Nodes, 100)
	case v.Rate < 1000:
		return atScale(ok, int(v.Rate), 1000) + " calls/s"
	case v.SentRate < 0.95*v.Rate:
		return "no (the load generator sent only " + strconv.FormatFloat(v.SentRate, 'f', 0, 64) + "/s)"
	}
	return yesNo(ok)
}

func firstField(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return "?"
}

func (r *results) printTable(w io.Writer) {
	fmt.Fprintf(w, "\nedgesync-bench, scale %s, %s edges, %d CPUs, %s, %s (load average at start %s, at end %s)\n\n",
		r.Scale.Name, r.Edges, r.Machine.CPUs, r.Machine.GoVersion, r.Started.Format(time.RFC3339), r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd)
	fmt.Fprintln(w, "| scenario | goal | measured | met? |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, row := range r.table() {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", row.Scenario, row.Goal, row.Measured, row.Met)
	}
}

// tableMain prints the goal table of a results.json written by run.
func tableMain(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: edgesync-bench table RESULTS.json")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var r results
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("read %s: %w", args[0], err)
	}
	if r.Skipped == nil {
		r.Skipped = map[int]string{}
	}
	if r.Failed == nil {
		r.Failed = map[int]string{}
	}
	r.printTable(os.Stdout)
	return nil
}

// rates lists message rates in thousands, such as "105k, 159k, 131k".
func rates(perSecond []float64) string {
	parts := make([]string, len(perSecond))
	for i, r := range perSecond {
		parts[i] = fmt.Sprintf("%.0fk", r/1000)
	}
	return strings.Join(parts, ", ")
}
