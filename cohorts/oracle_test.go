package cohorts

import (
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/catalog"
)

// The oracle evaluates a query's population and criteria patient by
// patient in Go, on rows read straight from the published Parquet. It is
// the ground truth the compiler's SQL is checked against. Attribute tests
// are two-valued (an unknown value matches as the criterion's unknown
// says); groups keep three-valued logic, which only they could meet.

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
	// interval, when set, is the interval a rate's windows relative to
	// "interval" take.
	interval [2]time.Time
	q        *Query
	refMI    int // the version's reference month, which age bands are at
	patients []*oPatient
	ids      map[string]*Event
	tables   map[*Event]string
}

func newOracle(t *testing.T, l *catalog.Lake, q *Query) *oracle {
	m, err := l.Manifest(t.Context(), q.Dataset, q.Version)
	if err != nil {
		t.Fatal(err)
	}
	o := &oracle{q: q, ids: map[string]*Event{}, tables: map[*Event]string{}, refMI: ReferenceMonth(m)}
	byID := map[string]*oPatient{}
	for _, r := range tableRows(t, l, m, "patients") {
		p := &oPatient{row: r, events: map[string][]map[string]any{}}
		byID[r["patient_id"].(string)] = p
		o.patients = append(o.patients, p)
	}
	dateCol := map[string]string{"conditions": "onset_date", "medications": "start_date", "observations": "effective_date", "encounters": "start_date",
		"procedures": "performed_date", "immunizations": "occurrence_date", "registrations": "start_date"}
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
		for table, e := range map[string]*Event{"conditions": c.Condition, "medications": c.Medication, "observations": c.Observation, "encounters": c.Encounter,
			"procedures": c.Procedure, "immunizations": c.Immunisation} {
			if e != nil {
				o.tables[e] = table
				if e.ID != "" {
					o.ids[e.ID] = e
				}
			}
		}
	}
	walk(q.Criteria)
	for _, c := range q.Cohorts {
		walk(c.Criteria)
	}
	for i := range q.Measures {
		walk(q.Measures[i].Denominator)
		walk(q.Measures[i].Numerator)
	}
	return o
}

func (o *oracle) matches(table string, codes *Codes, types []string, unit string, value *Range, r map[string]any) bool {
	if codes != nil {
		sys, code := r["code_system"].(string), r["code"].(string)
		snomed, icd10, dmd := codes.all()
		ok := sys == "snomed" && slices.Contains(snomed, code) || sys == "dmd" && slices.Contains(dmd, code)
		for _, p := range icd10 {
			ok = ok || sys == "icd10" && strings.HasPrefix(strings.ReplaceAll(code, ".", ""), strings.ReplaceAll(p, ".", ""))
		}
		for _, p := range codes.OPCS4 {
			ok = ok || sys == "opcs4" && strings.HasPrefix(strings.ReplaceAll(code, ".", ""), strings.ReplaceAll(p, ".", ""))
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
	lo, hi, ok := o.bounds(w, p)
	return ok && !d.Before(lo) && !d.After(hi)
}

// bounds are a window's first and last days for patient p; ok is false
// when its anchor event is missing.
func (o *oracle) bounds(w *Window, p *oPatient) (lo, hi time.Time, ok bool) {
	var anchor time.Time // the date the window is relative to
	if w == nil {
		return time.Time{}, time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), true
	}
	before, after := 0, 0
	if w.DaysBefore != nil {
		before = *w.DaysBefore
	}
	if w.DaysAfter != nil {
		after = *w.DaysAfter
	}
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
		lo, hi, anchor = idx.AddDate(0, 0, -before), idx.AddDate(0, 0, after), idx
	case "interval":
		lo, hi = o.interval[0], o.interval[1]
	default:
		e := o.ids[w.RelativeTo]
		first, last, met := o.dates(e, p)
		if !met {
			return lo, hi, false
		}
		switch w.Anchor {
		case "last":
			first = last
		case "nth":
			var ds []time.Time
			for _, r := range p.events[o.tables[e]] {
				if o.eventRow(e, p, r) {
					ds = append(ds, r["event_date"].(time.Time))
				}
			}
			slices.SortFunc(ds, time.Time.Compare)
			if len(ds) < w.Occurrence {
				return lo, hi, false
			}
			first = ds[w.Occurrence-1]
		}
		lo, hi, anchor = first.AddDate(0, 0, -before), first.AddDate(0, 0, after), first
	}
	for _, u := range w.Until {
		end, ok := time.Time{}, true
		switch u {
		case "death":
			_, end, ok = deathOf(p)
		case "deregistration":
			// The latest end of the registrations current on the anchor;
			// none, and the window meets nothing.
			covered := false
			for _, row := range p.events["registrations"] {
				e, open := row["end_date"].(time.Time)
				if !open {
					e = time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
				}
				if s := row["start_date"].(time.Time); !s.After(anchor) && !e.Before(anchor) && (!covered || e.After(end)) {
					end, covered = e, true
				}
			}
			if !covered {
				return lo, hi, false
			}
		default:
			end, _ = parseDate(u)
		}
		if ok && end.Before(hi) {
			hi = end
		}
	}
	return lo, hi, true
}

