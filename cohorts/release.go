package cohorts

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/differential-privacy/go/v3/dpagg"
	"github.com/google/differential-privacy/go/v3/noise"
	"github.com/nhs-hub/hub/governance"
)

// Alpha is 1 − the confidence level of every released interval (95%).
const Alpha = 0.05

// An Answer is what a query releases: noisy values only.
type Answer struct {
	Dataset     string    `json:"dataset"`
	Version     int       `json:"version"`
	QuerySHA256 string    `json:"query_sha256"`
	Epsilon     float64   `json:"epsilon_spent"`
	Delta       float64   `json:"delta_spent"`
	Released    time.Time `json:"released"`
	// Repeat is true when the answer is an earlier release of the same
	// query, returned at no cost.
	Repeat   bool     `json:"repeat"`
	Measures []Result `json:"measures"`
	// Codelists are the code lists the query used, with the hash of
	// their codes.
	Codelists []CodelistUse `json:"codelists,omitempty"`
	// Rules are the release rules the answer obeys.
	Rules *governance.ReleaseRules `json:"release_rules,omitempty"`
	// Unknowns are, with report_unknowns, the noisy counts of the
	// population's patients whose value of each attribute tested is
	// unknown.
	Unknowns []UnknownCount `json:"unknowns,omitempty"`
}

// An UnknownCount is how many patients of the population have no value
// of an attribute the criteria test (a noisy count, rounded as counts
// are, never suppressed: it says how much a criterion's unknown choice
// matters), and the criteria that test it.
type UnknownCount struct {
	Attribute string   `json:"attribute"`
	Criteria  []string `json:"criteria"`
	Epsilon   float64  `json:"epsilon"`
	Value     *float64 `json:"value"`
	CILow     *float64 `json:"ci_low"`
	CIHigh    *float64 `json:"ci_high"`
}

// releaseUnknowns releases the unknown counts, each for a measure's share
// of ε.
func releaseUnknowns(q *Query, counts []int64, granted *governance.ReleaseRules) ([]UnknownCount, error) {
	attrs, paths := q.unknownAttributes()
	eps, _ := split(q)
	rules := applied(q, granted)
	var out []UnknownCount
	for i, a := range attrs {
		v, lo, hi, err := noisyCount(counts[i], eps)
		if err != nil {
			return nil, err
		}
		u := UnknownCount{Attribute: a, Criteria: paths[a], Epsilon: eps}
		u.Value, u.CILow, u.CIHigh = roundCount(rules.RoundTo, float64(v), lo, hi)
		out = append(out, u)
	}
	return out, nil
}

// A Result is one released measure. Value and the 95% interval are null
// when Suppressed, and for breakdowns, whose values are in Cells.
type Result struct {
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
	// Cohort names the cohort of a query with several.
	Cohort     string     `json:"cohort,omitempty"`
	Epsilon    float64    `json:"epsilon"`
	Delta      float64    `json:"delta,omitempty"`
	Value      *float64   `json:"value"`
	CILow      *float64   `json:"ci_low"`
	CIHigh     *float64   `json:"ci_high"`
	Suppressed bool       `json:"suppressed"`
	By         []string   `json:"by,omitempty"`
	Cells      []Cell     `json:"cells,omitempty"`
	Quantiles  []Quantile `json:"quantiles,omitempty"`
	// PartitionsReleased is how many codes of a by_code breakdown passed
	// DP partition selection.
	PartitionsReleased *int `json:"partitions_released,omitempty"`
	// Intervals hold a rate, interval by interval.
	Intervals []RateInterval `json:"intervals,omitempty"`
}

// A Cell is one key of a breakdown.
type Cell struct {
	Key        map[string]string `json:"key"`
	Value      *float64          `json:"value"`
	CILow      *float64          `json:"ci_low"`
	CIHigh     *float64          `json:"ci_high"`
	Suppressed bool              `json:"suppressed"`
}

// A Quantile is one released rank.
type Quantile struct {
	Rank   float64 `json:"rank"`
	Value  float64 `json:"value"`
	CILow  float64 `json:"ci_low"`
	CIHigh float64 `json:"ci_high"`
}

