package cohorts

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/catalog"
)

// The oracle evaluates a query's criteria patient by patient in Go, on
// rows read straight from the published Parquet, with SQL's three-valued
// logic for missing values. It is the ground truth the compiler's SQL is
// checked against.

type tri int

const (
	fls tri = iota
	tru
	unk
)

type oPatient struct {
	row    map[string]any
	events map[string][]map[string]any
}

type oracle struct {
	q        *Query
	patients []*oPatient
	ids      map[string]*Event
	tables   map[*Event]string
}

func newOracle(t *testing.T, l *catalog.Lake, q *Query) *oracle {
	m, err := l.Manifest(t.Context(), q.Dataset, q.Version)
	if err != nil {
		t.Fatal(err)
	}
	o := &oracle{q: q, ids: map[string]*Event{}, tables: map[*Event]string{}}
	byID := map[string]*oPatient{}
	for _, r := range tableRows(t, l, m, "patients") {
		p := &oPatient{row: r, events: map[string][]map[string]any{}}
		byID[r["patient_id"].(string)] = p
		o.patients = append(o.patients, p)
	}
	dateCol := map[string]string{"conditions": "onset_date", "medications": "start_date", "observations": "effective_date", "encounters": "start_date"}
	for table, col := range dateCol {
		for _, r := range tableRows(t, l, m, table) {
			r["event_date"] = r[col]
			p := byID[r["patient_id"].(string)]
			p.events[table] = append(p.events[table], r)
		}
	}
	var walk func(c *Criterion)
	walk = func(c *Criterion) {
		if c == nil {
			return
		}
		for _, k := range append(append([]*Criterion{}, c.All...), c.Any...) {
			walk(k)
		}
		walk(c.Not)
		for table, e := range map[string]*Event{"conditions": c.Condition, "medications": c.Medication, "observations": c.Observation, "encounters": c.Encounter} {
			if e != nil {
				o.tables[e] = table
				if e.ID != "" {
					o.ids[e.ID] = e
				}
			}
		}
	}
	walk(q.Criteria)
	return o
}

func (o *oracle) matches(table string, codes *Codes, types []string, unit string, value *Range, r map[string]any) bool {
	if codes != nil {
		sys, code := r["code_system"].(string), r["code"].(string)
		ok := sys == "snomed" && slices.Contains(codes.SNOMED, code) || sys == "dmd" && slices.Contains(codes.DMD, code)
		for _, p := range codes.ICD10 {
			ok = ok || sys == "icd10" && strings.HasPrefix(code, p)
		}
		if !ok {
			return false
		}
	}
	if len(types) > 0 && !slices.Contains(types, r["type"].(string)) {
		return false
	}
	if unit != "" && r["unit"] != unit {
		return false
	}
	if value != nil {
		v, ok := r["value"].(float64)
		if !ok || value.Min != nil && v < *value.Min || value.Max != nil && v > *value.Max {
			return false
		}
	}
	return true
}

// inWindow reports whether an event date lies in a window for patient p.
func (o *oracle) inWindow(w *Window, p *oPatient, d time.Time) bool {
	if w == nil {
		return true
	}
	before, after := 0, 0
	if w.DaysBefore != nil {
		before = *w.DaysBefore
	}
	if w.DaysAfter != nil {
		after = *w.DaysAfter
	}
	var lo, hi time.Time
	switch w.RelativeTo {
	case "":
		lo, hi = time.Time{}, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
		if w.From != "" {
			lo, _ = parseDate(w.From)
		}
		if w.To != "" {
			hi, _ = parseDate(w.To)
		}
	case "index":
		idx, _ := parseDate(o.q.IndexDate)
		lo, hi = idx.AddDate(0, 0, -before), idx.AddDate(0, 0, after)
	default:
		first, ok := o.first(o.ids[w.RelativeTo], p)
		if !ok {
			return false
		}
		lo, hi = first.AddDate(0, 0, -before), first.AddDate(0, 0, after)
	}
	return !d.Before(lo) && !d.After(hi)
}

// first is the first matching date of an event criterion the patient meets.
func (o *oracle) first(e *Event, p *oPatient) (time.Time, bool) {
	var first time.Time
	n := 0
	for _, r := range p.events[o.tables[e]] {
		d := r["event_date"].(time.Time)
		if o.matches(o.tables[e], e.Codes, e.Types, e.Unit, e.Value, r) && o.inWindow(e.Window, p, d) {
			if n == 0 || d.Before(first) {
				first = d
			}
			n++
		}
	}
	return first, n >= max(e.MinCount, 1)
}

func (o *oracle) birthMI(p *oPatient) (int, bool) {
	y, ok := p.row["year_of_birth"].(int64)
	if !ok {
		return 0, false
	}
	m := int64(7)
	if v, ok := p.row["month_of_birth"].(int64); ok {
		m = v
	}
	return int(y*12 + m - 1), true
}

