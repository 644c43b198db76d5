package deid

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// A patientRow is one de-identified patient held until the k-anonymity
// check has seen them all. It holds no identifier: year and month of
// birth, an age band, coarse places, the month of death.
//
// It holds no pointer: places and practices are numbers from a names
// table, so a million rows are 32 MB that the garbage collector never
// scans. Nor does it hold the pseudonym: the known patients have it, in
// the same order.
type patientRow struct {
	yob      int16
	mob      int8
	band     uint8
	sex      uint8
	eth      byte   // NHS ethnic category code, 0 for none
	district uint32 // names: postcode district, 0 for none
	area     uint32 // names: postcode area, 0 for none
	gp       uint32 // names: practice code, 0 for none
	dy       int16  // year of death, 0 for none
	dm       int8   // month of death, 0 for none
	level    uint8  // the generalisation path's step reached, see path
}

// names numbers the distinct strings of patient rows; 0 is "".
type names struct {
	ids  map[string]uint32
	list []string
}

func newNames() *names { return &names{ids: map[string]uint32{"": 0}, list: []string{""}} }

func (n *names) id(s string) uint32 {
	if v, ok := n.ids[s]; ok {
		return v
	}
	v := uint32(len(n.list))
	s = strings.Clone(s) // s may view an Arrow buffer
	n.ids[s] = v
	n.list = append(n.list, s)
	return v
}

// The quasi-identifiers: every patient attribute the patients table
// releases (the pseudonym aside). Each has a hierarchy of levels, most
// precise first, "none" (withheld) last.
const (
	qiBirth = iota
	qiSex
	qiPlace
	qiEthnicity
	qiPractice
	qiDeath
	nQI
)

var (
	qiNames     = [nQI]string{"birth", "sex", "place", "ethnicity", "practice", "death"}
	hierarchies = [nQI][]string{
		{"month", "year", "band", "none"}, // year and month of birth and the age band; the year; the band
		{"sex", "none"},
		{"district", "area", "none"},  // postcode district and area; the area
		{"category", "group", "none"}, // NHS ethnic category and its group; the group
		{"practice", "none"},          // the registered practice's ODS code (with keep_gp_practice)
		{"month", "year", "none"},     // month and year of death; the year
	}
)

// DefaultGeneralisation is the default policy's generalisation path:
// the steps a patient in a class smaller than k takes, one at a time,
// until their class holds k patients; past the last, every
// quasi-identifier is withheld (suppressed). What cohort queries use
// most (age, sex, region) goes last; the ethnic category, which no query
// reads, and the month of death, which few patients have, go first.
var DefaultGeneralisation = []string{"ethnicity:group", "death:year", "place:area", "birth:year",
	"practice:none", "birth:band", "place:none", "ethnicity:none"}

// A path is a generalisation path: state 0 releases everything, each
// later state one step coarser, the last withholds every quasi-identifier.
type path struct {
	steps  []string     // the state's name: "none", a step, "suppressed"
	levels [][nQI]uint8 // each state's level of each quasi-identifier
	qi     [nQI]bool    // the policy's quasi-identifiers, which classes are over
}

func (p path) last() uint8 { return uint8(len(p.steps) - 1) }

// parseStep reads "attribute:level".
func parseStep(s string) (qi int, level uint8, err error) {
	a, l, _ := strings.Cut(s, ":")
	qi = slices.Index(qiNames[:], a)
	if qi < 0 {
		return 0, 0, fmt.Errorf("policy: generalisation step %q: %q is not a quasi-identifier (%s)", s, a, strings.Join(qiNames[:], ", "))
	}
	i := slices.Index(hierarchies[qi], l)
	if i <= 0 {
		return 0, 0, fmt.Errorf("policy: generalisation step %q: %s generalises to %s", s, a, strings.Join(hierarchies[qi][1:], ", "))
	}
	if qi == qiDeath && l == "none" {
		return 0, 0, fmt.Errorf("policy: generalisation step %q: a death is withheld only by suppression (a patient with none reads as alive)", s)
	}
	return qi, uint8(i), nil
}

// newPath builds the policy's path (validated by Policy.Validate): its
// steps but those of attributes that are not quasi-identifiers, or not
// released (the practice without keep_gp_practice).
func newPath(policy Policy) path {
	var cur [nQI]uint8
	if !policy.KeepGPPractice {
		cur[qiPractice] = 1
	}
	p := path{steps: []string{"none"}, levels: [][nQI]uint8{cur}}
	for _, name := range policy.QuasiIdentifiers {
		if qi := slices.Index(qiNames[:], name); qi >= 0 {
			p.qi[qi] = true
		}
	}
	for _, s := range policy.Generalisation {
		qi, l, err := parseStep(s)
		if err != nil || !p.qi[qi] || l <= cur[qi] {
			continue
		}
		cur[qi] = l
		p.steps = append(p.steps, s)
		p.levels = append(p.levels, cur)
	}
	for qi := range cur {
		cur[qi] = uint8(len(hierarchies[qi]) - 1)
	}
	p.steps = append(p.steps, "suppressed")
	p.levels = append(p.levels, cur)
	return p
}