// split is how a query's ε and δ are shared: ε equally among measures
// (sequential composition), δ equally among the by_code measures, the
// only ones that use it.
func split(q *Query) (eps, delta float64) {
	attrs, _ := q.unknownAttributes()
	eps = q.Epsilon / float64(len(q.Measures)+len(attrs))
	n := 0
	for _, m := range q.Measures {
		if m.ByCode != "" {
			n++
		}
	}
	if n > 0 {
		delta = q.Delta / float64(n)
	}
	return eps, delta
}

// release adds noise from the DP library to exact results. Every patient
// contributes at most once to a count or cell (the SQL counts patients,
// and a patient lies in one cell of a public breakdown), to at most
// max_partitions codes of a by_code breakdown, and one clamped value to a
// sum, mean or quantile.
func release(q *Query, xs []exact, granted *governance.ReleaseRules) (*Answer, error) {
	if len(q.Cohorts) > 0 {
		var a *Answer
		nm := len(q.Measures)
		for i, qc := range q.perCohort() {
			sub, err := release(qc, xs[i*nm:(i+1)*nm], granted)
			if err != nil {
				return nil, err
			}
			for j := range sub.Measures {
				sub.Measures[j].Cohort = q.Cohorts[i].Name
			}
			if a == nil {
				a = sub
			} else {
				a.Measures = append(a.Measures, sub.Measures...)
			}
		}
		return a, nil
	}
	eps, delta := split(q)
	rules := applied(q, granted)
	threshold := int64(rules.SuppressBelow)
	lap := noise.Laplace()
	a := &Answer{Dataset: q.Dataset, Released: time.Now().UTC(), Rules: rules}
	for i := range q.Measures {
		m, x := &q.Measures[i], &xs[i]
		r := Result{Kind: m.Kind, Name: m.Name, Epsilon: eps, By: m.By}
		switch {
		case m.Kind == KindCount && m.ByCode != "":
			r.Delta = delta
			l0 := int64(partitions(m))
			released := 0
			for _, c := range x.codes {
				cnt, err := dpagg.NewCount(&dpagg.CountOptions{Epsilon: eps, MaxPartitionsContributed: l0, Noise: lap})
				if err != nil {
					return nil, err
				}
				if err := cnt.IncrementBy(c.n); err != nil {
					return nil, err
				}
				v, err := cnt.ThresholdedResult(delta)
				if err != nil {
					return nil, err
				}
				if v == nil || *v < threshold {
					continue // not selected: the code is not even named
				}
				ci, err := cnt.ComputeConfidenceInterval(Alpha)
				if err != nil {
					return nil, err
				}
				released++
				cell := Cell{Key: map[string]string{"code_system": c.system, "code": c.code}}
				cell.Value, cell.CILow, cell.CIHigh = roundCount(rules.RoundTo, float64(*v), ci.LowerBound, ci.UpperBound)
				r.Cells = append(r.Cells, cell)
			}
			r.PartitionsReleased = &released
		case m.Kind == KindCount && len(m.By) > 0:
			for j, n := range x.cells {
				cell := Cell{Key: map[string]string{}}
				for k, key := range m.By {
					cell.Key[key] = x.cellKeys[j][k]
				}
				var err error
				if cell.Value, cell.CILow, cell.CIHigh, cell.Suppressed, err = releaseCount(rules.RoundTo, n, eps, threshold); err != nil {
					return nil, err
				}
				r.Cells = append(r.Cells, cell)
			}
		case m.Kind == KindCount:
			var err error
			if r.Value, r.CILow, r.CIHigh, r.Suppressed, err = releaseCount(rules.RoundTo, x.count, eps, threshold); err != nil {
				return nil, err
			}
		case m.Kind == KindSum, m.Kind == KindQuantiles:
			// Under a minimum cohort, half the measure's ε buys a noisy
			// count of the patients with a value, which decides.
			e := eps
			if rules.MinCohort > 0 {
				e = eps / 2
				n, _, _, err := noisyCount(x.n, e)
				if err != nil {
					return nil, err
				}
				if n < int64(rules.MinCohort) {
					r.Suppressed = true
					break
				}
			}
			if m.Kind == KindSum {
				v, lo, hi, err := noisySum(m, x, e)
				if err != nil {
					return nil, err
				}
				r.Value, r.CILow, r.CIHigh = &v, &lo, &hi
			} else {
				qs, err := noisyQuantiles(m, x, e)
				if err != nil {
					return nil, err
				}
				r.Quantiles = qs
			}
		case m.Kind == KindRate:
			var err error
			if r.Intervals, err = releaseRate(m, x, eps, rules); err != nil {
				return nil, err
			}
		case m.Kind == KindMean:
			v, lo, hi, n, err := noisyMean(*m.Lower, *m.Upper, x, eps)
			if err != nil {
				return nil, err
			}
			if n < max(threshold, int64(rules.MinCohort)) {
				r.Suppressed = true
			} else {
				r.Value, r.CILow, r.CIHigh = &v, &lo, &hi
			}
		}
		a.Measures = append(a.Measures, r)
	}
	return a, nil
}