// eventRow reports whether a row of an event criterion's table matches
// it for patient p: codes, types, unit, value, class, admission source and
// window.
func (o *oracle) eventRow(e *Event, p *oPatient, r map[string]any) bool {
	class, _ := r["class"].(string)
	source, _ := r["admission_source"].(string)
	return (e.Classes == nil || slices.Contains(e.Classes, class)) && (e.AdmissionSources == nil || slices.Contains(e.AdmissionSources, source)) &&
		o.matches(o.tables[e], e.Codes, e.Types, e.Unit, e.Value, r) && o.inWindow(e.Window, p, r["event_date"].(time.Time))
}

// first is the first matching date of an event criterion the patient meets.
func (o *oracle) first(e *Event, p *oPatient) (time.Time, bool) {
	first, _, ok := o.dates(e, p)
	return first, ok
}

// dates are the first and last matching dates of an event criterion, and
// whether the patient meets it (between min_count and max_count rows).
func (o *oracle) dates(e *Event, p *oPatient) (first, last time.Time, ok bool) {
	n := 0
	for _, r := range p.events[o.tables[e]] {
		d := r["event_date"].(time.Time)
		if o.eventRow(e, p, r) {
			if n == 0 || d.Before(first) {
				first = d
			}
			if n == 0 || d.After(last) {
				last = d
			}
			n++
		}
	}
	return first, last, n >= max(e.MinCount, 1) && (e.MaxCount == 0 || n <= e.MaxCount)
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

// birthRange is the span of months a patient's birth lies in: birthMI
// both ends where it is known, else the months a patient of their age
// band at the version's reference month could be born in.
func (o *oracle) birthRange(p *oPatient) (lo, hi int, ok bool) {
	if b, ok := o.birthMI(p); ok {
		return b, b, true
	}
	band, ok := p.row["age_band"].(string)
	if !ok {
		return 0, 0, false
	}
	ref := o.refMI
	if band == "90+" {
		return 0, ref - 12*90, true
	}
	var a, z int
	fmt.Sscanf(band, "%d-%d", &a, &z)
	return ref - 12*(z+1), ref - 12*a, true
}

func (o *oracle) eval(c *Criterion, p *oPatient) tri {
	unknown := fls
	if c.Unknown == UnknownMatch {
		unknown = tru
	}
	in := func(col string, vals []string) tri {
		v, ok := p.row[col].(string)
		if !ok {
			return unknown
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
		at, _ := parseDate(o.q.IndexDate)
		if e, ok := o.ids[c.AgeAt]; ok {
			first, met := o.first(e, p)
			if !met {
				return fls // no event, no age at it
			}
			at = first
		} else if c.AgeAt != "" && c.AgeAt != "index" {
			at, _ = parseDate(c.AgeAt)
		}
		lo, hi, ok := o.birthRange(p)
		if !ok {
			return unknown
		}
		// The ages the span allows run from the youngest (born last) to
		// the oldest.
		atMI := at.Year()*12 + int(at.Month()) - 1
		youngest, oldest := (atMI-hi)/12, (atMI-lo)/12
		aboveMin := func(a int) bool { return c.Age.Min == nil || float64(a) >= *c.Age.Min }
		belowMax := func(a int) bool { return c.Age.Max == nil || float64(a) <= *c.Age.Max }
		switch {
		case aboveMin(youngest) && belowMax(oldest):
			return tru
		case !aboveMin(oldest) || !belowMax(youngest):
			return fls
		}
		return unknown
	case c.Sex != nil:
		return in("sex", c.Sex)
	case c.Region != nil:
		return in("postcode_area", c.Region)
	case c.District != nil:
		return in("district", c.District)
	case c.EthnicityGroup != nil:
		return in("ethnicity_group", c.EthnicityGroup)
	case c.Practice != nil:
		return in("gp_practice", c.Practice)
	case c.AliveAt != "":
		d := c.AliveAt
		if d == "index" {
			d = o.q.IndexDate
		}
		at, _ := parseDate(d)
		death, _, ok := deathOf(p)
		if !ok || death.After(at) {
			return tru
		}
		return fls
	case c.Died != nil:
		death, end, dead := deathOf(p)
		if !dead {
			return fls
		}
		lo, hi, ok := o.bounds(c.Died.Window, p)
		if ok && !end.Before(lo) && !death.After(hi) { // the month (or year) meets the window
			return tru
		}
		return fls
	case c.Registered != nil:
		if o.registered(c.Registered, p) {
			return tru
		}
		return fls
	default:
		if _, ok := o.first(firstNonNil(c.Condition, c.Medication, c.Observation, c.Encounter, c.Procedure, c.Immunisation), p); ok {
			return tru
		}
		return fls
	}
}

// registered walks a patient's registrations from the earliest, merging
// each that starts within GapDays+1 days of the latest end so far into
// one span, and reports whether a span covers the DaysBefore days up to
// the index date.
func (o *oracle) registered(r *Registered, p *oPatient) bool {
	idx, _ := parseDate(o.q.IndexDate)
	type span struct{ s, e time.Time }
	var regs []span
	for _, row := range p.events["registrations"] {
		s := row["start_date"].(time.Time)
		if s.After(idx) {
			continue
		}
		e := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
		if v, ok := row["end_date"].(time.Time); ok {
			e = v
		}
		regs = append(regs, span{s, e})
	}
	slices.SortFunc(regs, func(a, b span) int {
		if c := a.s.Compare(b.s); c != 0 {
			return c
		}
		return a.e.Compare(b.e)
	})
	var spans []span
	for _, g := range regs {
		if n := len(spans); n > 0 && !g.s.After(spans[n-1].e.AddDate(0, 0, r.GapDays+1)) {
			if g.e.After(spans[n-1].e) {
				spans[n-1].e = g.e
			}
			continue
		}
		spans = append(spans, g)
	}
	from := idx.AddDate(0, 0, -r.DaysBefore)
	for _, sp := range spans {
		if !sp.s.After(from) && !sp.e.Before(idx) {
			return true
		}
	}
	return false
}

// inPopulation reports whether a patient is in the query's population.
func (o *oracle) inPopulation(p *oPatient) bool {
	if o.q.population() == PopulationAll {
		return true
	}
	idx, _ := parseDate(o.q.IndexDate)
	if bmi, ok := o.birthMI(p); ok && bmi > idx.Year()*12+int(idx.Month())-1 {
		return false // not yet born
	}
	death, _, dead := deathOf(p)
	return !dead || death.After(idx)
}

// cohort returns the patients the criteria select.
func (o *oracle) cohort() []*oPatient {
	var out []*oPatient
	for _, p := range o.patients {
		if !o.inPopulation(p) {
			continue
		}
		if o.q.Criteria == nil || o.eval(o.q.Criteria, p) == tru {
			out = append(out, p)
		}
	}
	return out
}

// ageBandOf is a patient's age band at the index date, or Unknown.
func (o *oracle) ageBandOf(p *oPatient) string {
	lo, hi, ok := o.birthRange(p)
	if !ok {
		return Unknown
	}
	idx, _ := parseDate(o.q.IndexDate)
	at := idx.Year()*12 + int(idx.Month()) - 1
	if band := ageBand((at - hi) / 12); band == ageBand((at-lo)/12) {
		return band
	}
	return Unknown // a span across two bands
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
	"unknown match": `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"any": [
		{"region": ["LS", "BD"], "unknown": "match"}, {"not": {"age": {"min": 30}, "unknown": "no_match"}}]},
		"measures": [{"kind": "count", "by": ["region", "age_band"]}], "epsilon": 1}`,
	"population at 1950": `{"dataset": "gp", "index_date": "1950-01-01", "criteria": {"sex": ["female", "male"]},
		"measures": [{"kind": "count", "by": ["age_band"]}], "epsilon": 1}`,
	"children in 1960, born implied by age": `{"dataset": "gp", "index_date": "1960-01-01", "criteria": {"all": [
		{"age": {"min": 0, "max": 15}, "unknown": "match"}, {"sex": ["female", "male"]}]},
		"measures": [{"kind": "count", "by": ["age_band"]}], "epsilon": 1}`,
	"population all": `{"dataset": "gp", "index_date": "1950-01-01", "population": "all", "criteria": {"sex": ["female", "male"]},
		"measures": [{"kind": "count"}], "epsilon": 1}`,
	"registered a year": `{"dataset": "gp", "index_date": "2023-06-30", "criteria": {"registered": {"days_before": 365}},
		"measures": [{"kind": "count", "by": ["age_band"]}], "epsilon": 1}`,
	"registered ten years with gaps": `{"dataset": "gp", "index_date": "2020-01-01", "criteria": {"all": [
		{"registered": {"days_before": 3650, "gap_days": 60}}, {"not": {"registered": {"days_before": 3650}}}]},
		"measures": [{"kind": "count"}], "epsilon": 1}`,
	"exactly, strictly before, from the last": `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"all": [
		{"encounter": {"id": "gp", "types": ["gp"], "min_count": 2, "max_count": 4, "window": {"relative_to": "index", "days_before": 730, "days_after": -1}}},
		{"observation": {"codes": {"snomed": ["999791000000106"]}, "window": {"relative_to": "gp", "anchor": "last", "days_before": 180, "days_after": -1}}}]},
		"measures": [{"kind": "count", "by": ["age_band"]}], "epsilon": 1}`,
	"practices, unknown either way": `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"any": [
		{"practice": ["B86011", "B86012", "B82011"]}, {"not": {"practice": ["C87011", "C88012"], "unknown": "match"}}]},
		"measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 1}`,
	"follow-up to deregistration": `{"dataset": "gp", "index_date": "2016-01-01", "criteria": {"any": [
		{"encounter": {"types": ["gp"], "min_count": 3, "window": {"relative_to": "index", "days_before": 0, "days_after": 3650, "until": ["deregistration"]}}},
		{"all": [{"condition": {"id": "t2d", "codes": {"snomed": ["44054006"]}}},
			{"observation": {"codes": {"snomed": ["999791000000106"]}, "window": {"relative_to": "t2d", "days_before": -1, "days_after": 3650, "until": ["deregistration", "death"]}}}]}]},
		"measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 1}`,
	"age at an event and a date": `{"dataset": "gp", "criteria": {"all": [
		{"condition": {"id": "t2d", "codes": {"snomed": ["44054006"]}}},
		{"age": {"min": 50, "max": 69}, "age_at": "t2d"},
		{"not": {"age": {"max": 29}, "age_at": "2000-06-30", "unknown": "match"}}]},
		"measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 1}`,
	"died, emergencies": `{"dataset": "gp", "index_date": "2022-01-01", "criteria": {"any": [
		{"died": {"window": {"from": "2022-03-15", "to": "2024-06-30"}}},
		{"encounter": {"id": "ae", "classes": ["emergency"], "min_count": 2}},
		{"died": {"window": {"relative_to": "ae", "days_before": 0, "days_after": 90}}}]},
		"population": "all", "measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 1}`,
	"second emergency, follow-up to death": `{"dataset": "gp", "index_date": "2024-01-01", "population": "all", "criteria": {"all": [
		{"encounter": {"id": "ae", "classes": ["emergency"], "min_count": 2}},
		{"encounter": {"types": ["gp"], "min_count": 2, "window": {"relative_to": "ae", "anchor": "nth", "occurrence": 2,
		  "days_before": -1, "days_after": 365, "until": ["death", "2023-12-31"]}}}]},
		"measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 1}`,
	"procedures and immunisations": `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"any": [
		{"procedure": {"codes": {"opcs4": ["K40", "W37.1", "H01"]}}},
		{"immunisation": {"codes": {"snomed": ["836377006"]}, "min_count": 2, "window": {"relative_to": "index", "days_before": 1825}}}]},
		"measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 1}`,
}

// count is a query's exact patient count.
func count(t *testing.T, s *Service, text string) int64 {
	t.Helper()
	return exactOf(t, s, mustParse(t, text))[0].count
}

// The population at an index date holds only the patients born and alive
// then (the unborn and the dead were in every population, aged 0-4,
// before); "all" keeps everyone.
func TestPopulation(t *testing.T) {
	s := newService(t)
	all := count(t, s, `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 1}`)
	for _, c := range []struct {
		index    string
		fewer    bool
		fraction float64 // the least share of the dataset expected
	}{{"1950-01-01", true, 0.01}, {"2024-01-01", true, 0.5}, {"2100-01-01", true, 0}} {
		n := count(t, s, `{"dataset": "gp", "index_date": "`+c.index+`", "measures": [{"kind": "count"}], "epsilon": 1}`)
		everyone := count(t, s, `{"dataset": "gp", "index_date": "`+c.index+`", "population": "all", "measures": [{"kind": "count"}], "epsilon": 1}`)
		t.Logf("%s: %d of %d patients in the population", c.index, n, all)
		if everyone != all || n >= all || float64(n) < c.fraction*float64(all) {
			t.Errorf("%s: population %d, all %d (dataset %d)", c.index, n, everyone, all)
		}
	}
}

// districts is a district criterion for an area's districts 1 to n.
func districts(area string, n int, unknown string) string {
	var ds []string
	for i := 1; i <= n; i++ {
		ds = append(ds, fmt.Sprintf("%q", fmt.Sprint(area, i)))
	}
	return `{"district": [` + strings.Join(ds, ", ") + `], "unknown": "` + unknown + `"}`
}

// With unknowns two-valued, an attribute criterion and its "not" split the
// population exactly, whichever way unknowns go.
func TestNotIsTheComplement(t *testing.T) {
	s := newService(t)
	base := `{"dataset": "gp", "index_date": "2024-01-01", "measures": [{"kind": "count"}], "epsilon": 1`
	pop := count(t, s, base+`}`)
	// Most of the fixture's patients keep their district, some lose it
	// to the k-anonymity check: unknown decides for those.
	for _, c := range []struct {
		crit    string
		in, out bool // whether each side must hold someone
	}{{`{"region": ["ZE", "LS"]}`, true, true}, {`{"ethnicity_group": ["White"]}`, true, true}, {`{"age": {"max": 40}}`, true, true},
		{`{"sex": ["female"], "unknown": "match"}`, true, true}, {`{"practice": ["B86011", "B82012", "C87013"]}`, true, true},
		{districts("LS", 29, "no_match"), true, true}, {districts("BD", 24, "match"), true, true}} {
		in := count(t, s, base+`, "criteria": `+c.crit+`}`)
		out := count(t, s, base+`, "criteria": {"not": `+c.crit+`}}`)
		if in+out != pop || c.in && in == 0 || c.out && out == 0 || !c.in && in != 0 || !c.out && out != 0 {
			t.Errorf("%s: %d in, %d out, population %d", c.crit, in, out, pop)
		}
	}
}

// exactOf compiles q and runs it on the engine's exact path.
func exactOf(t *testing.T, s *Service, q *Query) []exact {
	t.Helper()
	eng, err := s.Engine(t.Context(), q.Dataset, q.Version)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := CompileFor(q, 1, eng.Dialect())
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
		t.Run(name, func(t *testing.T) { groundTruth(t, s, mustParse(t, text)) })
	}
}

// groundTruth checks, with the noise switched off (the engine's exact
// path, which no API reaches), that the compiled SQL selects exactly the
// patients the oracle selects for q's first measure, a count, cell by
// cell.
func groundTruth(t *testing.T, s *Service, q *Query) {
	t.Helper()
	xs := exactOf(t, s, q)
	if q.Cohorts == nil {
		groundTruthOf(t, q, &xs[0])
		return
	}
	for i, qc := range q.perCohort() {
		t.Logf("cohort %q", q.Cohorts[i].Name)
		groundTruthOf(t, qc, &xs[i*len(q.Measures)])
	}
}

// groundTruthOf checks x, the exact result of a query's first measure,
// against the oracle.
func groundTruthOf(t *testing.T, q *Query, x *exact) {
	t.Helper()
	o := newOracle(t, lake(t), q)
	cohort := o.cohort()
	if len(cohort) == 0 || len(cohort) == len(o.patients) && q.Criteria != nil {
		t.Fatalf("oracle selects %d of %d patients: the query tests nothing", len(cohort), len(o.patients))
	}
	t.Logf("cohort: %d of %d patients", len(cohort), len(o.patients))
	m := q.Measures[0]
	if len(m.By) == 0 {
		if got, want := x.count, int64(len(cohort)); got != want {
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
			case "year":
				key = append(key, o.yearOf(m, p))
			}
		}
		want[strings.Join(key, "|")]++
	}
	var total int64
	for i, k := range x.cellKeys {
		got := x.cells[i]
		total += got
		if w := want[strings.Join(k, "|")]; got != w {
			t.Errorf("cell %v = %d, want %d", k, got, w)
		}
	}
	if total != int64(len(cohort)) {
		t.Errorf("cells add to %d, cohort has %d", total, len(cohort))
	}
}

