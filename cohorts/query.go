package cohorts

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/ingest"
)

// Limits on a query's size; a query beyond them is refused before any SQL.
const (
	MaxQueryBytes = 64 << 10
	MaxDepth      = 8
	MaxCriteria   = 64
	MaxCodes      = 500
	MaxMeasures   = 8
	MaxBy         = 3
	MaxCells      = 20000
	MaxRanks      = 20
	MaxEpsilon    = 10.0
	// MinEpsilon is the smallest ε a query may spend: below it the noise
	// drowns any count, and a much smaller one (under the ledger's unit,
	// 1e-6) was once released charged nothing, or failed in the DP
	// library.
	MinEpsilon       = 0.001
	MaxDelta         = 1e-3
	MaxPartitions    = 20
	MaxBound         = 1e9
	DefaultSuppress  = 10
	DefaultPartition = 3
)

// A Query is a cohort definition and the measures wanted of it. Its JSON
// form is documented with worked examples in docs/cohort-language.md.
type Query struct {
	Dataset string `json:"dataset"`
	// Version is the dataset version; 0 means the latest.
	Version int `json:"version,omitempty"`
	// IndexDate anchors ages, "alive_at": "index" and windows relative to
	// the index date.
	IndexDate string `json:"index_date,omitempty"`
	// Population is whom the criteria choose from: PopulationAlive (the
	// default with an index date) or PopulationAll (every patient of the
	// dataset; the only one without an index date).
	Population string     `json:"population,omitempty"`
	Criteria   *Criterion `json:"criteria,omitempty"`
	// Cohorts, when given, are several cohorts side by side (a "table 1"):
	// every measure is released for each, among the patients who meet
	// both Criteria and the cohort's own.
	Cohorts  []NamedCohort `json:"cohorts,omitempty"`
	Measures []Measure     `json:"measures"`
	// Epsilon is the query's whole ε, split equally among its measures.
	Epsilon float64 `json:"epsilon"`
	// Delta is the query's whole δ, needed only by breakdowns by
	// data-dependent keys (partition selection).
	Delta float64 `json:"delta,omitempty"`
	// SuppressBelow raises the suppression threshold above the default 10.
	SuppressBelow int `json:"suppress_below,omitempty"`
	// RoundTo rounds released counts to the nearest 5 (post-processing).
	RoundTo int `json:"round_to,omitempty"`
	// ReportUnknowns releases, for each attribute the criteria test, a
	// noisy count of the population's patients whose value is unknown,
	// each for a share of ε as a measure's.
	ReportUnknowns bool `json:"report_unknowns,omitempty"`
}

// unknownAttributes are the attributes the criteria test, in a fixed
// order, with the paths of the criteria that test each.
func (q *Query) unknownAttributes() (attrs []string, paths map[string][]string) {
	if !q.ReportUnknowns {
		return nil, nil
	}
	paths = map[string][]string{}
	var walk func(k *Criterion, at string)
	walk = func(k *Criterion, at string) {
		if k == nil {
			return
		}
		for i, x := range k.All {
			walk(x, fmt.Sprintf("%s.all[%d]", at, i))
		}
		for i, x := range k.Any {
			walk(x, fmt.Sprintf("%s.any[%d]", at, i))
		}
		walk(k.Not, at+".not")
		if a := k.attribute(); a != "" {
			paths[a] = append(paths[a], at)
		}
	}
	walk(q.Criteria, "criteria")
	for _, a := range attributes {
		if len(paths[a]) > 0 {
			attrs = append(attrs, a)
		}
	}
	return attrs, paths
}

// A Criterion is one node of a cohort definition: a group (all, any, not)
// or exactly one test on a patient.
type Criterion struct {
	All []*Criterion `json:"all,omitempty"`
	Any []*Criterion `json:"any,omitempty"`
	Not *Criterion   `json:"not,omitempty"`

	Condition    *Event `json:"condition,omitempty"`
	Medication   *Event `json:"medication,omitempty"`
	Observation  *Event `json:"observation,omitempty"`
	Encounter    *Event `json:"encounter,omitempty"`
	Procedure    *Event `json:"procedure,omitempty"`
	Immunisation *Event `json:"immunisation,omitempty"`

	// Registered: registered with a GP practice without a break longer
	// than GapDays over the DaysBefore days up to the index date.
	Registered *Registered `json:"registered,omitempty"`

	Age *Range `json:"age,omitempty"`
	// AgeAt is where an age criterion takes the age: "index" (the
	// default), a date (YYYY-MM-DD), or the id of an event criterion (its
	// first matching date; a patient without it does not match).
	AgeAt          string   `json:"age_at,omitempty"`
	Sex            []string `json:"sex,omitempty"`
	Region         []string `json:"region,omitempty"`
	District       []string `json:"district,omitempty"`
	EthnicityGroup []string `json:"ethnicity_group,omitempty"`
	// Practice: registered with one of these GP practices (ODS codes) at
	// the time of the extract; unknown where the policy withholds it.
	Practice []string `json:"practice,omitempty"`
	// AliveAt is a date, or "index" for the index date.
	AliveAt string `json:"alive_at,omitempty"`
	// Died: a death recorded in a month that meets the window (any time
	// without one).
	Died *Died `json:"died,omitempty"`

	// Unknown says whether a patient whose attribute is unknown
	// (generalised away or missing) meets an attribute criterion (age,
	// sex, region, district, ethnicity_group, practice): UnknownNoMatch (the
	// default) or UnknownMatch. Either way the criterion is true or false
	// for every patient, so "not" is its exact complement.
	Unknown string `json:"unknown,omitempty"`
}

// attributes are the patient attributes a criterion can test, each
// unknown for some patients.
var attributes = []string{"age", "sex", "region", "district", "ethnicity_group", "practice"}

