package backoff

import (
	"slices"
	"testing"
	"time"
)

func TestDelaysWithinBounds(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		caps []time.Duration // expected cap of each attempt
	}{
		{
			name: "defaults",
			cfg:  Config{},
			caps: []time.Duration{
				500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
				16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second,
			},
		},
		{
			name: "custom",
			cfg:  Config{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 3},
			caps: []time.Duration{100 * time.Millisecond, 300 * time.Millisecond, 900 * time.Millisecond, time.Second, time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Many rounds, so that a delay escaping its bounds would show.
			for range 200 {
				b := New(tt.cfg)
				for i, want := range tt.caps {
					if got := b.Cap(); got != want {
						t.Fatalf("attempt %d: cap = %v, want %v", i, got, want)
					}
					if d := b.Next(); d < 0 || d > want {
						t.Fatalf("attempt %d: delay %v outside [0, %v]", i, d, want)
					}
				}
			}
		})
	}
}

func TestReset(t *testing.T) {
	b := New(Config{})
	for range 10 {
		b.Next()
	}
	b.Reset()
	if got := b.Cap(); got != 500*time.Millisecond {
		t.Errorf("cap after Reset = %v, want 500ms", got)
	}
}

// TestNotInLockstep checks that clients starting at the same moment do not
// share their delays, and that one client's delays vary.
func TestNotInLockstep(t *testing.T) {
	seqs := make([][]time.Duration, 10)
	for i := range seqs {
		b := New(Config{})
		for range 8 {
			seqs[i] = append(seqs[i], b.Next())
		}
	}
	for i := range seqs {
		for j := i + 1; j < len(seqs); j++ {
			if slices.Equal(seqs[i], seqs[j]) {
				t.Fatalf("clients %d and %d back off identically: %v", i, j, seqs[i])
			}
		}
	}
	firsts := map[time.Duration]bool{}
	for _, s := range seqs {
		firsts[s[0]] = true
	}
	if len(firsts) < 5 {
		t.Errorf("first delays of 10 clients take only %d distinct values: %v", len(firsts), firsts)
	}
}