// noisyCount releases a count of patients (sensitivity 1) with the DP
// library's integer Laplace (two-sided geometric) noise and its 95%
// interval; the value and bounds are clamped at 0 (post-processing).
func noisyCount(n int64, eps float64) (v int64, lo, hi float64, err error) {
	lap := noise.Laplace()
	v, err = lap.AddNoiseInt64(n, 1, 1, eps, 0)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("noise: %w", err)
	}
	ci, err := lap.ComputeConfidenceIntervalInt64(v, 1, 1, eps, 0, Alpha)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("interval: %w", err)
	}
	return max(v, 0), math.Max(ci.LowerBound, 0), math.Max(ci.UpperBound, 0), nil
}

// releaseCount releases a patient count or a public breakdown's cell:
// noise, then suppression below threshold (value and interval nil), else
// the optional rounding.
func releaseCount(roundTo int, n int64, eps float64, threshold int64) (v, lo, hi *float64, suppressed bool, err error) {
	nv, l, h, err := noisyCount(n, eps)
	if err != nil {
		return nil, nil, nil, false, err
	}
	if nv < threshold {
		return nil, nil, nil, true, nil
	}
	v, lo, hi = roundCount(roundTo, float64(nv), l, h)
	return v, lo, hi, false, nil
}

// A RateInterval is one interval of a rate, cell by cell.
type RateInterval struct {
	From  string     `json:"from"`
	To    string     `json:"to"`
	Cells []RateCell `json:"cells"`
}

// A RateCell is a rate's numerator and denominator (noisy counts, rounded
// as counts are) and their ratio with its 95% interval; all nil when
// suppressed.
type RateCell struct {
	Key         map[string]string `json:"key,omitempty"`
	Numerator   *float64          `json:"numerator"`
	Denominator *float64          `json:"denominator"`
	Value       *float64          `json:"value"`
	CILow       *float64          `json:"ci_low"`
	CIHigh      *float64          `json:"ci_high"`
	Suppressed  bool              `json:"suppressed"`
}

