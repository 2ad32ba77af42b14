package bench

import (
	"fmt"
	"image/color"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var colors = map[string]color.Color{
	Ewgate:   color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	EwgateGo: color.RGBA{R: 0x9e, G: 0xc5, B: 0xe0, A: 0xff},
	HAProxy:  color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	Nginx:    color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	Direct:   color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff},
}

func newPlot(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.Y.Label.Text = ylabel
	p.Y.Tick.Label.Font.Size = vg.Points(10)
	p.X.Tick.Label.Font.Size = vg.Points(11)
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	p.Legend.Top = true
	p.Legend.Left = false
	p.Y.Min = 0
	g := plotter.NewGrid()
	g.Vertical.Width = 0 // bars stand on nominal positions; vertical lines would cut through them
	p.Add(g)
	return p
}

// groupedBars draws one bar per target in each group; figs[i] is group i. A target missing
// from every group is left out. Bars carry their median; whiskers would hide in noise of a
// 2-core machine, the table has min and max.
func groupedBars(file, title, ylabel string, targets []string, groups []string, figs []Figure, legend map[string]string) error {
	p := newPlot(title, ylabel)
	var present []string
	for _, t := range targets {
		for _, f := range figs {
			if _, ok := f.Values[t]; ok {
				present = append(present, t)
				break
			}
		}
	}
	w := vg.Points(min(60, 480/float64(max(1, len(present)*len(groups)))))
	ymax := 0.0
	for i, t := range present {
		vals := make(plotter.Values, len(figs))
		for g, f := range figs {
			vals[g] = f.Values[t].Median
			ymax = math.Max(ymax, vals[g])
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		b.LineStyle.Width = 0
		b.Color = colors[t]
		b.Offset = vg.Length(float64(i)-float64(len(present)-1)/2) * w
		p.Add(b)
		name := labels[t]
		if legend != nil && legend[t] != "" {
			name = legend[t]
		}
		p.Legend.Add(name, b)
		// The value above each bar.
		var xy plotter.XYLabels
		for g := range figs {
			xy.XYs = append(xy.XYs, plotter.XY{X: float64(g), Y: vals[g]})
			xy.Labels = append(xy.Labels, short(vals[g]))
		}
		lb, err := plotter.NewLabels(xy)
		if err != nil {
			return err
		}
		for j := range lb.TextStyle {
			lb.TextStyle[j].Font.Size = vg.Points(8)
			lb.TextStyle[j].XAlign = draw.XCenter
			lb.Offset = vg.Point{X: b.Offset, Y: vg.Points(2)}
		}
		p.Add(lb)
	}
	p.Y.Max = ymax * 1.35 // room for the legend and the labels
	p.NominalX(groups...)
	return p.Save(9*vg.Inch, 4.5*vg.Inch, file)
}

func short(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// latencyChart draws each target's latency percentiles (all samples of all runs) on an
// HdrHistogram-style axis: 90% -> 1, 99% -> 2, 99.9% -> 3.
func latencyChart(file, title string, targets []string, curves map[string][]Point) error {
	p := newPlot(title, "µs from intended send time (log)")
	p.Y.Min = math.NaN()
	p.Y.Scale = plot.LogScale{}
	p.X.Label.Text = "percentile"
	p.Legend.Top = false // bottom right: the curves rise to the right
	lo, hi := math.Inf(1), 0.0
	for _, t := range targets {
		pts := curves[t]
		if len(pts) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(pts))
		for i, pt := range pts {
			xys[i] = plotter.XY{X: pctX(pt.Percentile), Y: math.Max(pt.Micros, 1)}
			lo, hi = math.Min(lo, xys[i].Y), math.Max(hi, xys[i].Y)
		}
		l, s, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, s.Color = colors[t], colors[t]
		l.Width = vg.Points(1.8)
		s.Radius = vg.Points(2.2)
		p.Add(l, s)
		p.Legend.Add(labels[t], l, s)
	}
	if hi == 0 {
		return nil
	}
	p.Y.Min, p.Y.Max = lo*0.8, hi*1.25
	var yt []plot.Tick
	for dec := 1.0; dec < 1e8; dec *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := m * dec; v >= p.Y.Min && v <= p.Y.Max {
				yt = append(yt, plot.Tick{Value: v, Label: fmt.Sprintf("%g", v)})
			}
		}
	}
	p.Y.Tick.Marker = plot.ConstantTicks(yt)
	var ticks []plot.Tick
	for _, q := range []struct {
		v float64
		l string
	}{{0, "0%"}, {50, "50%"}, {90, "90%"}, {99, "99%"}, {99.9, "99.9%"}, {99.99, "99.99%"}} {
		ticks = append(ticks, plot.Tick{Value: pctX(q.v), Label: q.l})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min = 0
	return p.Save(9*vg.Inch, 4.5*vg.Inch, file)
}

func pctX(p float64) float64 {
	if p >= 100 {
		p = 99.999
	}
	return -math.Log10(1 - p/100)
}
