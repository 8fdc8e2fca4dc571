package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plots writes a PNG for each scenario that has figures to draw.
func (b *bench) plots() error {
	r := b.result
	var errs []error
	if f := r.Fanout; f.Done && len(f.Samples) > 0 {
		errs = append(errs, b.latencyPlot(f.Samples, "fanout-latency.png",
			fmt.Sprintf("Fan-out, server only: %d nodes × %d updates (p50 %.1f, p99 %.1f ms)", f.Nodes, f.Updates, f.Latency.P50Ms, f.Latency.P99Ms),
			"publish → edge holds the new version (ms)"))
	}
	if k := r.Kube; k.FanoutDone && len(k.Samples) > 0 {
		errs = append(errs, b.latencyPlot(k.Samples, "fanout-latency-apiserver.png",
			fmt.Sprintf("Fan-out via apiserver: %d nodes × %d updates (p50 %.1f, p99 %.1f ms)", k.FanoutNodes, k.Updates, k.Latency.P50Ms, k.Latency.P99Ms),
			"ConfigMap PATCH sent → edge holds the new version (ms)"))
	}
	if r.Density.Done && len(r.Density.Ramp) > 1 {
		errs = append(errs, b.memoryPlot())
	}
	if r.Encode.Done {
		errs = append(errs, b.encodePlot())
	}
	if r.Throughput.Done {
		errs = append(errs, b.throughputPlot())
	}
	return errors.Join(errs...)
}

func (b *bench) save(p *plot.Plot, name string) error {
	if err := p.Save(16*vg.Centimeter, 10*vg.Centimeter, filepath.Join(b.out, name)); err != nil {
		return fmt.Errorf("plot %s: %w", name, err)
	}
	return nil
}

func (b *bench) latencyPlot(samples []time.Duration, file, title, xlabel string) error {
	vals := make(plotter.Values, len(samples))
	for i, s := range samples {
		vals[i] = float64(s) / float64(time.Millisecond)
	}
	h, err := plotter.NewHist(vals, 40)
	if err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = "deliveries"
	p.Add(h)
	return b.save(p, file)
}

func (b *bench) memoryPlot() error {
	d := b.result.Density
	rss := make(plotter.XYs, 0, len(d.Ramp))
	per := make(plotter.XYs, 0, len(d.Ramp))
	for _, pt := range d.Ramp {
		rss = append(rss, plotter.XY{X: float64(pt.Sessions), Y: float64(pt.RSSBytes) / mib})
		if pt.Sessions >= 100 {
			per = append(per, plotter.XY{X: float64(pt.Sessions), Y: float64(pt.RSSBytes-d.BaseRSSBytes) / float64(pt.Sessions) / kib})
		}
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Server memory while %d sessions connect", d.Sessions)
	p.X.Label.Text = "connected sessions"
	p.Y.Label.Text = "server RSS (MiB) / RSS above idle per session (KiB)"
	p.Legend.Top = true
	p.Legend.Left = true
	if err := plotutil.AddLinePoints(p, "RSS MiB", rss, "KiB per session", per); err != nil {
		return err
	}
	return b.save(p, "density-memory.png")
}

func (b *bench) encodePlot() error {
	pts := make(plotter.XYs, 0, len(b.result.Encode.Points))
	for _, e := range b.result.Encode.Points {
		pts = append(pts, plotter.XY{X: float64(e.Recipients), Y: e.MicrosPerMsg})
	}
	p := plot.New()
	p.Title.Text = "Encode once: server CPU per delivered message"
	p.X.Label.Text = "recipients of each object version"
	p.Y.Label.Text = "server CPU µs per delivered message"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min = 0
	if err := plotutil.AddLinePoints(p, "edgesync", pts); err != nil {
		return err
	}
	return b.save(p, "encode-once.png")
}

func (b *bench) throughputPlot() error {
	t := b.result.Throughput
	bars, err := plotter.NewBarChart(plotter.Values{t.EdgesyncPerSecond, t.NodeMajorPerSecond, t.RawPerSecond}, vg.Points(60))
	if err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Delivered + acknowledged messages/s, %d sessions", t.Sessions)
	p.Y.Label.Text = "messages per second"
	p.Add(bars)
	p.NominalX("edgesync object-major", "edgesync node-major", "raw grpc-go")
	return b.save(p, "throughput.png")
}