// releaseRate releases a rate: a patient is in one cell of every
// interval's denominator and numerator, so the measure's ε is split
// equally among the intervals (sequential composition) and each
// interval's half between its numerator and denominator; the cells of an
// interval are disjoint (parallel composition). A cell whose noisy
// numerator or denominator is under the suppression threshold is
// suppressed. The ratio's interval is meanInterval's, over the two counts'
// noise.
func releaseRate(m *Measure, x *exact, eps float64, rules *governance.ReleaseRules) ([]RateInterval, error) {
	e := eps / float64(len(x.rate)) / 2
	out := make([]RateInterval, 0, len(x.rate))
	for _, rp := range x.rate {
		iv := RateInterval{From: rp.from.Format(time.DateOnly), To: rp.to.Format(time.DateOnly)}
		dens, nums, keys := []int64{rp.den.count}, []int64{rp.num.count}, [][]string{nil}
		if len(m.By) > 0 {
			dens, nums, keys = rp.den.cells, rp.num.cells, rp.den.cellKeys
		}
		for j := range dens {
			cell := RateCell{}
			if keys[j] != nil {
				cell.Key = map[string]string{}
				for k, key := range m.By {
					cell.Key[key] = keys[j][k]
				}
			}
			dn, _, _, err := noisyCount(dens[j], e)
			if err != nil {
				return nil, err
			}
			nn, _, _, err := noisyCount(nums[j], e)
			if err != nil {
				return nil, err
			}
			if dn < int64(rules.SuppressBelow) || nn < int64(rules.SuppressBelow) {
				cell.Suppressed = true
				iv.Cells = append(iv.Cells, cell)
				continue
			}
			v := math.Min(float64(nn)/float64(dn), 1)
			lo, hi := meanInterval(float64(nn), dn, 1/e, 1/e)
			lo, hi = math.Max(lo, 0), math.Min(hi, 1)
			cell.Value, cell.CILow, cell.CIHigh = &v, &lo, &hi
			cell.Numerator, _, _ = roundCount(rules.RoundTo, float64(nn), 0, 0)
			cell.Denominator, _, _ = roundCount(rules.RoundTo, float64(dn), 0, 0)
			iv.Cells = append(iv.Cells, cell)
		}
		out = append(out, iv)
	}
	return out, nil
}

// roundCount rounds a released count to a multiple of to (1: none): the
// value to the nearest, the interval outwards.
func roundCount(to int, v, lo, hi float64) (*float64, *float64, *float64) {
	if to > 1 {
		t := float64(to)
		v = math.Round(v/t) * t
		lo = math.Floor(lo/t) * t
		hi = math.Ceil(hi/t) * t
	}
	return &v, &lo, &hi
}

// applied returns the release rules an answer obeys: the DAC's (granted;
// nil for a project approved before the DAC set them), tightened by the
// query's suppress_below and round_to, which can only tighten them.
// Without the DAC's, the rules of that time: suppression below 10, no
// rounding unless asked, no minimum cohort.
func applied(q *Query, granted *governance.ReleaseRules) *governance.ReleaseRules {
	r := governance.ReleaseRules{SuppressBelow: DefaultSuppress, RoundTo: 1}
	if granted != nil {
		r = *granted
	}
	r.SuppressBelow = max(r.SuppressBelow, q.SuppressBelow)
	r.RoundTo = max(r.RoundTo, q.RoundTo, 1)
	return &r
}

// integral reports whether a measure's values and bounds are integers, so
// that integer noise applies.
func integral(m *Measure) bool {
	return (m.Of.Kind == ValueAge || m.Of.Kind == ValueEvents) &&
		*m.Lower == math.Trunc(*m.Lower) && *m.Upper == math.Trunc(*m.Upper)
}

// noisySum releases a clamped sum; one patient changes it by at most
// max(|lower|, |upper|). The value and interval are clamped to the sums
// the bounds allow: none below 0 when lower >= 0 (a count of events is
// never negative), none above 0 when upper <= 0 (post-processing).
func noisySum(m *Measure, x *exact, eps float64) (v, lo, hi float64, err error) {
	lap := noise.Laplace()
	bound := math.Max(math.Abs(*m.Lower), math.Abs(*m.Upper))
	var ci noise.ConfidenceInterval
	if integral(m) {
		var n int64
		if n, err = lap.AddNoiseInt64(int64(math.Round(x.sum)), 1, int64(bound), eps, 0); err == nil {
			v = float64(n)
			ci, err = lap.ComputeConfidenceIntervalInt64(n, 1, int64(bound), eps, 0, Alpha)
		}
	} else if v, err = lap.AddNoiseFloat64(x.sum, 1, bound, eps, 0); err == nil {
		ci, err = lap.ComputeConfidenceIntervalFloat64(v, 1, bound, eps, 0, Alpha)
	}
	if err != nil {
		return 0, 0, 0, fmt.Errorf("noise: %w", err)
	}
	feasible := func(f float64) float64 {
		if *m.Lower >= 0 {
			f = math.Max(f, 0)
		}
		if *m.Upper <= 0 {
			f = math.Min(f, 0)
		}
		return f
	}
	return feasible(v), feasible(ci.LowerBound), feasible(ci.UpperBound), nil
}

