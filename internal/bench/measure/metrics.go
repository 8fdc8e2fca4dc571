package measure

import (
	"context"
	"fmt"
	"io"
	"net/http"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a Prometheus text-format /metrics page.
type Metrics map[string]*dto.MetricFamily

// Scrape fetches and parses url.
func Scrape(ctx context.Context, client *http.Client, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics parses the Prometheus text exposition format.
func ParseMetrics(r io.Reader) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return Metrics(fams), nil
}

// Has reports whether the family name was scraped.
func (m Metrics) Has(name string) bool {
	_, ok := m[name]
	return ok
}

// Sum adds the values of every series of family name whose labels include
// all of match (counters, gauges and untyped; for histograms and summaries
// the sample count). It returns 0 for a missing family.
func (m Metrics) Sum(name string, match map[string]string) float64 {
	fam, ok := m[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, s := range fam.GetMetric() {
		if !labelsMatch(s.GetLabel(), match) {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.GetCounter().GetValue()
		case s.Gauge != nil:
			sum += s.GetGauge().GetValue()
		case s.Untyped != nil:
			sum += s.GetUntyped().GetValue()
		case s.Histogram != nil:
			sum += float64(s.GetHistogram().GetSampleCount())
		case s.Summary != nil:
			sum += float64(s.GetSummary().GetSampleCount())
		}
	}
	return sum
}

// Histogram is a histogram family's samples, merged over its series.
type Histogram struct {
	Count, Sum float64
	// Cumulative counts samples at or below each upper bound.
	Cumulative map[float64]float64
}

// Histogram returns family name's samples; zero for a missing family.
func (m Metrics) Histogram(name string) Histogram {
	h := Histogram{Cumulative: map[float64]float64{}}
	fam, ok := m[name]
	if !ok {
		return h
	}
	for _, s := range fam.GetMetric() {
		hist := s.GetHistogram()
		if hist == nil {
			continue
		}
		h.Count += float64(hist.GetSampleCount())
		h.Sum += hist.GetSampleSum()
		for _, b := range hist.GetBucket() {
			h.Cumulative[b.GetUpperBound()] += float64(b.GetCumulativeCount())
		}
	}
	return h
}

// Above counts the samples above bound, which must be one of the
// histogram's bucket bounds (or there are no samples).
func (h Histogram) Above(bound float64) float64 {
	return h.Count - h.Cumulative[bound]
}

func labelsMatch(labels []*dto.LabelPair, match map[string]string) bool {
	for k, v := range match {
		found := false
		for _, l := range labels {
			if l.GetName() == k && l.GetValue() == v {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
