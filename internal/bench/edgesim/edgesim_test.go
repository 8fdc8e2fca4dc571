package edgesim

import (
	"context"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/edgesync/edgesync/internal/bench/certs"
	"github.com/edgesync/edgesync/internal/bench/simfeed"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/feed"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor polls the fleet's counters, which other goroutines update.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 20s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling another goroutine's state with a deadline
	}
}

func TestFleetSyncsReceivesAndAcknowledges(t *testing.T) {
	for _, mode := range []string{"lean", "edgeclient"} {
		t.Run(mode, func(t *testing.T) { testFleet(t, mode == "edgeclient") })
	}
}

func testFleet(t *testing.T, useEdgeclient bool) {
	set, err := certs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"edge-a", "edge-b", "edge-c"}
	addr, ctrls, _ := startReplica(t, set, "test", names)
	base, err := simfeed.ConfigMap("base", 1, 300, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())

	cs, err := set.IssueNodes(names)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr: addr, Roots: set.CA.Pool(), Heartbeats: true, RecordLatency: true, ConnectConcurrency: 2}
	if useEdgeclient {
		cfg.Edgeclient = &EdgeclientConfig{CAFile: set.Path(certs.CACert), CertDir: t.TempDir()}
	}
	fleet, err := New(cfg, names, cs)
	if err != nil {
		t.Fatal(err)
	}
	fleetDone := make(chan struct{})
	go func() { fleet.Run(ctx); close(fleetDone) }()
	t.Cleanup(func() {
		cancel()
		<-fleetDone
		fleet.Close()
	})

	waitFor(t, "every edge synced", func() bool { return fleet.C.Synced.Load() == 3 })
	if got := fleet.HeldVersion(base.Key, "1"); got != 3 {
		t.Fatalf("%d edges hold the initial object, want 3", got)
	}

	update, err := simfeed.ConfigMap("base", 2, 300, map[string]string{SentAtKey: strconv.FormatInt(time.Now().UnixNano(), 10)})
	if err != nil {
		t.Fatal(err)
	}
	ctrls.Put(names[:2], update)
	waitFor(t, "two edges hold version 2", func() bool { return fleet.HeldVersion(base.Key, "2") == 2 })
	if lat := fleet.Latencies(); len(lat) != 2 {
		t.Fatalf("recorded %d latencies, want one per receiving edge (2)", len(lat))
	}
	waitFor(t, "heartbeats answered", func() bool { return ctrls.Counts().Heartbeats >= 3 })
	if fleet.RedundantObjects() != 0 {
		t.Fatalf("%d redundant objects", fleet.RedundantObjects())
	}
	if got := fleet.C.Objects.Load(); got != 5 {
		t.Fatalf("fleet counted %d object events, want 5 (3 initial, 2 updates)", got)
	}
	if n := fleet.HeldObjects(); n != 3 {
		t.Fatalf("fleet holds %d objects, want 3", n)
	}
}

// startReplica serves names from a server with id on a loopback port, each
// holding the ConfigMap "base" at version 1, until the returned stop is
// called (or the test ends); ctrls publish to it.
func startReplica(t *testing.T, set *certs.Set, id string, names []string) (addr string, ctrls *simfeed.Controllers, stop func()) {
	t.Helper()
	httpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{
		HTTPListener:      httpLis,
		ServerID:          id,
		TLS:               server.TLSFiles{CAFile: set.Path(certs.CACert), CertFile: set.Path(certs.ServerCert), KeyFile: set.Path(certs.ServerKey)},
		HeartbeatInterval: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrls = simfeed.New()
	base, err := simfeed.ConfigMap("base", 1, 300, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctrls.Put(names, base)
	ctrls.SetPublisher(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis, ctrls) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-served }) }
	t.Cleanup(stop)
	return lis.Addr().String(), ctrls, stop
}

// TestLeanEdgesSpreadOverReplicasAndFailOver checks that edges given
// several addresses spread over them by index and that, when one replica
// goes away, its edges reconnect to the next address in their list.
func TestLeanEdgesSpreadOverReplicasAndFailOver(t *testing.T) {
	set, err := certs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"edge-0", "edge-1", "edge-2", "edge-3", "edge-4", "edge-5"}
	ids := []string{"replica-a", "replica-b", "replica-c"}
	var addrs []string
	var stops []func()
	for _, id := range ids {
		addr, _, stop := startReplica(t, set, id, names)
		addrs, stops = append(addrs, addr), append(stops, stop)
	}
	cs, err := set.IssueNodes(names)
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := New(Config{Addrs: addrs, Roots: set.CA.Pool(), ConnectConcurrency: 6}, names, cs)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	fleetDone := make(chan struct{})
	go func() { fleet.Run(ctx); close(fleetDone) }()
	defer func() {
		cancel()
		<-fleetDone
		fleet.Close()
	}()

	// Edge i tries the addresses from i mod 3 on. pick_first starts on
	// the next address when the first has not connected within 250 ms
	// (happy eyeballs), so on a loaded machine an edge may land on a
	// later one: the spread is checked on the lists, the landing only
	// as "somewhere".
	for i, want := range [][]string{addrs, {addrs[1], addrs[2], addrs[0]}, {addrs[2], addrs[0], addrs[1]}, addrs} {
		if got := fleet.edges[i].addrs; !slices.Equal(got, want) {
			t.Errorf("edge %d tries %v, want %v", i, got, want)
		}
	}
	waitFor(t, "every edge synced", func() bool { return fleet.C.Synced.Load() == int64(len(names)) })
	onA := fleet.ByServer()["replica-a"].Synced

	// replica-a goes away: its edges move on to the next addresses.
	stopped := time.Now()
	stops[0]()
	waitFor(t, "every edge synced on replica-b or replica-c", func() bool {
		by := fleet.ByServer()
		return by["replica-b"].Synced+by["replica-c"].Synced == len(names) && by["replica-a"].Connected == 0
	})
	by := fleet.ByServer()
	if moved := by["replica-b"].LastWelcome.After(stopped) || by["replica-c"].LastWelcome.After(stopped); onA > 0 && !moved {
		t.Errorf("%d edges were on replica-a, but no survivor welcomed an edge after it stopped (last Welcome: b %v, c %v, stop %v)", onA, by["replica-b"].LastWelcome, by["replica-c"].LastWelcome, stopped)
	}
	if onA == 0 {
		t.Log("no edge landed on replica-a (loaded machine): failover not exercised")
	}
	if got := fleet.HeldVersion(feed.Key{Kind: edgesyncv1.Kind_KIND_CONFIG_MAP, Namespace: simfeed.Namespace, Name: "base"}, "1"); got != len(names) {
		t.Fatalf("%d edges hold the base ConfigMap after failover, want %d", got, len(names))
	}
	if got := fleet.RedundantObjects(); got != 0 {
		t.Fatalf("%d objects re-sent that an edge held", got)
	}
}

func TestStreamBackoffGrowsToFiveSecondsWithJitter(t *testing.T) {
	tests := []struct {
		failures int
		min, max time.Duration
	}{
		{1, 125 * time.Millisecond, 250 * time.Millisecond},
		{2, 200 * time.Millisecond, 400 * time.Millisecond},
		{20, 2500 * time.Millisecond, 5 * time.Second},
	}
	for _, tt := range tests {
		for range 100 {
			if d := streamBackoff(tt.failures); d < tt.min || d > tt.max {
				t.Fatalf("streamBackoff(%d) = %v, want within [%v, %v]", tt.failures, d, tt.min, tt.max)
			}
		}
	}
}
