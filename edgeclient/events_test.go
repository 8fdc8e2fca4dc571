package edgeclient

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

func TestEventsWaitOfflineOldestDroppedFirst(t *testing.T) {
	f := newFakeServer(t)
	f.stop()
	f.mu.Lock()
	f.answerFor = func(req *edgesyncv1.SyncRequest) codes.Code {
		if req.GetEventReport().GetNote() == "event 29" {
			return codes.ResourceExhausted // over the node's budget
		}
		return codes.OK
	}
	f.mu.Unlock()
	c := startClient(t, f, "edge-1", t.TempDir(), true, func(cfg *Config) { cfg.EventBuffer = 10 })
	node := Key{Kind: edgesyncv1.Kind_KIND_NODE, Name: "edge-1"}
	// Offline, ReportEvent returns at once however many events wait.
	for i := range 30 {
		if err := c.ReportEvent(EventReport{Regarding: node, Reason: "Tick", Note: fmt.Sprintf("event %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.ReportEvent(EventReport{Regarding: Key{Kind: edgesyncv1.Kind_KIND_SECRET, Name: "x"}, Reason: "Tick"}); err == nil {
		t.Error("an event about a Secret was accepted")
	}
	if s := c.State(); s.EventsDropped != 20 {
		t.Errorf("EventsDropped = %d, want the 20 oldest of 30 beyond a buffer of 10", s.EventsDropped)
	}

	f.restart()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	f.waitFor(ctx, "the buffered events", func() bool {
		n := 0
		for _, r := range f.reports {
			if r.GetEventReport() != nil {
				n++
			}
		}
		return n == 10
	})
	f.mu.Lock()
	var notes []string
	for _, r := range f.reports {
		if ev := r.GetEventReport(); ev != nil {
			notes = append(notes, ev.GetNote())
			if ev.GetRegarding().GetName() != "edge-1" || ev.GetType() != "Normal" || ev.GetAction() != "Tick" || ev.GetEventTime() == nil {
				t.Errorf("event sent as %v", ev)
			}
		}
	}
	f.mu.Unlock()
	if fmt.Sprint(notes) != "[event 20 event 21 event 22 event 23 event 24 event 25 event 26 event 27 event 28 event 29]" {
		t.Errorf("server received %v, want the 10 newest in order", notes)
	}
	waitState(t, c.Client, "the refused event counted", func(s State) bool { return s.EventsRefused == 1 })
}