// attribute names the patient attribute the criterion tests, or "".
func (k *Criterion) attribute() string {
	switch {
	case k.Age != nil:
		return "age"
	case k.Sex != nil:
		return "sex"
	case k.Region != nil:
		return "region"
	case k.District != nil:
		return "district"
	case k.EthnicityGroup != nil:
		return "ethnicity_group"
	case k.Practice != nil:
		return "practice"
	}
	return ""
}

// Populations.
const (
	// PopulationAlive holds the patients born (in or before the index
	// date's month; when the year of birth is unknown, taken as born) and
	// alive (no death recorded in or before the index date's month) at
	// the index date.
	PopulationAlive = "alive_at_index"
	// PopulationAll holds every patient of the dataset version.
	PopulationAll = "all"
)

// How an attribute criterion treats an unknown value.
const (
	UnknownNoMatch = "no_match"
	UnknownMatch   = "match"
)

// population is the query's population, its default resolved.
func (q *Query) population() string {
	switch {
	case q.Population != "":
		return q.Population
	case q.IndexDate != "":
		return PopulationAlive
	}
	return PopulationAll
}

// Died selects patients whose recorded month of death meets Window.
type Died struct {
	Window *Window `json:"window,omitempty"`
}

// A NamedCohort is one of several cohorts a query compares.
type NamedCohort struct {
	Name     string     `json:"name"`
	Criteria *Criterion `json:"criteria"`
}

// MaxCohorts bounds the cohorts of one query.
const MaxCohorts = 8

// Registered is an at-risk period: continuous GP registration over the
// DaysBefore days up to and including the index date, breaks between
// registrations of at most GapDays tolerated.
type Registered struct {
	DaysBefore int `json:"days_before"`
	GapDays    int `json:"gap_days,omitempty"`
}

// An Event selects patients with at least MinCount matching rows of one
// event table.
type Event struct {
	// ID names the criterion so that windows and year breakdowns can refer
	// to its first matching date.
	ID    string   `json:"id,omitempty"`
	Codes *Codes   `json:"codes,omitempty"`
	Types []string `json:"types,omitempty"`
	// Classes and AdmissionSources (encounters) select by the
	// encounter's class (emergency, inpatient, ...) and its coded
	// admission source.
	Classes          []string `json:"classes,omitempty"`
	AdmissionSources []string `json:"admission_sources,omitempty"`
	Value            *Range   `json:"value,omitempty"`
	Unit             string   `json:"unit,omitempty"`
	MinCount         int      `json:"min_count,omitempty"`
	// MaxCount, when set, bounds the matching rows from above: min_count
	// equal to max_count asks for exactly that many.
	MaxCount int     `json:"max_count,omitempty"`
	Window   *Window `json:"window,omitempty"`
}

// Codes is a code list: exact SNOMED CT and dm+d concept ids, ICD-10 codes
// matched as prefixes ("E11" matches "E11" and "E11.9").
type Codes struct {
	SNOMED []string `json:"snomed,omitempty"`
	ICD10  []string `json:"icd10,omitempty"`
	DMD    []string `json:"dmd,omitempty"`
	// OPCS4 codes (procedures) match as prefixes, as ICD-10 codes do.
	OPCS4 []string `json:"opcs4,omitempty"`
	// Codelist names a code list the hub keeps (name@version), whose codes
	// count as listed here too.
	Codelist string `json:"codelist,omitempty"`

	list *Codelist // the code list, once resolved
}

// A Range is inclusive; either end may be left open.
type Range struct {
	Min *float64 `json:"min,omitempty"`
	Max *float64 `json:"max,omitempty"`
}

// A Window limits event dates: absolute (From, To) or relative to the
// index date or to another criterion's first date (RelativeTo, DaysBefore,
// DaysAfter).
type Window struct {
	From       string `json:"from,omitempty"`
	To         string `json:"to,omitempty"`
	RelativeTo string `json:"relative_to,omitempty"`
	// Anchor is which date of the criterion RelativeTo names the window
	// is taken from: its first matching date (the default), its last, or
	// (with Occurrence N) its Nth.
	Anchor     string `json:"anchor,omitempty"`
	Occurrence int    `json:"occurrence,omitempty"`
	DaysBefore *int   `json:"days_before,omitempty"`
	DaysAfter  *int   `json:"days_after,omitempty"`
	// Until ends the window earlier: at the patient's death (the end of
	// the recorded month: "death"), at the end of the GP registration
	// current on the window's anchor ("deregistration": a patient not
	// registered on the anchor date has no follow-up, and the window
	// meets nothing) or at a date, whichever comes first.
	Until []string `json:"until,omitempty"`
}

// Measure kinds.
const (
	KindCount     = "count"
	KindSum       = "sum"
	KindMean      = "mean"
	KindQuantiles = "quantiles"
	KindRate      = "rate"
)

// A Measure is one released statistic of the cohort.
type Measure struct {
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
	// By lists public breakdown keys: age_band, sex, region,
	// ethnicity_group, year. Every key of the public domain is released.
	By []string `json:"by,omitempty"`
	// YearOf names the event criterion whose first date gives "year".
	YearOf string `json:"year_of,omitempty"`
	// ByCode breaks a count down by the codes of an event table
	// (conditions, medications, observations), with DP partition selection.
	ByCode string `json:"by_code,omitempty"`
	// MaxPartitions bounds how many codes one patient counts towards.
	MaxPartitions int     `json:"max_partitions,omitempty"`
	Window        *Window `json:"window,omitempty"`
	// Of is the per-patient value of sum, mean and quantiles.
	Of    *Value    `json:"of,omitempty"`
	Lower *float64  `json:"lower,omitempty"`
	Upper *float64  `json:"upper,omitempty"`
	Ranks []float64 `json:"ranks,omitempty"`

	// A rate (a measure over time, as ehrQL's Measures): for each
	// interval, the patients of the cohort who meet Denominator (all, when
	// left out) with the interval's start as the index date, and of those
	// the ones who meet Numerator. Windows inside them may be relative to
	// "interval": from its first day to its last.
	Numerator   *Criterion `json:"numerator,omitempty"`
	Denominator *Criterion `json:"denominator,omitempty"`
	Intervals   *Intervals `json:"intervals,omitempty"`
}

