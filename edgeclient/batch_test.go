package edgeclient_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgesync/edgesync/edgeclient"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
	"github.com/edgesync/edgesync/internal/feedtest"
	"github.com/edgesync/edgesync/internal/servertest"
	"github.com/edgesync/edgesync/server"
	"github.com/edgesync/edgesync/server/feed"
)

// The client accepts event batches: with a small window, most of many
// waiting objects come batched, and the client applies every event in
// sequence order, holds what the node should hold, and acknowledges all of
// them (the server's window would otherwise stop delivery).
func TestClientAppliesEventBatches(t *testing.T) {
	const node, objects, window = "edge-batches", 200, 8
	ctrls := feedtest.New()
	reg := prometheus.NewRegistry()
	env := servertest.Start(t, ctrls, func(o *server.Options) { o.AckWindow, o.Registerer = window, reg })
	var initial []*feed.Object
	for i := range objects {
		initial = append(initial, feedtest.ConfigMap("ns", fmt.Sprint("cm-", i), "1", map[string]string{"i": fmt.Sprint(i)}))
	}
	ctrls.Set(node, initial...)

	var mu sync.Mutex
	var seqs []uint64
	certFile, keyFile := env.NodeCert(t, node)
	c := newClient(t, env.Addr, env.CAFile, certFile, keyFile, node, t.TempDir(), func(cfg *edgeclient.Config) {
		cfg.OnEvent = func(_ context.Context, ev edgeclient.Event) error {
			mu.Lock()
			seqs = append(seqs, ev.Sequence)
			mu.Unlock()
			return nil
		}
	})
	c.start()
	want := desired(t, ctrls, node)
	wait(t, c.Client, "the initial sync", func(s edgeclient.State) bool { return s.Synced && sameMap(held(c.Client), want) })

	// Live changes, more than the window, published at once.
	for i := range objects {
		ctrls.Put(node, feedtest.ConfigMap("ns", fmt.Sprint("cm-", i), "2", map[string]string{"i": fmt.Sprint(i)}))
	}
	want = desired(t, ctrls, node)
	wait(t, c.Client, "the live changes", func(edgeclient.State) bool { return sameMap(held(c.Client), want) })

	admin := edgesyncv1.NewAdminServiceClient(env.DialAdmin(t))
	waitAcked := func() bool {
		resp, err := admin.GetSession(t.Context(), &edgesyncv1.GetSessionRequest{NodeName: node})
		if err != nil {
			t.Fatal(err)
		}
		s := resp.GetSession()
		return s.GetUnacknowledged() == 0 && s.GetQueueDepth() == 0
	}
	// Acknowledgements follow the last event within Config.AckDelay: the
	// server's session is polled, as a user watching it would.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for !waitAcked() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("the server still waits for acknowledgements after 30s")
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if len(seqs) != 2*objects {
		t.Fatalf("%d events delivered, want %d", len(seqs), 2*objects)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("event %d has sequence %d after %d: events out of order", i, seqs[i], seqs[i-1])
		}
	}
	if n := counter(t, reg, "edgesync_event_batches_sent_total"); n == 0 {
		t.Fatal("the server sent no batch: the client did not ask for them")
	}
}

func counter(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			sum := 0.0
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