// noisyMean releases a clamped mean as the DP library's BoundedMean does
// (Li et al., Algorithm 2.4): half the ε on a noisy count, half on a noisy
// sum of values centred on the bounds' midpoint, mean = midpoint + sum /
// max(count, 1), clamped. It also returns the noisy count, for
// suppression. Its 95% interval is meanInterval's.
func noisyMean(lower, upper float64, x *exact, eps float64) (v, lo, hi float64, count int64, err error) {
	lap := noise.Laplace()
	half := eps / 2
	mid, width := (lower+upper)/2, (upper-lower)/2
	if count, err = lap.AddNoiseInt64(x.n, 1, 1, half, 0); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("noise: %w", err)
	}
	s, err := lap.AddNoiseFloat64(x.sum-float64(x.n)*mid, 1, width, half, 0)
	if err != nil {
		return 0, 0, 0, 0, fmt.Errorf("noise: %w", err)
	}
	clamp := func(f float64) float64 { return math.Min(math.Max(f, lower), upper) }
	v = clamp(mid + s/math.Max(float64(count), 1))
	lo, hi = meanInterval(s, count, width/half, 1/half)
	return v, clamp(mid + lo), clamp(mid + hi), count, nil
}

// meanDraws is how many draws meanInterval takes: the 2.5% and 97.5%
// points of 4,000 draws move by about 1% of the interval's width.
const meanDraws = 4000

// meanInterval is a 95% interval for S/N, the exact centred sum over the
// exact count, from their noisy releases s = S + X and c = N + Y, where X
// and Y are Laplace noise of scales bs and bc: the 2.5% and 97.5% points
// of (s - X')/max(c - Y', 1) over fresh draws X', Y' of the same noise.
// The draws are post-processing of released values (seeded by them, so
// that an answer is reproducible) and cost no budget. Combining the sum's
// and the count's own 97.5% intervals at their corners, as before, covered
// the truth in 100% of 90 releases, about 1.7 times too wide.
func meanInterval(s float64, c int64, bs, bc float64) (lo, hi float64) {
	r := rand.New(rand.NewPCG(math.Float64bits(s), uint64(c)))
	lap := func(b float64) float64 { return b * (r.ExpFloat64() - r.ExpFloat64()) }
	draws := make([]float64, meanDraws)
	for i := range draws {
		draws[i] = (s - lap(bs)) / math.Max(float64(c)-lap(bc), 1)
	}
	slices.Sort(draws)
	return draws[int(math.Floor(Alpha/2*meanDraws))], draws[int(math.Ceil((1-Alpha/2)*meanDraws))-1]
}

// noisyQuantiles releases quantiles, each with its 95% interval, from
// one noisy quantile tree (quantileTree).
func noisyQuantiles(m *Measure, x *exact, eps float64) ([]Quantile, error) {
	t := newQuantileTree(*m.Lower, *m.Upper, eps, x.hist)
	out := make([]Quantile, len(m.Ranks))
	for i, r := range m.Ranks {
		v, lo, hi, err := t.quantile(r)
		if err != nil {
			return nil, err
		}
		out[i] = Quantile{Rank: r, Value: v, CILow: lo, CIHigh: hi}
	}
	return out, nil
}

// MeasureEpsilon is the ε each of the query's measures (and unknown
// counts) receives: what decides the noise of one released figure.
func (q *Query) MeasureEpsilon() float64 {
	e, _ := split(q)
	return e
}

// CountHalfWidth is the half-width of a count's 95% interval released
// with ε eps: what a researcher can expect before running a query.
func CountHalfWidth(eps float64) (float64, error) {
	ci, err := noise.Laplace().ComputeConfidenceIntervalInt64(0, 1, 1, eps, 0, Alpha)
	if err != nil {
		return 0, err
	}
	return float64(ci.UpperBound), nil
}