// Intervals are consecutive periods of a month, a quarter or a year from
// From, the last ending at To.
type Intervals struct {
	Every string `json:"every"`
	From  string `json:"from"`
	To    string `json:"to"`
}

// MaxIntervals bounds a rate's intervals (ten years of months).
const MaxIntervals = 120

// periods returns the intervals' first and last days.
func (iv *Intervals) periods() [][2]time.Time {
	from, _ := parseDate(iv.From)
	to, _ := parseDate(iv.To)
	months := map[string]int{"month": 1, "quarter": 3, "year": 12}[iv.Every]
	var out [][2]time.Time
	for s := from; !s.After(to) && len(out) <= MaxIntervals; s = s.AddDate(0, months, 0) {
		e := s.AddDate(0, months, -1)
		if e.After(to) {
			e = to
		}
		out = append(out, [2]time.Time{s, e})
	}
	return out
}

// Value kinds.
const (
	ValueAge         = "age"
	ValueObservation = "observation"
	ValueEvents      = "events"
)

// A Value is a per-patient number: age at the index date, an observation's
// value (first, last, min, max or mean in a window), or a number of events.
type Value struct {
	Kind  string   `json:"kind"`
	Table string   `json:"table,omitempty"`
	Codes *Codes   `json:"codes,omitempty"`
	Types []string `json:"types,omitempty"`
	Unit  string   `json:"unit,omitempty"`
	Pick  string   `json:"pick,omitempty"`
	// Window limits the events counted or the observations picked.
	Window *Window `json:"window,omitempty"`
}

// A QueryError says what is wrong with a query; it never contains row data.
type QueryError struct{ Msg string }

func (e *QueryError) Error() string { return e.Msg }

func bad(format string, args ...any) error { return &QueryError{Msg: fmt.Sprintf(format, args...)} }

// ParseQuery reads one JSON query of at most MaxQueryBytes, refusing
// unknown fields and trailing data, and validates it.
func ParseQuery(r io.Reader) (*Query, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxQueryBytes+1))
	if err != nil {
		return nil, bad("read query: %v", err)
	}
	if len(b) > MaxQueryBytes {
		return nil, bad("query is larger than %d KiB; split it or use shorter code lists", MaxQueryBytes>>10)
	}
	if d := jsonDepth(b); d > 2*MaxDepth+6 {
		return nil, bad("query nests too deeply (at most %d levels of criteria)", MaxDepth)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var q Query
	if err := dec.Decode(&q); err != nil {
		return nil, bad("query is not valid JSON for the cohort language: %s", jsonErr(err))
	}
	if dec.More() {
		return nil, bad("query has data after its closing brace")
	}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return &q, nil
}

// jsonErr strips Go type names from decoder errors.
func jsonErr(err error) string {
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) {
		return fmt.Sprintf("field %q has the wrong type (got a JSON %s)", ute.Field, ute.Value)
	}
	return err.Error()
}