func (o *oracle) eval(c *Criterion, p *oPatient) tri {
	in := func(col string, vals []string) tri {
		v, ok := p.row[col].(string)
		if !ok {
			return unk
		}
		if slices.Contains(vals, v) {
			return tru
		}
		return fls
	}
	switch {
	case c.All != nil:
		out := tru
		for _, k := range c.All {
			switch o.eval(k, p) {
			case fls:
				return fls
			case unk:
				out = unk
			}
		}
		return out
	case c.Any != nil:
		out := fls
		for _, k := range c.Any {
			switch o.eval(k, p) {
			case tru:
				return tru
			case unk:
				out = unk
			}
		}
		return out
	case c.Not != nil:
		return [...]tri{tru, fls, unk}[o.eval(c.Not, p)]
	case c.Age != nil:
		bmi, ok := o.birthMI(p)
		if !ok {
			return unk
		}
		idx, _ := parseDate(o.q.IndexDate)
		age := (idx.Year()*12 + int(idx.Month()) - 1 - bmi) / 12
		if c.Age.Min != nil && float64(age) < *c.Age.Min || c.Age.Max != nil && float64(age) > *c.Age.Max {
			return fls
		}
		return tru
	case c.Sex != nil:
		return in("sex", c.Sex)
	case c.Region != nil:
		return in("postcode_area", c.Region)
	case c.District != nil:
		return in("district", c.District)
	case c.EthnicityGroup != nil:
		return in("ethnicity_group", c.EthnicityGroup)
	case c.AliveAt != "":
		d := c.AliveAt
		if d == "index" {
			d = o.q.IndexDate
		}
		at, _ := parseDate(d)
		death, ok := p.row["death_month"].(time.Time)
		if !ok || death.After(at) {
			return tru
		}
		return fls
	default:
		if _, ok := o.first(firstNonNil(c.Condition, c.Medication, c.Observation, c.Encounter), p); ok {
			return tru
		}
		return fls
	}
}

// cohort returns the patients the criteria select.
func (o *oracle) cohort() []*oPatient {
	var out []*oPatient
	for _, p := range o.patients {
		if o.q.Criteria == nil || o.eval(o.q.Criteria, p) == tru {
			out = append(out, p)
		}
	}
	return out
}

// ageBandOf is a patient's age band at the index date, or Unknown.
func (o *oracle) ageBandOf(p *oPatient) string {
	bmi, ok := o.birthMI(p)
	if !ok {
		return Unknown
	}
	idx, _ := parseDate(o.q.IndexDate)
	return ageBand((idx.Year()*12 + int(idx.Month()) - 1 - bmi) / 12)
}

func mustParse(t *testing.T, s string) *Query {
	t.Helper()
	q, err := ParseQuery(strings.NewReader(s))
	if err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return q
}

// groundTruthQueries exercise every criterion of the language.
var groundTruthQueries = map[string]string{
	"everyone": `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5}`,
	"issue example": `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"all": [
		{"sex": ["female"]}, {"age": {"min": 40, "max": 80}},
		{"condition": {"codes": {"snomed": ["44054006"], "icd10": ["E11"]}}},
		{"observation": {"codes": {"snomed": ["999791000000106"]}, "value": {"min": 48.0001}, "unit": "mmol/mol",
		 "window": {"from": "2023-01-01", "to": "2023-12-31"}}}]},
		"measures": [{"kind": "count", "by": ["age_band"]}], "epsilon": 1}`,
	"any not min_count": `{"dataset": "gp", "criteria": {"all": [
		{"any": [{"condition": {"codes": {"icd10": ["I10"]}}}, {"medication": {"codes": {"dmd": ["318824000"]}, "min_count": 2}}]},
		{"not": {"ethnicity_group": ["White"]}}]},
		"measures": [{"kind": "count"}], "epsilon": 1}`,
	"relative windows": `{"dataset": "gp", "index_date": "2024-06-30", "criteria": {"all": [
		{"condition": {"id": "t2d", "codes": {"snomed": ["44054006"]}}},
		{"observation": {"codes": {"snomed": ["999791000000106"]}, "window": {"relative_to": "t2d", "days_before": 365, "days_after": 90}}},
		{"encounter": {"types": ["gp", "outpatient"], "min_count": 3, "window": {"relative_to": "index", "days_before": 730}}},
		{"alive_at": "index"}]},
		"measures": [{"kind": "count", "by": ["sex", "region"]}], "epsilon": 1}`,
	"not age unknown": `{"dataset": "gp", "index_date": "2020-03-15", "criteria": {"not": {"age": {"max": 17}}},
		"measures": [{"kind": "count", "by": ["age_band", "ethnicity_group"]}], "epsilon": 1}`,
}

// exactOf compiles q and runs it on the engine's exact path.
func exactOf(t *testing.T, s *Service, q *Query) []exact {
	t.Helper()
	eng, err := s.Engine(t.Context(), q.Dataset, q.Version)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Compile(q, 1)
	if err != nil {
		t.Fatal(err)
	}
	xs, err := eng.exact(t.Context(), plan)
	if err != nil {
		t.Fatal(err)
	}
	return xs
}

