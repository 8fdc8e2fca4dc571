package bootstrap

import (
	"testing"
	"time"
)

// A token bound to a node joins it only if made after the node's last
// revocation: by the generation it records, even within the revocation's
// second, and by creation time when it records none (kubeadm's tokens).
func TestMadeBeforeRevocation(t *testing.T) {
	revokedAt := time.Date(2026, 12, 6, 6, 14, 40, 0, time.UTC)
	sameSecond := revokedAt.Add(400 * time.Millisecond).Truncate(time.Second)
	for _, tc := range []struct {
		name       string
		generation int64 // recorded in the token; -1: none
		created    time.Time
		want       bool
	}{
		{"made at generation 1, node now at 2", 1, revokedAt.Add(time.Hour), true},
		{"made at generation 2 in the revocation's second", 2, sameSecond, false},
		{"made at generation 0 before any revocation", 0, revokedAt.Add(-time.Hour), true},
		{"no generation, made earlier", -1, revokedAt.Add(-time.Second), true},
		{"no generation, made in the same second", -1, sameSecond, true},
		{"no generation, made a second later", -1, revokedAt.Add(time.Second), false},
	} {
		tok := &Token{ID: "abcdef", Node: "edge-1", NodeGeneration: tc.generation}
		if got := madeBeforeRevocation(tok, tc.created, 2, revokedAt); got != tc.want {
			t.Errorf("%s: made before the revocation = %v, want %v", tc.name, got, tc.want)
		}
	}
}
