package measure

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := time.Millisecond
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * ms
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single", []time.Duration{7 * ms}, 99, 7 * ms},
		{"median of 1..100", hundred, 50, 50 * ms},
		{"p99 of 1..100", hundred, 99, 99 * ms},
		{"p100 is the max", hundred, 100, 100 * ms},
		{"p99 of ten is the max", hundred[:10], 99, 10 * ms},
		{"tiny p is the min", hundred, 0.001, 1 * ms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.p); got != tt.want {
				t.Fatalf("Percentile(p%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarizeSortsAndSummarizes(t *testing.T) {
	s := Summarize([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	if s.Count != 3 || s.MinMs != 1 || s.P50Ms != 2 || s.MaxMs != 3 || s.Mean != 2 {
		t.Fatalf("Summarize = %+v", s)
	}
	if got := Summarize(nil); got.Count != 0 {
		t.Fatalf("Summarize(nil) = %+v", got)
	}
}

func TestParseProc(t *testing.T) {
	stat := "4242 (edgesync server) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 125 0 0 20 0 12 0 100 1000000 300 18446744073709551615"
	status := "Name:\tedgesync-server\nVmRSS:\t  204800 kB\nThreads:\t12\n"
	ps, err := parseProc([]byte(stat), []byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if ps.CPUSeconds != 3.75 || ps.RSSBytes != 200<<20 || ps.Threads != 12 {
		t.Fatalf("parseProc = %+v, want 3.75 CPU seconds, 200 MiB, 12 threads", ps)
	}
	if _, err := parseProc([]byte("garbage"), nil); err == nil {
		t.Fatal("parseProc accepted a stat line without a command name")
	}
}

func TestReadProcSelf(t *testing.T) {
	ps, err := ReadProc(1)
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	if ps.RSSBytes < 0 {
		t.Fatalf("negative RSS %+v", ps)
	}
}

func TestMetricsSum(t *testing.T) {
	text := `# HELP edgesync_sessions Connected sessions.
# TYPE edgesync_sessions gauge
edgesync_sessions 42
# HELP edgesync_messages_sent_total Messages sent.
# TYPE edgesync_messages_sent_total counter
edgesync_messages_sent_total{kind="pod"} 10
edgesync_messages_sent_total{kind="config_map"} 5
# TYPE go_goroutines gauge
go_goroutines 99
# TYPE edgesync_delivery_seconds histogram
edgesync_delivery_seconds_bucket{le="0.1"} 3
edgesync_delivery_seconds_bucket{le="+Inf"} 4
edgesync_delivery_seconds_sum 0.5
edgesync_delivery_seconds_count 4
`
	m, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name  string
		match map[string]string
		want  float64
	}{
		{"edgesync_sessions", nil, 42},
		{"edgesync_messages_sent_total", nil, 15},
		{"edgesync_messages_sent_total", map[string]string{"kind": "pod"}, 10},
		{"edgesync_messages_sent_total", map[string]string{"kind": "secret"}, 0},
		{"go_goroutines", nil, 99},
		{"edgesync_delivery_seconds", nil, 4},
		{"missing", nil, 0},
	}
	for _, c := range checks {
		if got := m.Sum(c.name, c.match); got != c.want {
			t.Errorf("Sum(%s, %v) = %v, want %v", c.name, c.match, got, c.want)
		}
	}
	if !m.Has("go_goroutines") || m.Has("missing") {
		t.Error("Has is wrong")
	}
}

func TestMetricsHistogram(t *testing.T) {
	text := `# TYPE edgesync_lease_renewal_interval_seconds histogram
edgesync_lease_renewal_interval_seconds_bucket{le="10"} 5
edgesync_lease_renewal_interval_seconds_bucket{le="20"} 8
edgesync_lease_renewal_interval_seconds_bucket{le="+Inf"} 11
edgesync_lease_renewal_interval_seconds_sum 190
edgesync_lease_renewal_interval_seconds_count 11
`
	m, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	h := m.Histogram("edgesync_lease_renewal_interval_seconds")
	if h.Count != 11 || h.Sum != 190 || h.Above(20) != 3 || h.Above(10) != 6 {
		t.Errorf("histogram count %v sum %v above 20: %v above 10: %v; want 11, 190, 3, 6", h.Count, h.Sum, h.Above(20), h.Above(10))
	}
	if missing := m.Histogram("no_such_histogram"); missing.Count != 0 || missing.Above(20) != 0 {
		t.Errorf("missing histogram: %+v", missing)
	}
}