// jsonDepth is the deepest nesting of objects and arrays in b, measured
// before decoding so that a hostile query cannot recurse the decoder.
func jsonDepth(b []byte) int {
	depth, maxd, inStr, esc := 0, 0, false, false
	for _, c := range b {
		switch {
		case inStr:
			if esc {
				esc = false
			} else if c == '\\' {
				esc = true
			} else if c == '"' {
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == '{' || c == '[':
			depth++
			maxd = max(maxd, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return maxd
}

// Canonical is the query's canonical JSON (fields in a fixed order, no
// whitespace) with the dataset version resolved; equal queries have equal
// canonical forms.
func (q *Query) Canonical(version int) []byte {
	c := *q
	c.Version = version
	// Resolved, so that a query asked before populations existed (every
	// patient, unknowns three-valued) never matches a query asked since.
	c.Population = q.population()
	if c.SuppressBelow == DefaultSuppress {
		c.SuppressBelow = 0
	}
	b, _ := json.Marshal(&c)
	return b
}

// Hash is the SHA-256 of the canonical query, in hex.
func (q *Query) Hash(version int) string {
	h := sha256.Sum256(q.Canonical(version))
	return hex.EncodeToString(h[:])
}

var (
	reAdmission = regexp.MustCompile(`^[A-Za-z0-9._-]{1,40}$`)
	reOPCS4     = regexp.MustCompile(`^[A-Z][0-9]{2}(\.?[0-9]{1,2})?$`)
	reID        = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	reUnit      = regexp.MustCompile(`^[A-Za-z0-9/%.\[\]*^{}-]{1,24}$`)
	reDistrict  = regexp.MustCompile(`^[A-Z]{1,2}[0-9][0-9A-Z]?$`)
	// reODS is a GP practice's ODS code: a letter and five digits.
	reODS  = regexp.MustCompile(`^[A-Z][0-9]{5}$`)
	reName = regexp.MustCompile(`^[A-Za-z0-9 _.-]{1,64}$`)
)

// inPattern checks an attribute criterion's values: 1 to MaxCodes, each
// matching re.
func inPattern(vals []string, re *regexp.Regexp, at, plural, what string) error {
	if len(vals) == 0 || len(vals) > MaxCodes {
		return bad("%s: give 1 to %d %s", at, MaxCodes, plural)
	}
	for _, v := range vals {
		if !re.MatchString(v) {
			return bad("%s: %q is not %s", at, clip(v), what)
		}
	}
	return nil
}

// validator carries what checking one query learns: event criteria by id.
type validator struct {
	q      *Query
	ids    map[string]*Event
	nodes  int
	events []*Event
	ageAt  []string // event ids ages are taken at
	rate   bool     // within a rate's numerator or denominator
}

// Validate checks every field against the language's allow-lists and
// limits. It returns a *QueryError.
func (q *Query) Validate() error {
	if !catalog.ValidName(q.Dataset) {
		return bad("dataset: %s", "give a dataset name from GET /v1/datasets (lower-case letters, digits, '-' and '_')")
	}
	if q.Version < 0 {
		return bad("version must be a positive version number, or 0 for the latest")
	}
	if q.IndexDate != "" {
		if _, err := parseDate(q.IndexDate); err != nil {
			return bad("index_date: %v", err)
		}
	}
	switch q.Population {
	case "", PopulationAll:
	case PopulationAlive:
		if q.IndexDate == "" {
			return bad("population %q is taken at the index date; set index_date", PopulationAlive)
		}
	default:
		return bad("population is %q (the default with an index date) or %q", PopulationAlive, PopulationAll)
	}
	if math.IsNaN(q.Epsilon) || q.Epsilon < MinEpsilon || q.Epsilon > MaxEpsilon {
		return bad("epsilon must be at least %g and at most %g", MinEpsilon, MaxEpsilon)
	}
	if math.IsNaN(q.Delta) || q.Delta < 0 || q.Delta > MaxDelta {
		return bad("delta must be between 0 and %g", MaxDelta)
	}
	if q.SuppressBelow != 0 && (q.SuppressBelow < DefaultSuppress || q.SuppressBelow > 1000) {
		return bad("suppress_below may raise the threshold from %d to at most 1000, never lower it", DefaultSuppress)
	}
	if q.RoundTo != 0 && q.RoundTo != 5 {
		return bad("round_to is 5 (NHS-style rounding) or left out")
	}
	v := &validator{q: q, ids: map[string]*Event{}}
	if q.Criteria != nil {
		if err := v.criterion(q.Criteria, "criteria", 1); err != nil {
			return err
		}
	}
	if q.Cohorts != nil {
		if len(q.Cohorts) < 2 || len(q.Cohorts) > MaxCohorts {
			return bad("cohorts: 2 to %d cohorts side by side (one cohort is the criteria alone)", MaxCohorts)
		}
		for i, c := range q.Cohorts {
			at := fmt.Sprintf("cohorts[%d]", i)
			if !reName.MatchString(c.Name) {
				return bad("%s.name: letters, digits, spaces, '_', '.', '-' (at most 64)", at)
			}
			if slices.IndexFunc(q.Cohorts, func(o NamedCohort) bool { return o.Name == c.Name }) != i {
				return bad("%s.name: %q twice", at, c.Name)
			}
			if err := v.criterion(c.Criteria, at+".criteria", 1); err != nil {
				return err
			}
		}
	}
	if err := v.windows(); err != nil {
		return err
	}
	if len(q.Measures) == 0 {
		return bad("measures: ask for at least one, e.g. [{\"kind\": \"count\"}]")
	}
	if len(q.Measures) > MaxMeasures {
		return bad("measures: at most %d per query", MaxMeasures)
	}
	if q.ReportUnknowns {
		if q.Cohorts != nil || slices.ContainsFunc(q.Measures, func(m Measure) bool { return m.Kind == KindRate }) {
			return bad("report_unknowns: for a query's criteria, without cohorts or rates")
		}
		if attrs, _ := q.unknownAttributes(); len(attrs) == 0 {
			return bad("report_unknowns: the criteria test no attribute (%s)", strings.Join(attributes, ", "))
		}
	}
	needDelta := false
	for i := range q.Measures {
		if err := v.measure(&q.Measures[i], fmt.Sprintf("measures[%d]", i)); err != nil {
			return err
		}
		needDelta = needDelta || q.Measures[i].ByCode != ""
	}
	if needDelta && q.Delta == 0 {
		return bad("delta: a breakdown by_code selects partitions with DP and needs delta > 0 (e.g. 1e-6)")
	}
	if !needDelta && q.Delta != 0 {
		return bad("delta: only breakdowns by_code use delta; leave it out so no δ is charged")
	}
	return nil
}

func (v *validator) criterion(c *Criterion, at string, depth int) error {
	if c == nil {
		return bad("%s: empty criterion", at)
	}
	if depth > MaxDepth {
		return bad("%s: criteria nest more than %d deep", at, MaxDepth)
	}
	v.nodes++
	if v.nodes > MaxCriteria {
		return bad("criteria: at most %d criteria per query", MaxCriteria)
	}
	set := 0
	count := func(b bool) {
		if b {
			set++
		}
	}
	count(c.All != nil)
	count(c.Any != nil)
	count(c.Not != nil)
	count(c.Condition != nil)
	count(c.Medication != nil)
	count(c.Observation != nil)
	count(c.Encounter != nil)
	count(c.Procedure != nil)
	count(c.Immunisation != nil)
	count(c.Registered != nil)
	count(c.Age != nil)
	count(c.Sex != nil)
	count(c.Region != nil)
	count(c.District != nil)
	count(c.EthnicityGroup != nil)
	count(c.Practice != nil)
	count(c.AliveAt != "")
	count(c.Died != nil)
	if c.AgeAt != "" && c.Age == nil {
		return bad("%s.age_at goes with age", at)
	}
	if c.Unknown != "" {
		if c.attribute() == "" {
			return bad("%s.unknown: only attribute criteria (%s) take unknown", at, strings.Join(attributes, ", "))
		}
		if c.Unknown != UnknownNoMatch && c.Unknown != UnknownMatch {
			return bad("%s.unknown is %q (the default: a patient whose value is unknown does not match) or %q", at, UnknownNoMatch, UnknownMatch)
		}
	}
	if set != 1 {
		return bad("%s: a criterion holds exactly one of all, any, not, condition, medication, observation, encounter, procedure, immunisation, registered, age, sex, region, district, ethnicity_group, practice, alive_at, died (found %d)", at, set)
	}
	group := func(name string, cs []*Criterion) error {
		if len(cs) == 0 {
			return bad("%s.%s: a group needs at least one criterion", at, name)
		}
		for i, k := range cs {
			if err := v.criterion(k, fmt.Sprintf("%s.%s[%d]", at, name, i), depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	switch {
	case c.All != nil:
		return group("all", c.All)
	case c.Any != nil:
		return group("any", c.Any)
	case c.Not != nil:
		return v.criterion(c.Not, at+".not", depth+1)
	case c.Condition != nil:
		return v.event(c.Condition, "conditions", at+".condition")
	case c.Medication != nil:
		return v.event(c.Medication, "medications", at+".medication")
	case c.Observation != nil:
		return v.event(c.Observation, "observations", at+".observation")
	case c.Encounter != nil:
		return v.event(c.Encounter, "encounters", at+".encounter")
	case c.Procedure != nil:
		return v.event(c.Procedure, "procedures", at+".procedure")
	case c.Immunisation != nil:
		return v.event(c.Immunisation, "immunizations", at+".immunisation")
	case c.Died != nil:
		if c.Died.Window != nil {
			return v.window(c.Died.Window, at+".died.window")
		}
		return nil
	case c.Registered != nil:
		if v.q.IndexDate == "" && !v.rate {
			return bad("%s.registered: registration is taken up to the index date; set index_date", at)
		}
		if c.Registered.DaysBefore < 0 || c.Registered.DaysBefore > 36600 || c.Registered.GapDays < 0 || c.Registered.GapDays > 3660 {
			return bad("%s.registered: days_before from 0 to 36600, gap_days from 0 to 3660", at)
		}
	case c.Age != nil:
		switch {
		case c.AgeAt == "" || c.AgeAt == "index":
			if v.q.IndexDate == "" && !v.rate {
				return bad("%s.age: ages are taken at the index date; set index_date (or age_at)", at)
			}
		case reID.MatchString(c.AgeAt):
			v.ageAt = append(v.ageAt, c.AgeAt)
		default:
			if _, err := parseDate(c.AgeAt); err != nil {
				return bad("%s.age_at: \"index\", a date or the id of an event criterion (%v)", at, err)
			}
		}
		return checkRange(c.Age, at+".age", 0, 130)
	case c.Sex != nil:
		return inDomain(c.Sex, Sexes, at+".sex")
	case c.Region != nil:
		return inDomain(c.Region, PostcodeAreas, at+".region")
	case c.District != nil:
		return inPattern(c.District, reDistrict, at+".district", "districts", "a postcode district such as \"LS6\"")
	case c.EthnicityGroup != nil:
		return inDomain(c.EthnicityGroup, EthnicityGroups, at+".ethnicity_group")
	case c.Practice != nil:
		return inPattern(c.Practice, reODS, at+".practice", "practices", "a GP practice ODS code such as \"B86011\"")
	case c.AliveAt != "":
		if c.AliveAt == "index" {
			if v.q.IndexDate == "" && !v.rate {
				return bad("%s.alive_at: \"index\" needs index_date", at)
			}
			return nil
		}
		if _, err := parseDate(c.AliveAt); err != nil {
			return bad("%s.alive_at: %v (or \"index\")", at, err)
		}
	}
	return nil
}

var reEcho = regexp.MustCompile(`^[A-Za-z0-9 ._/+-]{1,24}$`)

// clip is a refused value as an error message may quote it: short plain
// values are echoed, anything else is not.
func clip(s string) string {
	if reEcho.MatchString(s) {
		return s
	}
	return "(a value with unexpected characters)"
}

func inDomain(vals, domain []string, at string) error {
	if len(vals) == 0 {
		return bad("%s: give at least one value", at)
	}
	for _, s := range vals {
		if !slices.Contains(domain, s) {
			return bad("%s: %q is not one of %s", at, clip(s), strings.Join(domain[:min(len(domain), 8)], ", ")+map[bool]string{true: ", …", false: ""}[len(domain) > 8])
		}
	}
	return nil
}

func checkRange(r *Range, at string, lo, hi float64) error {
	if r.Min == nil && r.Max == nil {
		return bad("%s: give min, max or both", at)
	}
	for _, x := range []*float64{r.Min, r.Max} {
		if x != nil && (math.IsNaN(*x) || *x < lo || *x > hi) {
			return bad("%s: bounds must lie between %g and %g", at, lo, hi)
		}
	}
	if r.Min != nil && r.Max != nil && *r.Min > *r.Max {
		return bad("%s: min %g is above max %g", at, *r.Min, *r.Max)
	}
	return nil
}

func (v *validator) event(e *Event, table, at string) error {
	if e.ID != "" {
		if !reID.MatchString(e.ID) {
			return bad("%s.id: use lower-case letters, digits and '_' (at most 32), starting with a letter", at)
		}
		if e.ID == "index" {
			return bad("%s.id: \"index\" is reserved for the index date", at)
		}
		if _, dup := v.ids[e.ID]; dup {
			return bad("%s.id: %q is used twice", at, e.ID)
		}
		v.ids[e.ID] = e
	}
	if (e.Classes != nil || e.AdmissionSources != nil) && table != "encounters" {
		return bad("%s: only encounters have classes and admission sources", at)
	}
	if e.Classes != nil {
		if err := inDomain(e.Classes, EncounterClasses, at+".classes"); err != nil {
			return err
		}
	}
	if e.AdmissionSources != nil {
		if len(e.AdmissionSources) == 0 || len(e.AdmissionSources) > MaxCodes {
			return bad("%s.admission_sources: give 1 to %d codes", at, MaxCodes)
		}
		for _, a := range e.AdmissionSources {
			if !reAdmission.MatchString(a) {
				return bad("%s.admission_sources: %q is not an admission source code", at, clip(a))
			}
		}
	}
	if e.MinCount < 0 || e.MinCount > 1000 {
		return bad("%s.min_count: between 1 and 1000", at)
	}
	if e.MaxCount != 0 && (e.MaxCount < max(e.MinCount, 1) || e.MaxCount > 1000) {
		return bad("%s.max_count: from min_count (1 by default) to 1000; for \"at most N, none included\" write not with min_count N+1", at)
	}
	if err := checkEventFilter(table, e.Codes, e.Types, e.Unit, at); err != nil {
		return err
	}
	if e.Value != nil {
		if table != "observations" {
			return bad("%s.value: only observations have values", at)
		}
		if err := checkRange(e.Value, at+".value", -MaxBound, MaxBound); err != nil {
			return err
		}
	}
	if e.Window != nil {
		if err := v.window(e.Window, at+".window"); err != nil {
			return err
		}
	}
	v.events = append(v.events, e)
	return nil
}

// checkEventFilter checks the code list, encounter types and unit of a
// criterion or value on table.
func checkEventFilter(table string, codes *Codes, types []string, unit, at string) error {
	switch table {
	case "encounters":
		if codes != nil {
			return bad("%s: encounters have types, not codes", at)
		}
		if types != nil {
			if err := inDomain(types, EncounterTypes, at+".types"); err != nil {
				return err
			}
		}
	default:
		if types != nil {
			return bad("%s.types: only encounters have types", at)
		}
		if codes == nil {
			return bad("%s.codes: give a code list", at)
		}
		if err := checkCodes(codes, table, at+".codes"); err != nil {
			return err
		}
	}
	if unit != "" {
		if table != "observations" {
			return bad("%s.unit: only observations have units", at)
		}
		if !reUnit.MatchString(unit) {
			return bad("%s.unit: not a UCUM unit such as \"mmol/mol\"", at)
		}
	}
	return nil
}

func checkCodes(c *Codes, table, at string) error {
	n := len(c.SNOMED) + len(c.ICD10) + len(c.DMD) + len(c.OPCS4)
	if c.Codelist != "" {
		if _, _, err := ParseCodelistRef(c.Codelist); err != nil {
			return bad("%s.codelist: %v", at, err)
		}
	} else if n == 0 {
		return bad("%s: the code list is empty", at)
	}
	if n > MaxCodes {
		return bad("%s: at most %d codes", at, MaxCodes)
	}
	switch table {
	case "conditions":
		if len(c.DMD) > 0 {
			return bad("%s.dmd: conditions are coded in SNOMED CT or ICD-10", at)
		}
	case "medications":
		if len(c.SNOMED)+len(c.ICD10) > 0 {
			return bad("%s: medications are coded in dm+d", at)
		}
	case "observations":
		if len(c.ICD10)+len(c.DMD) > 0 {
			return bad("%s: observations are coded in SNOMED CT", at)
		}
	case "procedures":
		if len(c.ICD10)+len(c.DMD) > 0 {
			return bad("%s: procedures are coded in SNOMED CT or OPCS-4", at)
		}
	case "immunizations":
		if len(c.ICD10) > 0 {
			return bad("%s: immunisations are coded in SNOMED CT or dm+d", at)
		}
	}
	if table != "procedures" && len(c.OPCS4) > 0 {
		return bad("%s.opcs4: only procedures are coded in OPCS-4", at)
	}
	for _, s := range c.OPCS4 {
		if !reOPCS4.MatchString(s) {
			return bad("%s.opcs4: %q is not an OPCS-4 code or prefix such as \"K40\" or \"K40.1\"", at, clip(s))
		}
	}
	for _, s := range c.SNOMED {
		if !ingest.ValidSCTID(s) {
			return bad("%s.snomed: %q is not a valid SNOMED CT concept id (check digit or partition)", at, clip(s))
		}
	}
	for _, s := range c.DMD {
		if !ingest.ValidSCTID(s) {
			return bad("%s.dmd: %q is not a valid dm+d concept id", at, clip(s))
		}
	}
	for _, s := range c.ICD10 {
		if !ingest.ValidICD10(s) {
			return bad("%s.icd10: %q is not an ICD-10 code or prefix such as \"E11\" or \"E11.9\"", at, clip(s))
		}
	}
	return nil
}

func (v *validator) window(w *Window, at string) error {
	abs := w.From != "" || w.To != ""
	rel := w.RelativeTo != "" || w.DaysBefore != nil || w.DaysAfter != nil
	if abs == rel {
		return bad("%s: give from/to dates, or relative_to with days_before/days_after", at)
	}
	if abs {
		var from, to time.Time
		var err error
		if w.From != "" {
			if from, err = parseDate(w.From); err != nil {
				return bad("%s.from: %v", at, err)
			}
		}
		if w.To != "" {
			if to, err = parseDate(w.To); err != nil {
				return bad("%s.to: %v", at, err)
			}
		}
		if w.From != "" && w.To != "" && to.Before(from) {
			return bad("%s: from %s is after to %s", at, w.From, w.To)
		}
		if slices.Contains(w.Until, "deregistration") {
			return bad("%s.until: \"deregistration\" ends follow-up from an anchor; give relative_to", at)
		}
		return checkUntil(w.Until, at)
	}
	if w.RelativeTo == "" {
		return bad("%s.relative_to: \"index\" or the id of an event criterion", at)
	}
	if w.RelativeTo == "index" && v.q.IndexDate == "" && !v.rate {
		return bad("%s.relative_to: \"index\" needs index_date", at)
	}
	if w.RelativeTo == "interval" {
		if !v.rate {
			return bad("%s.relative_to: \"interval\" is for a rate's numerator and denominator", at)
		}
		if w.DaysBefore != nil || w.DaysAfter != nil || w.Anchor != "" {
			return bad("%s: a window relative to the interval is the interval: no days_before, days_after or anchor", at)
		}
		return nil
	}
	if w.DaysBefore == nil && w.DaysAfter == nil {
		return bad("%s: give days_before, days_after or both", at)
	}
	var before, after int
	for _, d := range []struct {
		p *int
		v *int
	}{{w.DaysBefore, &before}, {w.DaysAfter, &after}} {
		if d.p != nil {
			if *d.p < -36500 || *d.p > 36500 {
				return bad("%s: days_before and days_after lie between -36500 and 36500", at)
			}
			*d.v = *d.p
		}
	}
	if -before > after {
		return bad("%s: the window is empty (it runs from days_before before the anchor to days_after after it; a negative value moves that end across the anchor)", at)
	}
	switch w.Anchor {
	case "", "first", "last", "nth":
		if w.Anchor != "" && (w.RelativeTo == "index" || w.RelativeTo == "") {
			return bad("%s.anchor: first, last or nth date of the criterion relative_to names; the index date has one", at)
		}
	default:
		return bad("%s.anchor: first (the default), last or nth (with occurrence)", at)
	}
	if (w.Anchor == "nth") != (w.Occurrence != 0) || w.Occurrence < 0 || w.Occurrence > 1000 {
		return bad("%s: anchor nth goes with occurrence, from 1 to 1000", at)
	}
	return checkUntil(w.Until, at)
}

// checkUntil checks a window's until: "death", "deregistration", or
// dates.
func checkUntil(until []string, at string) error {
	if len(until) > 4 {
		return bad("%s.until: at most 4", at)
	}
	for _, u := range until {
		if u == "death" || u == "deregistration" {
			continue
		}
		if _, err := parseDate(u); err != nil {
			return bad("%s.until: \"death\", \"deregistration\" or a date (%v)", at, err)
		}
	}
	return nil
}

// windows checks, once every id is known, that relative windows name an
// event criterion and form no cycle.
func (v *validator) windows() error {
	for _, id := range v.ageAt {
		if _, ok := v.ids[id]; !ok {
			return bad("age_at: no event criterion has id %q", clip(id))
		}
	}
	next := func(e *Event) string {
		if e.Window == nil || e.Window.RelativeTo == "" || e.Window.RelativeTo == "index" {
			return ""
		}
		return e.Window.RelativeTo
	}
	for _, e := range v.events {
		if r := next(e); r != "" {
			if _, ok := v.ids[r]; !ok {
				return bad("window.relative_to: no event criterion has id %q", clip(r))
			}
		}
		seen := map[*Event]bool{}
		for cur := e; cur != nil; {
			if seen[cur] {
				return bad("window.relative_to: criteria refer to each other in a cycle")
			}
			seen[cur] = true
			r := next(cur)
			if r == "" {
				break
			}
			cur = v.ids[r]
		}
	}
	return nil
}

func (v *validator) measure(m *Measure, at string) error {
	if m.Name != "" && !reName.MatchString(m.Name) {
		return bad("%s.name: letters, digits, spaces, '_', '.', '-' (at most 64)", at)
	}
	switch m.Kind {
	case KindCount:
		if m.Of != nil || m.Lower != nil || m.Upper != nil || m.Ranks != nil {
			return bad("%s: a count takes no of, lower, upper or ranks", at)
		}
		if m.ByCode != "" {
			if len(m.By) > 0 {
				return bad("%s: use by or by_code, not both", at)
			}
			if !slices.Contains([]string{"conditions", "medications", "observations"}, m.ByCode) {
				return bad("%s.by_code: conditions, medications or observations", at)
			}
			if m.MaxPartitions < 0 || m.MaxPartitions > MaxPartitions {
				return bad("%s.max_partitions: between 1 and %d", at, MaxPartitions)
			}
			if m.Window != nil {
				return v.window(m.Window, at+".window")
			}
			return nil
		}
		if m.MaxPartitions != 0 || m.Window != nil {
			return bad("%s: max_partitions and window go with by_code", at)
		}
		return v.by(m, at)
	case KindSum, KindMean, KindQuantiles:
		if m.By != nil || m.ByCode != "" || m.MaxPartitions != 0 || m.Window != nil || m.YearOf != "" {
			return bad("%s: breakdowns are for counts; %s takes of, lower, upper", at, m.Kind)
		}
		if m.Of == nil {
			return bad("%s.of: say which per-patient value, e.g. {\"kind\": \"age\"}", at)
		}
		if err := v.value(m.Of, at+".of"); err != nil {
			return err
		}
		if m.Lower == nil || m.Upper == nil {
			if m.Of.Kind != ValueAge {
				return bad("%s: lower and upper bounds are required (values are clamped to them)", at)
			}
			lo, hi := 0.0, 110.0
			m.Lower, m.Upper = &lo, &hi
		}
		lo, hi := *m.Lower, *m.Upper
		if math.IsNaN(lo) || math.IsNaN(hi) || math.Abs(lo) > MaxBound || math.Abs(hi) > MaxBound {
			return bad("%s: bounds must lie within ±%g", at, MaxBound)
		}
		if lo >= hi {
			return bad("%s: lower %g must be below upper %g", at, lo, hi)
		}
		if m.Kind == KindQuantiles {
			if len(m.Ranks) == 0 || len(m.Ranks) > MaxRanks {
				return bad("%s.ranks: give 1 to %d ranks such as [0.25, 0.5, 0.75]", at, MaxRanks)
			}
			for _, r := range m.Ranks {
				if math.IsNaN(r) || r < 0 || r > 1 {
					return bad("%s.ranks: each rank lies between 0 and 1", at)
				}
			}
		} else if m.Ranks != nil {
			return bad("%s.ranks: only quantiles take ranks", at)
		}
		return nil
	case KindRate:
		if m.Of != nil || m.Lower != nil || m.Upper != nil || m.Ranks != nil || m.ByCode != "" || m.YearOf != "" || m.Window != nil || m.MaxPartitions != 0 {
			return bad("%s: a rate takes numerator, denominator, intervals and by", at)
		}
		if m.Numerator == nil {
			return bad("%s.numerator: say which patients of the denominator count, e.g. {\"observation\": {..., \"window\": {\"relative_to\": \"interval\"}}}", at)
		}
		iv := m.Intervals
		if iv == nil || !slices.Contains([]string{"month", "quarter", "year"}, iv.Every) {
			return bad("%s.intervals: {\"every\": \"month\" (or quarter, year), \"from\": date, \"to\": date}", at)
		}
		from, err := parseDate(iv.From)
		if err != nil {
			return bad("%s.intervals.from: %v", at, err)
		}
		to, err := parseDate(iv.To)
		if err != nil {
			return bad("%s.intervals.to: %v", at, err)
		}
		if to.Before(from) {
			return bad("%s.intervals: from %s is after to %s", at, iv.From, iv.To)
		}
		if n := len(iv.periods()); n > MaxIntervals {
			return bad("%s.intervals: at most %d intervals", at, MaxIntervals)
		}
		for _, k := range m.By {
			if k == "year" {
				return bad("%s.by: a rate is already by interval; year is not a key of it", at)
			}
		}
		cells := len(iv.periods())
		for _, k := range m.By {
			cells *= len(publicKeys[k]) + 1
		}
		if cells > MaxCells {
			return bad("%s: %d interval cells is more than %d", at, cells, MaxCells)
		}
		v.rate = true
		defer func() { v.rate = false }()
		if m.Denominator != nil {
			if err := v.criterion(m.Denominator, at+".denominator", 1); err != nil {
				return err
			}
		}
		if err := v.criterion(m.Numerator, at+".numerator", 1); err != nil {
			return err
		}
		return v.by(m, at)
	}
	return bad("%s.kind: count, sum, mean, quantiles or rate", at)
}

func (v *validator) by(m *Measure, at string) error {
	if len(m.By) > MaxBy {
		return bad("%s.by: at most %d keys", at, MaxBy)
	}
	cells := 1
	for i, k := range m.By {
		d, ok := publicKeys[k]
		if !ok {
			return bad("%s.by: %q is not a public key (age_band, sex, region, ethnicity_group, year)", at, clip(k))
		}
		if slices.Index(m.By, k) != i {
			return bad("%s.by: %q twice", at, k)
		}
		n := len(d)
		if k == "year" {
			from, to, err := v.yearDomain(m, at)
			if err != nil {
				return err
			}
			n = to - from + 2
		}
		cells *= n
	}
	if m.YearOf != "" && !slices.Contains(m.By, "year") {
		return bad("%s.year_of: goes with by: [\"year\"]", at)
	}
	if cells > MaxCells {
		return bad("%s.by: %d cells is more than %d", at, cells, MaxCells)
	}
	return nil
}

// yearDomain is the public domain of a year breakdown: the years of the
// year_of criterion's window, which must be bounded and absolute or
// relative to the index date.
func (v *validator) yearDomain(m *Measure, at string) (from, to int, err error) {
	e, ok := v.ids[m.YearOf]
	if m.YearOf == "" || !ok {
		return 0, 0, bad("%s.year_of: name the event criterion (its id) whose first date gives the year", at)
	}
	lo, hi, ok := v.absWindow(e.Window)
	if !ok {
		return 0, 0, bad("%s.year_of: criterion %q needs a window with both ends, as dates or relative to the index date, so that the years are public", at, m.YearOf)
	}
	if hi.Year()-lo.Year() > 50 {
		return 0, 0, bad("%s.year_of: at most 50 years", at)
	}
	return lo.Year(), hi.Year(), nil
}

// absWindow resolves a window to dates when it is absolute or relative to
// the index date and has both ends.
func (v *validator) absWindow(w *Window) (lo, hi time.Time, ok bool) {
	if w == nil {
		return lo, hi, false
	}
	if w.From != "" && w.To != "" {
		lo, _ = parseDate(w.From)
		hi, _ = parseDate(w.To)
		return lo, hi, true
	}
	if w.RelativeTo == "index" && w.DaysBefore != nil && w.DaysAfter != nil {
		idx, _ := parseDate(v.q.IndexDate)
		return idx.AddDate(0, 0, -*w.DaysBefore), idx.AddDate(0, 0, *w.DaysAfter), true
	}
	return lo, hi, false
}

func (v *validator) value(x *Value, at string) error {
	switch x.Kind {
	case ValueAge:
		if v.q.IndexDate == "" {
			return bad("%s: age is taken at the index date; set index_date", at)
		}
		if x.Table != "" || x.Codes != nil || x.Types != nil || x.Unit != "" || x.Pick != "" || x.Window != nil {
			return bad("%s: age takes no other fields", at)
		}
		return nil
	case ValueObservation:
		if x.Table != "" && x.Table != "observations" {
			return bad("%s.table: an observation value comes from observations", at)
		}
		if x.Types != nil {
			return bad("%s.types: observations have codes", at)
		}
		if !slices.Contains([]string{"", "first", "last", "min", "max", "mean"}, x.Pick) {
			return bad("%s.pick: first, last (the default), min, max or mean", at)
		}
		if err := checkEventFilter("observations", x.Codes, nil, x.Unit, at); err != nil {
			return err
		}
	case ValueEvents:
		if !slices.Contains([]string{"conditions", "medications", "observations", "encounters", "procedures", "immunizations"}, x.Table) {
			return bad("%s.table: conditions, medications, observations, encounters, procedures or immunizations", at)
		}
		if x.Pick != "" {
			return bad("%s.pick: events are counted, not picked", at)
		}
		if x.Codes == nil && x.Table != "encounters" {
			return bad("%s.codes: give a code list", at)
		}
		if err := checkEventFilter(x.Table, x.Codes, x.Types, x.Unit, at); err != nil {
			return err
		}
	default:
		return bad("%s.kind: age, observation or events", at)
	}
	if x.Window != nil {
		return v.window(x.Window, at+".window")
	}
	return nil
}

// parseDate reads an ISO date between 1900 and 2100.
func parseDate(s string) (time.Time, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return t, fmt.Errorf("%q is not a date as YYYY-MM-DD", clip(s))
	}
	if t.Year() < 1900 || t.Year() > 2100 {
		return t, fmt.Errorf("%s lies outside 1900-2100", s)
	}
	return t, nil
}