// yearOf is a patient's key in a breakdown by year: the year of the first
// date of the criterion year_of names, or "none".
func (o *oracle) yearOf(m Measure, p *oPatient) string {
	if first, ok := o.first(o.ids[m.YearOf], p); ok {
		return strconv.Itoa(first.Year())
	}
	return "none"
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

// A breakdown by_code with max_partitions 1 picks each patient's code at
// random per patient: a code's count is, over seeds, what a uniform pick
// gives, the sum over its patients of 1/(their number of codes). One
// query-wide order of codes gave the first code all its patients and the
// last ones few.
func TestByCodePicksPerPatient(t *testing.T) {
	s := newService(t)
	q := mustParse(t, `{"dataset": "gp", "measures": [{"kind": "count", "by_code": "conditions", "max_partitions": 1}], "epsilon": 1, "delta": 1e-6}`)
	o := newOracle(t, lake(t), q)
	have, want := map[string]int64{}, map[string]float64{}
	for _, p := range o.cohort() {
		codes := map[string]bool{}
		for _, r := range p.events["conditions"] {
			codes[r["code_system"].(string)+"|"+r["code"].(string)] = true
		}
		for c := range codes {
			have[c]++
			want[c] += 1 / float64(len(codes))
		}
	}
	eng, err := s.Engine(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	const seeds = 10
	got := map[string]float64{}
	for seed := range int64(seeds) {
		plan, err := CompileFor(q, seed, eng.Dialect())
		if err != nil {
			t.Fatal(err)
		}
		xs, err := eng.exact(t.Context(), plan)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range xs[0].codes {
			got[c.system+"|"+c.code] += float64(c.n) / seeds
		}
	}
	checked := 0
	for c, n := range have {
		if n < 100 {
			continue
		}
		checked++
		if math.Abs(got[c]-want[c]) > 0.1*want[c] {
			t.Errorf("%s: %.1f patients a seed, a uniform pick gives %.1f (%d have it)", c, got[c], want[c], n)
		}
	}
	if checked < 3 {
		t.Fatalf("only %d codes with 100 patients: the test checks too little", checked)
	}
}

// A rate's denominator and numerator, interval by interval and cell by
// cell, are the patients the oracle selects with the interval's start as
// the index date and windows relative to the interval taken as it.
func TestRateGroundTruth(t *testing.T) {
	s := newService(t)
	q := mustParse(t, `{"dataset": "gp", "criteria": {"condition": {"codes": {"snomed": ["44054006"]}}},
		"measures": [{"kind": "rate", "by": ["sex"],
		  "denominator": {"all": [{"registered": {"days_before": 365}}, {"age": {"min": 40}}]},
		  "numerator": {"observation": {"codes": {"snomed": ["999791000000106"]}, "window": {"relative_to": "interval"}}},
		  "intervals": {"every": "quarter", "from": "2022-01-01", "to": "2023-12-31"}}],
		"epsilon": 1}`)
	xs := exactOf(t, s, q)
	m := q.Measures[0]
	if len(xs[0].rate) != 8 {
		t.Fatalf("%d intervals, want 8 quarters", len(xs[0].rate))
	}
	l := lake(t)
	base := newOracle(t, l, q)
	var nums int64
	for _, rp := range xs[0].rate {
		// An oracle per interval, over the same patients.
		iq := &Query{Dataset: "gp", IndexDate: rp.from.Format(time.DateOnly),
			Criteria: &Criterion{All: []*Criterion{q.Criteria, m.Denominator}}}
		o := *base
		o.q, o.interval = iq, [2]time.Time{rp.from, rp.to}
		den := o.cohort()
		var num []*oPatient
		for _, p := range den {
			if o.eval(m.Numerator, p) == tru {
				num = append(num, p)
			}
		}
		for side, c := range map[string]struct {
			got  exact
			want []*oPatient
		}{"denominator": {rp.den, den}, "numerator": {rp.num, num}} {
			want := map[string]int64{}
			for _, p := range c.want {
				want[orUnknown(p.row["sex"], Sexes[:3])]++
			}
			for j, k := range c.got.cellKeys {
				if c.got.cells[j] != want[k[0]] {
					t.Errorf("%s %s, %s: %d, want %d", rp.from.Format(time.DateOnly), side, k[0], c.got.cells[j], want[k[0]])
				}
			}
		}
		nums += int64(len(num))
		if rp.to.Sub(rp.from) < 80*24*time.Hour || len(den) == 0 {
			t.Errorf("interval %s to %s, %d in the denominator", rp.from, rp.to, len(den))
		}
	}
	if nums == 0 {
		t.Error("no numerator in any interval: the test checks too little")
	}
}

// Cohorts side by side: each measure for each cohort is what the oracle
// selects with the query's criteria and the cohort's; the ε is shared out
// among cohorts and measures.
func TestCohortsSideBySide(t *testing.T) {
	s := newService(t)
	q := mustParse(t, `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": 40}},
		"cohorts": [{"name": "type 2 diabetes", "criteria": {"condition": {"id": "t2d", "codes": {"snomed": ["44054006"]}}}},
		            {"name": "hypertension", "criteria": {"condition": {"codes": {"snomed": ["38341003"]}}}},
		            {"name": "neither", "criteria": {"not": {"condition": {"codes": {"snomed": ["44054006", "38341003"]}}}}}],
		"measures": [{"kind": "count"}, {"kind": "count", "by": ["sex"]}], "epsilon": 3}`)
	xs := exactOf(t, s, q)
	if len(xs) != 6 {
		t.Fatalf("%d results, want 3 cohorts × 2 measures", len(xs))
	}
	var total int64
	for i, qc := range q.perCohort() {
		want := int64(len(newOracle(t, lake(t), qc).cohort()))
		if got := xs[2*i].count; got != want || want == 0 {
			t.Errorf("%s: %d patients, the oracle %d", q.Cohorts[i].Name, got, want)
		}
		var cells int64
		for _, n := range xs[2*i+1].cells {
			cells += n
		}
		if cells != want {
			t.Errorf("%s: cells add to %d, want %d", q.Cohorts[i].Name, cells, want)
		}
		total += want
	}
	all := int64(len(newOracle(t, lake(t), mustParse(t, `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": 40}}, "measures": [{"kind": "count"}], "epsilon": 1}`)).cohort()))
	if total <= all/2 {
		t.Errorf("the cohorts hold %d of %d patients: the test checks too little", total, all)
	}
	a, err := release(q, xs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Measures) != 6 || a.Measures[0].Cohort != "type 2 diabetes" || a.Measures[5].Cohort != "neither" || a.Measures[3].Epsilon != 0.5 {
		t.Errorf("released %d measures: %+v", len(a.Measures), a.Measures[0])
	}
}

// The fixture holds emergency encounters and deaths in the windows the
// ground truth asks about, so that those criteria test something.
func TestClassAndDeathHaveData(t *testing.T) {
	s := newService(t)
	for _, crit := range []string{`{"encounter": {"classes": ["emergency"], "min_count": 2}}`,
		`{"died": {"window": {"from": "2022-03-15", "to": "2024-06-30"}}}`, `{"died": {}}`} {
		n := count(t, s, `{"dataset": "gp", "population": "all", "criteria": `+crit+`, "measures": [{"kind": "count"}], "epsilon": 1}`)
		t.Logf("%s: %d", crit, n)
		if n == 0 {
			t.Errorf("%s: nobody", crit)
		}
	}
}

// until shortens a window: the same follow-up ended at an earlier date
// holds fewer patients, and the nth anchor differs from the first.
func TestUntilAndNthBite(t *testing.T) {
	s := newService(t)
	q := func(window string) int64 {
		return count(t, s, `{"dataset": "gp", "population": "all", "criteria": {"all": [
			{"encounter": {"id": "ae", "classes": ["emergency"], "min_count": 2}},
			{"encounter": {"types": ["gp"], "window": `+window+`}}]}, "measures": [{"kind": "count"}], "epsilon": 1}`)
	}
	open := q(`{"relative_to": "ae", "days_after": 3650}`)
	until := q(`{"relative_to": "ae", "days_after": 3650, "until": ["2022-06-30"]}`)
	dereg := q(`{"relative_to": "ae", "days_after": 3650, "until": ["deregistration"]}`)
	nth := q(`{"relative_to": "ae", "anchor": "nth", "occurrence": 2, "days_before": 0, "days_after": 0}`)
	first := q(`{"relative_to": "ae", "days_before": 0, "days_after": 0}`)
	t.Logf("open %d, until 2022-06-30 %d, until deregistration %d; on the first emergency %d, on the second %d", open, until, dereg, first, nth)
	if until >= open || until == 0 || dereg >= open || dereg == 0 || nth == first {
		t.Errorf("open %d, until %d, until deregistration %d; first %d, second %d", open, until, dereg, first, nth)
	}
}

// The study definitions in docs/studies select exactly the patients the
// oracle selects, on the test dataset.
func TestStudies(t *testing.T) {
	s := newService(t)
	studies := studyQueries(t)
	names := slices.Sorted(maps.Keys(studies))
	for _, name := range names {
		t.Run(name, func(t *testing.T) { groundTruth(t, s, studies[name]) })
	}
}

// studyQueries are the study definitions of docs/studies, by file name,
// asked of the test lake, their code lists looked up.
func studyQueries(t *testing.T) map[string]*Query {
	t.Helper()
	store, err := OpenCodelists(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	importFixture(t, store, "nhsd-primary-care-domain-refsets-dmtype2_cod.csv", "nhsd-primary-care-domain-refsets/dmtype2_cod", "20250912")
	files, _ := filepath.Glob(filepath.Join("..", "docs", "studies", "*.json"))
	if len(files) < 10 {
		t.Fatalf("%d study definitions in docs/studies", len(files))
	}
	out := map[string]*Query{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		q := mustParse(t, strings.Replace(string(b), `"demo"`, `"gp"`, 1))
		if _, err := resolveCodelists(q, store); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[filepath.Base(f)] = q
	}
	return out
}

// report_unknowns counts, for each attribute the criteria test, the
// population's patients without it, exactly as the oracle does, and
// releases each as a noisy count for a measure's share of ε.
func TestReportUnknowns(t *testing.T) {
	s := newService(t)
	q := mustParse(t, `{"dataset": "gp", "index_date": "2024-01-01", "report_unknowns": true,
		"criteria": {"all": [{"not": {"region": ["ZE"]}}, {"age": {"min": 40}}, {"any": [{"district": ["LS6"]}, {"region": ["LS"], "unknown": "match"}]}]},
		"measures": [{"kind": "count"}], "epsilon": 4}`)
	eng, err := s.Engine(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := CompileFor(q, 1, eng.Dialect())
	if err != nil {
		t.Fatal(err)
	}
	counts, err := eng.unknownCounts(t.Context(), plan)
	if err != nil {
		t.Fatal(err)
	}
	attrs, paths := q.unknownAttributes()
	if fmt.Sprint(attrs) != "[age region district]" || len(paths["region"]) != 2 || paths["region"][0] != "criteria.all[0].not" {
		t.Fatalf("attributes %v, paths %v", attrs, paths)
	}
	o := newOracle(t, lake(t), q)
	for i, a := range attrs {
		var want int64
		for _, p := range o.patients {
			if !o.inPopulation(p) {
				continue
			}
			known := false
			if a == "age" {
				_, known = o.birthMI(p)
			} else {
				_, known = p.row[unknownColumn[a]].(string)
			}
			if !known {
				want++
			}
		}
		if counts[i] != want {
			t.Errorf("%s: %d unknown, the oracle %d", a, counts[i], want)
		}
		if a == "district" && want == 0 {
			t.Error("no unknown district: the fixture generalises districts away")
		}
	}
	project(t, s, "p", 10, 1e-5)
	ans, err := s.Query(t.Context(), "p", q)
	if err != nil {
		t.Fatal(err)
	}
	if len(ans.Unknowns) != 3 || ans.Unknowns[2].Attribute != "district" || ans.Unknowns[2].Value == nil || ans.Unknowns[0].Epsilon != 1 || ans.Measures[0].Epsilon != 1 {
		t.Errorf("unknowns %+v, measure ε %g", ans.Unknowns, ans.Measures[0].Epsilon)
	}
}

// deathOf is the first and last day of the period a patient's death is
// published to: its month, or its year where only the year is.
func deathOf(p *oPatient) (first, last time.Time, ok bool) {
	if m, ok := p.row["death_month"].(time.Time); ok {
		return m, m.AddDate(0, 1, -1), true
	}
	if y, ok := p.row["death_year"].(int64); ok {
		return time.Date(int(y), 1, 1, 0, 0, 0, 0, time.UTC), time.Date(int(y), 12, 31, 0, 0, 0, 0, time.UTC), true
	}
	return time.Time{}, time.Time{}, false
}
