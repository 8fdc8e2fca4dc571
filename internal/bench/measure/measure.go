// Package measure holds the pure measuring helpers of edgesync-bench:
// latency summaries (percentiles), process statistics read from /proc, and
// figures scraped from a server's Prometheus /metrics page. It owns no
// goroutines and knows nothing about edgesync's protocol.
package measure

import (
	"math"
	"slices"
	"time"
)

// Summary describes a set of latency samples.
type Summary struct {
	Count int     `json:"count"`
	MinMs float64 `json:"min_ms"`
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

// Summarize returns the summary of samples; samples is sorted in place.
func Summarize(samples []time.Duration) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	slices.Sort(samples)
	var sum float64
	for _, s := range samples {
		sum += ms(s)
	}
	return Summary{
		Count: len(samples),
		MinMs: ms(samples[0]),
		P50Ms: ms(Percentile(samples, 50)),
		P90Ms: ms(Percentile(samples, 90)),
		P99Ms: ms(Percentile(samples, 99)),
		MaxMs: ms(samples[len(samples)-1]),
		Mean:  sum / float64(len(samples)),
	}
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted samples by
// the nearest-rank method: the smallest sample such that at least p percent
// of the samples are less than or equal to it. It returns 0 for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
