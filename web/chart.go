package web

import (
	"fmt"
	"html/template"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
)

// A row is one released figure as the table and the CSV show it.
type row struct {
	Label, Value, Low, High string
	Suppressed              bool
	v, lo, hi               float64
}

func num(p *float64) (string, float64) {
	if p == nil {
		return "", math.NaN()
	}
	return strconv.FormatFloat(*p, 'f', -1, 64), *p
}

func figure(label string, v, lo, hi *float64, suppressed bool) row {
	r := row{Label: label, Suppressed: suppressed}
	r.Value, r.v = num(v)
	r.Low, r.lo = num(lo)
	r.High, r.hi = num(hi)
	return r
}

// rowsOf is a measure's released figures: its value, each cell, each
// quantile or each interval of a rate.
func rowsOf(m cohorts.Result) []row {
	var out []row
	switch {
	case len(m.Cells) > 0:
		for _, c := range m.Cells {
			out = append(out, figure(keyLabel(m.By, c.Key), c.Value, c.CILow, c.CIHigh, c.Suppressed))
		}
	case len(m.Quantiles) > 0:
		for _, q := range m.Quantiles {
			q := q
			out = append(out, figure(fmt.Sprintf("rank %g", q.Rank), &q.Value, &q.CILow, &q.CIHigh, false))
		}
	case len(m.Intervals) > 0:
		for _, iv := range m.Intervals {
			for _, c := range iv.Cells {
				label := iv.From + " to " + iv.To
				if k := keyLabel(m.By, c.Key); k != "" {
					label += ": " + k
				}
				out = append(out, figure(label, c.Value, c.CILow, c.CIHigh, c.Suppressed))
			}
		}
	default:
		out = append(out, figure(m.Kind, m.Value, m.CILow, m.CIHigh, m.Suppressed))
	}
	return out
}

// keyLabel is a cell's key, in the breakdown's order (by_code cells,
// with no By, in the key's sorted order).
func keyLabel(by []string, key map[string]string) string {
	if len(by) == 0 {
		by = slices.Sorted(maps.Keys(key))
	}
	parts := make([]string, len(by))
	for i, k := range by {
		parts[i] = key[k]
	}
	return strings.Join(parts, ", ")
}

// A chart is an SVG bar chart of a measure's figures with their 95%
// intervals drawn; a suppressed figure has no bar (never a zero) and is
// marked "suppressed".
type chart struct {
	Title         string
	Rows          []row
	Width, Height int
	Bars          []bar
	Ticks         []tick
	Axis          int // the x of the value axis
}

type bar struct {
	Y, H                 int     // the row's band
	X, W                 float64 // the bar
	CILo, CIHi, CIMid    float64 // the interval's ends and the band's middle
	Label, Value         string
	Suppressed, HasCI    bool
	LabelX, TextX, TextY int
}

type tick struct {
	X     float64
	Label string
}

const (
	chartLeft  = 200
	chartRight = 80
	chartWidth = 720
	rowHeight  = 28
)

func chartOf(m cohorts.Result) chart {
	c := chart{Title: m.Name, Rows: rowsOf(m), Width: chartWidth, Axis: chartLeft}
	if c.Title == "" {
		c.Title = m.Kind
	}
	if m.Cohort != "" {
		c.Title = m.Cohort + ": " + c.Title
	}
	top := 0.0
	for _, r := range c.Rows {
		for _, x := range []float64{r.v, r.hi} {
			if !math.IsNaN(x) {
				top = math.Max(top, x)
			}
		}
	}
	if top <= 0 {
		top = 1
	}
	top = niceCeil(top)
	scale := float64(chartWidth-chartLeft-chartRight) / top
	for i, r := range c.Rows {
		y := 24 + i*rowHeight
		b := bar{Y: y, H: rowHeight - 8, Label: r.Label, Value: r.Value, Suppressed: r.Suppressed, LabelX: chartLeft - 8, TextY: y + (rowHeight-8)/2 + 5,
			CIMid: float64(y) + float64(rowHeight-8)/2}
		if !r.Suppressed && !math.IsNaN(r.v) {
			b.X, b.W = chartLeft, math.Max(r.v, 0)*scale
			b.TextX = chartLeft + int(b.W) + 6
			if !math.IsNaN(r.lo) && !math.IsNaN(r.hi) {
				b.HasCI = true
				b.CILo, b.CIHi = chartLeft+math.Max(r.lo, 0)*scale, chartLeft+r.hi*scale
				b.TextX = int(math.Max(float64(b.TextX), b.CIHi+6))
			}
		} else {
			b.TextX = chartLeft + 6
		}
		c.Bars = append(c.Bars, b)
	}
	c.Height = 24 + len(c.Rows)*rowHeight + 28
	for i := 0; i <= 4; i++ {
		v := top * float64(i) / 4
		c.Ticks = append(c.Ticks, tick{X: chartLeft + v*scale, Label: strconv.FormatFloat(v, 'f', -1, 64)})
	}
	return c
}

// niceCeil rounds x up to 1, 2 or 5 times a power of ten.
func niceCeil(x float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

var funcs = template.FuncMap{
	"eps":   func(u int64) string { return strconv.FormatFloat(float64(u)*governance.EpsilonUnit, 'f', -1, 64) },
	"float": func(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) },
	"round": func(x float64) string { return strconv.FormatFloat(math.Round(x*10)/10, 'f', -1, 64) },
	"date": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.Format("2 January 2006")
	},
	"datetime": func(t time.Time) string { return t.Format("2 Jan 2006 15:04 MST") },
	"join":     strings.Join,
	"has":      func(p *governance.Principal, r string) bool { return p != nil && p.Has(governance.Role(r)) },
	"contains": slices.Contains[[]string],
	"errorFor": func(errs []fieldError, field string) string {
		for _, e := range errs {
			if e.Field == field {
				return e.Message
			}
		}
		return ""
	},
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12]
		}
		return s
	},
	"state": func(s governance.State) string { return strings.ReplaceAll(string(s), "_", " ") },
	"add":   func(a, b int) int { return a + b },
	"deref": func(p *float64) float64 { return *p },
	"list":  func(xs ...string) []string { return xs },
	"dict": func(kv ...any) map[string]any {
		m := map[string]any{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	},
	"navItem": func(v *view, key, href, text string) any {
		return struct {
			Current    bool
			Href, Text string
		}{v.Nav == key, href, text}
	},
}