// validSteps checks the quasi-identifiers and the generalisation path:
// known steps, each coarser than the same attribute's before it.
func validSteps(qis, steps []string) error {
	for _, q := range qis {
		if !slices.Contains(qiNames[:], q) {
			return fmt.Errorf("policy: quasi_identifiers: %q is not a patient attribute (%s)", q, strings.Join(qiNames[:], ", "))
		}
	}
	var cur [nQI]uint8
	for _, s := range steps {
		qi, l, err := parseStep(s)
		if err != nil {
			return err
		}
		if l <= cur[qi] {
			return fmt.Errorf("policy: generalisation step %q is no coarser than a step before it", s)
		}
		cur[qi] = l
	}
	return nil
}

var sexes = []string{"male", "female", "other", "unknown"}

// ageBands are five-year bands, 90+ last.
func ageBand(age int) uint8 {
	if age < 0 {
		age = 0
	}
	return uint8(min(age/5, 18))
}

// bandNames are the age bands' published names, "0-4" to "90+".
var bandNames = func() [19]string {
	var n [19]string
	for b := range 18 {
		n[b] = strconv.Itoa(b*5) + "-" + strconv.Itoa(b*5+4)
	}
	n[18] = "90+"
	return n
}()

// ethnicityGroup maps an NHS ethnic category to its group.
func ethnicityGroup(c byte) string {
	switch {
	case c >= 'A' && c <= 'C':
		return "White"
	case c >= 'D' && c <= 'G':
		return "Mixed"
	case c >= 'H' && c <= 'L':
		return "Asian"
	case c >= 'M' && c <= 'P':
		return "Black"
	case c == 'R' || c == 'S':
		return "Other"
	}
	return "Not stated"
}

// groupNames are the groups by their first letters, which differ.
var groupNames = map[byte]string{'W': "White", 'M': "Mixed", 'A': "Asian", 'B': "Black", 'O': "Other", 'N': "Not stated"}

// district and area of a normalised postcode ("LS6 2AB" → "LS6", "LS").
func districtOf(pc string) (string, string) {
	d, _, ok := strings.Cut(pc, " ")
	if !ok {
		return "", ""
	}
	i := 0
	for i < len(d) && d[i] >= 'A' && d[i] <= 'Z' {
		i++
	}
	return d, d[:i]
}

// A class is what the patients table releases of a patient's
// quasi-identifiers, every column but the pseudonym, with 0 (255 for the
// band and sex) for a null. The check counts classes and the table is
// written from them, so the classes it counts are the published ones.
type class struct {
	yob      int16
	mob      int8
	band     uint8
	sex      uint8
	group    byte // the group's first letter
	eth      byte
	district uint32
	area     uint32
	gp       uint32
	dy       int16
	dm       int8
}

// release is the class of r at its state.
func (p path) release(r *patientRow) class {
	lv := &p.levels[r.level]
	c := class{band: 255, sex: 255}
	switch lv[qiBirth] {
	case 0:
		c.yob, c.mob, c.band = r.yob, r.mob, r.band
	case 1:
		c.yob, c.band = r.yob, r.band
	case 2:
		c.band = r.band
	}
	if lv[qiSex] == 0 {
		c.sex = r.sex
	}
	switch lv[qiPlace] {
	case 0:
		c.district, c.area = r.district, r.area
	case 1:
		c.area = r.area
	}
	switch lv[qiEthnicity] {
	case 0:
		c.eth, c.group = r.eth, ethnicityGroup(r.eth)[0]
	case 1:
		c.group = ethnicityGroup(r.eth)[0]
	}
	if lv[qiPractice] == 0 {
		c.gp = r.gp
	}
	switch lv[qiDeath] {
	case 0:
		c.dy, c.dm = r.dy, r.dm
	case 1:
		c.dy = r.dy
	}
	return c
}

