// Package backoff computes reconnect delays: exponential growth capped at a
// maximum, with full jitter (each delay uniform between zero and the cap),
// so that thousands of edges that lost the cloud at the same moment do not
// reconnect in lockstep.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Config shapes the delays. Zero fields take the defaults.
type Config struct {
	// Initial is the cap of the first delay; default 500ms.
	Initial time.Duration
	// Max caps every delay; default 30s.
	Max time.Duration
	// Multiplier grows the cap after each attempt; default 2.
	Multiplier float64
}

// Defaults returns c with zero fields set to their defaults.
func (c Config) Defaults() Config {
	if c.Initial <= 0 {
		c.Initial = 500 * time.Millisecond
	}
	if c.Max <= 0 {
		c.Max = 30 * time.Second
	}
	if c.Max < c.Initial {
		c.Max = c.Initial
	}
	if c.Multiplier < 1 {
		c.Multiplier = 2
	}
	return c
}

// Backoff yields the delays of successive attempts. It is not safe for
// concurrent use.
type Backoff struct {
	cfg  Config
	cap  time.Duration
	rand func(n int64) int64
}

// New returns a Backoff drawing from the process-wide random source, which
// is seeded randomly, so that no two processes or clients share a sequence.
func New(cfg Config) *Backoff {
	cfg = cfg.Defaults()
	return &Backoff{cfg: cfg, cap: cfg.Initial, rand: rand.Int64N}
}

// Next returns the delay before the next attempt: uniform in [0, cap],
// where cap starts at Initial and is multiplied after every call up to Max.
func (b *Backoff) Next() time.Duration {
	d := time.Duration(b.rand(int64(b.cap) + 1))
	next := time.Duration(float64(b.cap) * b.cfg.Multiplier)
	if next > b.cfg.Max || next < b.cap { // the second test catches overflow
		next = b.cfg.Max
	}
	b.cap = next
	return d
}

// Cap returns the upper bound of the delay Next returns next.
func (b *Backoff) Cap() time.Duration { return b.cap }

// Reset starts over from Initial, after a successful connection.
func (b *Backoff) Reset() { b.cap = b.cfg.Initial }
