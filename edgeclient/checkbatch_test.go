package edgeclient

import (
	"strings"
	"testing"

	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// A batch that breaks the protocol's promises ends the stream instead of
// being applied: a cumulative Ack would otherwise cover events never
// received.
func TestCheckBatchRefusesMalformedBatches(t *testing.T) {
	event := func(seq uint64) *edgesyncv1.SyncResponse {
		return &edgesyncv1.SyncResponse{Sequence: seq, Message: &edgesyncv1.SyncResponse_ConfigMapEvent{ConfigMapEvent: &edgesyncv1.ConfigMapEvent{}}}
	}
	control := &edgesyncv1.SyncResponse{Sequence: 5, Message: &edgesyncv1.SyncResponse_SyncComplete{SyncComplete: &edgesyncv1.SyncComplete{}}}
	tests := []struct {
		name   string
		seq    uint64
		events []*edgesyncv1.SyncResponse
		want   string // "" for a valid batch
	}{
		{"valid", 5, []*edgesyncv1.SyncResponse{event(3), event(4), event(5)}, ""},
		{"empty", 5, nil, "empty event batch"},
		{"gap", 5, []*edgesyncv1.SyncResponse{event(3), event(5)}, "malformed"},
		{"sequence not the last event's", 6, []*edgesyncv1.SyncResponse{event(4), event(5)}, "malformed"},
		{"control message inside", 5, []*edgesyncv1.SyncResponse{event(4), control}, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkBatch(tt.seq, &edgesyncv1.EventBatch{Events: tt.events})
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("valid batch refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