// key is what the classes are counted by: the class without the
// attributes that are not quasi-identifiers.
func (p path) key(r *patientRow) class {
	c := p.release(r)
	if !p.qi[qiBirth] {
		c.yob, c.mob, c.band = 0, 0, 255
	}
	if !p.qi[qiSex] {
		c.sex = 255
	}
	if !p.qi[qiPlace] {
		c.district, c.area = 0, 0
	}
	if !p.qi[qiEthnicity] {
		c.eth, c.group = 0, 0
	}
	if !p.qi[qiPractice] {
		c.gp = 0
	}
	if !p.qi[qiDeath] {
		c.dy, c.dm = 0, 0
	}
	return c
}

// packed is a class key in two words: key(r) packed, its place as a
// number of the (district, area) pair. Hashing 16 bytes is several times
// quicker than the class's fields.
type packed [2]uint64

func (p path) packed(r *patientRow, place, areaOnly uint32) packed {
	c := p.key(r)
	var pl uint32
	switch {
	case c.district != 0:
		pl = place
	case c.area != 0:
		pl = areaOnly
	}
	return packed{uint64(uint16(c.yob)) | uint64(uint16(c.dy))<<16 | uint64(c.mob&15)<<32 | uint64(c.dm&15)<<36 |
		uint64(c.band&31)<<40 | uint64(c.sex&7)<<45 | uint64(c.group)<<48 | uint64(c.eth)<<56, uint64(pl) | uint64(c.gp)<<32}
}

// placeIDs numbers the (district, area) pairs of rows, and the pairs with
// the district dropped; 0 is neither.
func placeIDs(rows []patientRow) (place, areaOnly []uint32) {
	ids := map[uint64]uint32{0: 0}
	id := func(district, area uint32) uint32 {
		k := uint64(district)<<32 | uint64(area)
		v, ok := ids[k]
		if !ok {
			v = uint32(len(ids))
			ids[k] = v
		}
		return v
	}
	place, areaOnly = make([]uint32, len(rows)), make([]uint32, len(rows))
	for i := range rows {
		place[i], areaOnly[i] = id(rows[i].district, rows[i].area), id(0, rows[i].area)
	}
	return place, areaOnly
}

// had is the most precise level of each quasi-identifier r has: an
// attribute the extract does not give (no postcode, no ethnic category,
// no death) cannot be generalised, so its level is where it starts.
func (r *patientRow) had() [nQI]uint8 {
	var h [nQI]uint8
	if r.district == 0 {
		h[qiPlace] = 2
	}
	if r.eth == 0 {
		h[qiEthnicity] = 1 // "Not stated" either way
	}
	if r.gp == 0 {
		h[qiPractice] = 1
	}
	if r.dy == 0 {
		h[qiDeath] = 2
	}
	return h
}

// KAnonymity reports what the k-anonymity check did.
type KAnonymity struct {
	K        int `json:"k"`
	Patients int `json:"patients"`
	// QuasiIdentifiers are the attributes the classes are over (the
	// policy's); Path is the generalisation path taken, the policy's
	// steps that apply; Levels counts the patients at each of its states
	// ("none", a step, "suppressed").
	QuasiIdentifiers []string       `json:"quasi_identifiers,omitempty"`
	Path             []string       `json:"path,omitempty"`
	Levels           map[string]int `json:"patients_by_level"`
	// Generalised counts patients released with at least one
	// quasi-identifier coarser than the extract gave it, and not
	// suppressed; Suppressed, those with every one withheld (in a class
	// of at least k too: if fewer than k needed it, more are suppressed
	// from classes that keep k without them). ByAttribute counts, of the
	// generalised, the patients whose attribute was released at each
	// coarser level ("birth" → "year": year of birth without the month).
	// Reports written before December 2026 have no ByAttribute, and
	// those before its first days counted every patient past the first
	// level as suppressed.
	Generalised int                       `json:"generalised"`
	Suppressed  int                       `json:"suppressed"`
	ByAttribute map[string]map[string]int `json:"generalised_by_attribute,omitempty"`
}

// oldLevelNames are the levels of reports written before the check
// covered every quasi-identifier.
var oldLevelNames = []string{"district dropped", "area and month of birth dropped", "ethnicity dropped"}

// Summary is the report in words.
func (k KAnonymity) Summary() string {
	var parts []string
	if k.ByAttribute == nil { // an older report
		generalised := 0
		for _, l := range oldLevelNames {
			if n := k.Levels[l]; n > 0 {
				generalised += n
				parts = append(parts, fmt.Sprintf("%d %s", n, l))
			}
		}
		return fmt.Sprintf("k-anonymity (k=%d): %d of %d patients generalised%s, %d suppressed (every quasi-identifier dropped)",
			k.K, generalised, k.Patients, inParens(parts), k.Levels["suppressed"])
	}
	for i, qi := range qiNames {
		for _, l := range hierarchies[i][1:] {
			if n := k.ByAttribute[qi][l]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s to %s %d", qi, l, n))
			}
		}
	}
	return fmt.Sprintf("k-anonymity (k=%d over %s): %d of %d patients generalised%s, %d suppressed (every quasi-identifier withheld)",
		k.K, strings.Join(k.QuasiIdentifiers, ", "), k.Generalised, k.Patients, inParens(parts), k.Suppressed)
}