// TestGroundTruth checks, with the noise switched off (the engine's exact
// path, which no API reaches), that the compiled SQL selects exactly the
// patients the oracle selects, cell by cell.
func TestGroundTruth(t *testing.T) {
	s := newService(t)
	for name, text := range groundTruthQueries {
		t.Run(name, func(t *testing.T) {
			q := mustParse(t, text)
			xs := exactOf(t, s, q)
			o := newOracle(t, lake(t), q)
			cohort := o.cohort()
			if len(cohort) == 0 || len(cohort) == len(o.patients) && q.Criteria != nil {
				t.Fatalf("oracle selects %d of %d patients: the query tests nothing", len(cohort), len(o.patients))
			}
			t.Logf("cohort: %d of %d patients", len(cohort), len(o.patients))
			m := q.Measures[0]
			if len(m.By) == 0 {
				if got, want := xs[0].count, int64(len(cohort)); got != want {
					t.Fatalf("count = %d, want %d", got, want)
				}
				return
			}
			want := map[string]int64{}
			for _, p := range cohort {
				var key []string
				for _, k := range m.By {
					switch k {
					case "age_band":
						key = append(key, o.ageBandOf(p))
					case "sex":
						key = append(key, orUnknown(p.row["sex"], Sexes[:3]))
					case "region":
						key = append(key, orUnknown(p.row["postcode_area"], PostcodeAreas))
					case "ethnicity_group":
						key = append(key, orUnknown(p.row["ethnicity_group"], EthnicityGroups))
					}
				}
				want[strings.Join(key, "|")]++
			}
			var total int64
			for i, k := range xs[0].cellKeys {
				got := xs[0].cells[i]
				total += got
				if w := want[strings.Join(k, "|")]; got != w {
					t.Errorf("cell %v = %d, want %d", k, got, w)
				}
			}
			if total != int64(len(cohort)) {
				t.Errorf("cells add to %d, cohort has %d", total, len(cohort))
			}
		})
	}
}

func orUnknown(v any, domain []string) string {
	if s, ok := v.(string); ok && slices.Contains(domain, s) {
		return s
	}
	return Unknown
}

// TestGroundTruthValues checks exact sums, means and histograms of values
// against the oracle.
func TestGroundTruthValues(t *testing.T) {
	s := newService(t)
	q := mustParse(t, `{"dataset": "gp", "index_date": "2024-01-01",
		"criteria": {"condition": {"codes": {"snomed": ["44054006"]}}},
		"measures": [
		  {"kind": "mean", "of": {"kind": "age"}},
		  {"kind": "sum", "of": {"kind": "events", "table": "encounters", "types": ["gp"], "window": {"from": "2023-01-01", "to": "2023-12-31"}}, "lower": 0, "upper": 10},
		  {"kind": "quantiles", "of": {"kind": "observation", "codes": {"snomed": ["999791000000106"]}, "pick": "max"}, "lower": 20, "upper": 120, "ranks": [0.5]}],
		"epsilon": 1}`)
	xs := exactOf(t, s, q)
	o := newOracle(t, lake(t), q)
	var ages, visits float64
	var nAge int64
	var maxes []float64
	gp := &Value{Kind: ValueEvents, Table: "encounters", Types: []string{"gp"}, Window: &Window{From: "2023-01-01", To: "2023-12-31"}}
	for _, p := range o.cohort() {
		if bmi, ok := o.birthMI(p); ok {
			ages += math.Min(float64((2024*12-bmi)/12), 110)
			nAge++
		}
		n := 0.0
		for _, r := range p.events["encounters"] {
			if o.matches("encounters", nil, gp.Types, "", nil, r) && o.inWindow(gp.Window, p, r["event_date"].(time.Time)) {
				n++
			}
		}
		visits += math.Min(n, 10)
		best, have := 0.0, false
		for _, r := range p.events["observations"] {
			if v, ok := r["value"].(float64); ok && r["code"] == "999791000000106" && (!have || v > best) {
				best, have = v, true
			}
		}
		if have {
			maxes = append(maxes, math.Min(math.Max(best, 20), 120))
		}
	}
	if xs[0].n != nAge || math.Abs(xs[0].sum-ages) > 1e-6 {
		t.Errorf("age: n=%d sum=%g, want n=%d sum=%g", xs[0].n, xs[0].sum, nAge, ages)
	}
	if math.Abs(xs[1].sum-visits) > 1e-6 || xs[1].n != int64(len(o.cohort())) {
		t.Errorf("gp visits: n=%d sum=%g, want n=%d sum=%g", xs[1].n, xs[1].sum, len(o.cohort()), visits)
	}
	if xs[2].n != int64(len(maxes)) || len(maxes) == 0 {
		t.Errorf("hba1c max: %d values, want %d", xs[2].n, len(maxes))
	}
	var hsum, osum float64
	for _, h := range xs[2].hist {
		hsum += h.v * float64(h.n)
	}
	for _, v := range maxes {
		osum += v
	}
	if math.Abs(hsum-osum) > 1e-6 {
		t.Errorf("hba1c max: histogram sums to %g, want %g", hsum, osum)
	}

}
