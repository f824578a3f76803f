package main

import (
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotLatency draws p99 and p50 delivery latency against the delivered
// rate, one pair of lines per server, as a PNG.
func plotLatency(fan []fanoutResult, file string) error {
	p := plot.New()
	p.Title.Text = "Fan-out: delivery latency against delivered rate"
	p.X.Label.Text = "deliveries per second"
	p.Y.Label.Text = "latency, publish to client read (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top, p.Legend.Left = true, true
	// One color per server; p99 solid, p50 dashed.
	for i, f := range fan {
		p99, p50 := make(plotter.XYs, 0, len(f.Steps)), make(plotter.XYs, 0, len(f.Steps))
		for _, s := range f.Steps {
			if s.DeliveriesPerSec <= 0 {
				continue
			}
			// A log axis cannot show 0; sub-0.1 ms does not happen here.
			p99 = append(p99, plotter.XY{X: s.DeliveriesPerSec, Y: max(s.P99, 0.1)})
			p50 = append(p50, plotter.XY{X: s.DeliveriesPerSec, Y: max(s.P50, 0.1)})
		}
		for _, l := range []struct {
			name   string
			xys    plotter.XYs
			dashed bool
		}{{f.Server + " p99", p99, false}, {f.Server + " p50", p50, true}} {
			line, points, err := plotter.NewLinePoints(l.xys)
			if err != nil {
				return err
			}
			line.Color, points.Color, points.Shape = plotutil.Color(i), plotutil.Color(i), plotutil.Shape(i)
			line.Width = vg.Points(1.5)
			if l.dashed {
				line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
			}
			p.Add(line, points)
			p.Legend.Add(l.name, line, points)
		}
	}
	limit, err := plotter.NewLine(plotter.XYs{{X: p.X.Min, Y: 100}, {X: p.X.Max, Y: 100}})
	if err != nil {
		return err
	}
	limit.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
	p.Add(limit)
	p.Legend.Add("p99 limit for sustained (100 ms)", limit)
	if err := p.Save(9*vg.Inch, 5.5*vg.Inch, file); err != nil {
		return fmt.Errorf("saving %s: %w", file, err)
	}
	return nil
}