func inParens(parts []string) string {
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// kanonymise moves each patient along the path until every released
// class holds at least k patients, or the patient is suppressed; then,
// if fewer than k are suppressed, suppresses more until k are.
func kanonymise(rows []patientRow, p path, k int) KAnonymity {
	place, areaOnly := placeIDs(rows)
	keyOf := func(i int32) packed { return p.packed(&rows[i], place[i], areaOnly[i]) }
	classes := make(map[packed]int32, len(rows)) // at first nearly every patient is a class
	var counts []int32
	classOf := func(i int32) int32 {
		key := keyOf(i)
		c, ok := classes[key]
		if !ok {
			c = int32(len(counts))
			classes[key] = c
			counts = append(counts, 0)
		}
		return c
	}
	cls := make([]int32, len(rows)) // each row's class at its state
	for i := range rows {
		cls[i] = classOf(int32(i))
		counts[cls[i]]++
	}
	last := p.last()
	small := func(i int32) bool { return rows[i].level < last && counts[cls[i]] < int32(k) }
	var raise []int32
	for i := range rows {
		if small(int32(i)) {
			raise = append(raise, int32(i))
		}
	}
	// Each pass moves every row of a class smaller than k one step at
	// once. Only the rows just moved can be in one next: a class that
	// loses rows loses all of them (or is the suppressed class, never
	// left), and one that gains rows only grows. So after the first
	// count, the passes touch those rows alone, not every patient again.
	//
	// A step that changes nothing the row releases (the year of death of
	// a patient alive, the ethnic category of one without) leaves it in
	// its class and costs no look-up. (Taking the next step at once
	// instead would be quicker still, but a row that waits a pass can be
	// joined by others: at k = 11, 35% more patients were suppressed.)
	for len(raise) > 0 {
		for _, i := range raise {
			old := keyOf(i)
			rows[i].level++
			if keyOf(i) == old {
				continue
			}
			counts[cls[i]]--
			cls[i] = classOf(i)
			counts[cls[i]]++
		}
		next := raise[:0]
		for _, i := range raise {
			if small(i) {
				next = append(next, i)
			}
		}
		raise = next
	}
	// The suppressed are a class of their own: fewer than k of them
	// would be a small class too. Take more from classes of over k (they
	// keep k), and failing those, whole classes.
	suppressed := 0
	for i := range rows {
		if rows[i].level == last {
			suppressed++
		}
	}
	suppress := func(i int) {
		counts[cls[i]]--
		rows[i].level = last
		suppressed++
	}
	for i := 0; i < len(rows) && suppressed > 0 && suppressed < k; i++ {
		if rows[i].level != last && counts[cls[i]] > int32(k) {
			suppress(i)
		}
	}
	for i := 0; i < len(rows) && suppressed > 0 && suppressed < k; i++ {
		if rows[i].level != last {
			c := cls[i]
			for j := i; j < len(rows); j++ {
				if cls[j] == c && rows[j].level != last {
					suppress(j)
				}
			}
		}
	}

	rep := KAnonymity{K: k, Patients: len(rows), Path: p.steps[1 : len(p.steps)-1], Levels: map[string]int{},
		ByAttribute: map[string]map[string]int{}}
	for qi, ok := range p.qi {
		if ok && p.levels[0][qi] == 0 {
			rep.QuasiIdentifiers = append(rep.QuasiIdentifiers, qiNames[qi])
		}
	}
	for i := range rows {
		r := &rows[i]
		rep.Levels[p.steps[r.level]]++
		if r.level == last {
			rep.Suppressed++
			continue
		}
		had, lv, any := r.had(), p.levels[r.level], false
		for qi := range nQI {
			if lv[qi] > had[qi] {
				any = true
				l := hierarchies[qi][lv[qi]]
				if rep.ByAttribute[qiNames[qi]] == nil {
					rep.ByAttribute[qiNames[qi]] = map[string]int{}
				}
				rep.ByAttribute[qiNames[qi]][l]++
			}
		}
		if any {
			rep.Generalised++
		}
	}
	return rep
}

// A patientPart is one patients batch as rows, with the rows' pseudonyms
// and NHS numbers for the known patients (the numbers are never written).
type patientPart struct {
	rows []patientRow
	nhs  []uint64
	pids []byte // PseudonymBytes each
}

// patientPart converts an identifiable patients batch into rows, keeping
// nothing identifiable; places are numbered in the names table in.
func (t *transformer) patientPart(rec arrow.RecordBatch, in *names) patientPart {
	ref := t.policy.referenceDate()
	nhs := rec.Column(0).(*array.Uint64)
	dob := rec.Column(3).(*array.Date32)
	sex := rec.Column(4).(*array.String)
	pc := rec.Column(5).(*array.String)
	eth := rec.Column(6).(*array.String)
	gp := rec.Column(7).(*array.String)
	dod := rec.Column(8).(*array.Date32)
	rows := make([]patientRow, 0, rec.NumRows())
	pids := make([]byte, 0, int(rec.NumRows())*t.policy.PseudonymBytes)
	for i := 0; i < int(rec.NumRows()); i++ {
		var r patientRow
		pids = append(pids, t.ps.Patient(nhs.Value(i))...)
		b := dob.Value(i).ToTime()
		r.yob, r.mob = int16(b.Year()), int8(b.Month())
		age := ref.Year() - b.Year()
		if ref.YearDay() < b.YearDay() {
			age--
		}
		r.band = ageBand(age)
		for j, s := range sexes {
			if sex.Value(i) == s {
				r.sex = uint8(j)
			}
		}
		if pc.IsValid(i) {
			d, a := districtOf(pc.Value(i))
			r.district, r.area = in.id(d), in.id(a)
		}
		if eth.IsValid(i) && len(eth.Value(i)) == 1 {
			r.eth = eth.Value(i)[0]
		}
		if t.policy.KeepGPPractice && gp.IsValid(i) {
			r.gp = in.id(gp.Value(i))
		}
		if dod.IsValid(i) {
			d := dod.Value(i).ToTime()
			r.dy, r.dm = int16(d.Year()), int8(d.Month())
		}
		rows = append(rows, r)
	}
	return patientPart{rows: rows, nhs: slices.Clone(nhs.Uint64Values()), pids: pids}
}

// patientBatch builds the published batch of rows, whose pseudonyms are
// pids (PseudonymBytes each, in the rows' order; the batch views them).
// Every other column is the row's class.
func (t *transformer) patientBatch(rows []patientRow, p path, pids []byte, in *names) arrow.RecordBatch {
	schema := t.schemas[ingest.Patients]
	b := array.NewRecordBuilder(t.mem, schema)
	defer b.Release()
	optStr := func(f int, s string) {
		if s == "" {
			b.Field(f).AppendNull()
			return
		}
		b.Field(f).(*array.StringBuilder).Append(s)
	}
	optInt16 := func(f int, v int16) {
		if v == 0 {
			b.Field(f).AppendNull()
			return
		}
		b.Field(f).(*array.Int16Builder).Append(v)
	}
	for i := range rows {
		c := p.release(&rows[i])
		optInt16(1, c.yob)
		if c.mob == 0 {
			b.Field(2).AppendNull()
		} else {
			b.Field(2).(*array.Int8Builder).Append(c.mob)
		}
		band, sex := "", ""
		if c.band != 255 {
			band = bandNames[c.band]
		}
		if c.sex != 255 {
			sex = sexes[c.sex]
		}
		optStr(3, band)
		optStr(4, sex)
		optStr(5, in.list[c.district])
		optStr(6, in.list[c.area])
		optStr(7, groupNames[c.group])
		eth := ""
		if c.eth != 0 {
			eth = string(c.eth)
		}
		optStr(8, eth)
		f := 9
		if t.policy.KeepGPPractice {
			optStr(f, in.list[c.gp])
			f++
		}
		if c.dm != 0 {
			b.Field(f).(*array.Date32Builder).Append(arrow.Date32FromTime(time.Date(int(c.dy), time.Month(c.dm), 1, 0, 0, 0, 0, time.UTC)))
		} else {
			b.Field(f).AppendNull()
		}
		optInt16(f+1, c.dy)
	}
	cols := make([]arrow.Array, len(b.Fields()))
	data := array.NewData(schema.Field(0).Type, len(rows), []*memory.Buffer{nil, memory.NewBufferBytes(pids)}, nil, 0, 0)
	cols[0] = array.MakeFromData(data)
	data.Release()
	for f := 1; f < len(cols); f++ {
		cols[f] = b.Field(f).NewArray()
	}
	rec := array.NewRecordBatch(schema, cols, int64(len(rows)))
	for _, c := range cols {
		c.Release()
	}
	return rec
}
