// Package synth generates realistic, seeded synthetic LHCRE extracts (CSV
// or FHIR R4 bulk NDJSON) with an NDOP opt-out list, type 1 dissent
// entries and, on request, the faults real extracts have. It knows the
// ground truth: which rows ingest must keep, quarantine, exclude or drop
// for an opt-out, and writes it beside the extract as truth.json.
//
// Every patient is synthetic: NHS numbers come from the 999 test range
// (then 998, 997, ... past its 909,091 valid numbers), names from common
// name lists, postcodes from Yorkshire and the Humber districts with a
// random inward code.
package synth

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nhs-hub/hub/ingest"
)

// Version changes whenever the generator writes a different extract for
// the same options, so that cached extracts (the benchmarks') are made
// anew.
const Version = 3

// Options configure [Generate].
type Options struct {
	Patients int
	Seed     uint64
	Format   ingest.Format
	// FaultRate is the share of rows given a fault (0 for a clean extract).
	FaultRate float64
	// Gzip compresses every table file.
	Gzip bool
	// PartRows is how many resources a FHIR part file holds
	// (0: DefaultPartRows).
	PartRows int
	// Progress, when set, receives a progress line now and then.
	Progress io.Writer
}

// Extract dates: events fall in the three years before RefDate.
var (
	RefDate     = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	WindowStart = time.Date(2022, 1, 1, 0, 0, 0, 0, time.UTC)
)

// Truth is what ingest must report for a generated extract.
type Truth struct {
	Tables   map[string]*ingest.TableReport `json:"tables"`
	Patients ingest.PatientCounts           `json:"patients"`
	Type1    ingest.Type1Stats              `json:"type1_dissent"`
	OptOuts  struct {
		Numbers int `json:"numbers"`
		Invalid int `json:"invalid_lines"`
	} `json:"optouts"`
}

// Generate writes an extract into dir: the five table files, optouts.txt
// and truth.json.
func Generate(ctx context.Context, dir string, opts Options) (*Truth, error) {
	if opts.Patients < 0 {
		return nil, fmt.Errorf("patients must not be negative")
	}
	if opts.FaultRate < 0 || opts.FaultRate > 0.5 {
		return nil, fmt.Errorf("fault rate must be between 0 and 0.5")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create extract folder: %w", err)
	}
	g := &gen{opts: opts, truth: &Truth{Tables: map[string]*ingest.TableReport{}}}
	for _, t := range tables {
		g.truth.Tables[t.String()] = &ingest.TableReport{Reasons: map[string]int64{}}
	}
	var err error
	if g.w, err = newWriters(dir, opts.Format, opts.Gzip, opts.FaultRate > 0, opts.PartRows); err != nil {
		return nil, err
	}
	of, err := os.Create(filepath.Join(dir, "optouts.txt"))
	if err != nil {
		g.w.close()
		return nil, fmt.Errorf("create opt-out list: %w", err)
	}
	g.optouts = bufio.NewWriterSize(of, 1<<16)
	g.rng = rand.New(rand.NewPCG(opts.Seed, 0x5eed))
	// The tables and rows added since the first five tables draw from a
	// stream of their own, so that those tables stay as they were.
	g.more = rand.New(rand.NewPCG(opts.Seed, 0x6eed))
	g.base = 999000000
	g.unknownBase = 990000000

	start := time.Now()
	for i := 0; i < opts.Patients; i++ {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				g.w.close()
				of.Close()
				return nil, err
			}
			if opts.Progress != nil && i%65536 == 0 && i > 0 {
				fmt.Fprintf(opts.Progress, "\r\033[Ksynth: %d of %d patients (%.0f/s)", i, opts.Patients, float64(i)/time.Since(start).Seconds())
			}
		}
		g.patient(i)
	}
	if opts.Progress != nil {
		fmt.Fprint(opts.Progress, "\r\033[K")
	}
	g.extraOptOuts()
	if err := g.w.close(); err != nil {
		of.Close()
		return nil, err
	}
	if err := g.optouts.Flush(); err != nil {
		of.Close()
		return nil, fmt.Errorf("write opt-out list: %w", err)
	}
	if err := of.Close(); err != nil {
		return nil, fmt.Errorf("write opt-out list: %w", err)
	}
	tf, err := os.Create(filepath.Join(dir, "truth.json"))
	if err != nil {
		return nil, fmt.Errorf("write truth: %w", err)
	}
	enc := json.NewEncoder(tf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(g.truth); err != nil {
		tf.Close()
		return nil, fmt.Errorf("write truth: %w", err)
	}
	return g.truth, tf.Close()
}

type gen struct {
	opts        Options
	truth       *Truth
	w           *writers
	optouts     *bufio.Writer
	rng         *rand.Rand
	more        *rand.Rand // for what extras.go adds
	ghosts      int
	base        uint64 // next patient NHS number base (nine digits)
	unknownBase uint64
	row         [9]string
}

// nextNumber returns the next valid NHS number at or after *base.
func nextNumber(base *uint64) uint64 {
	for {
		b := *base
		*base++
		if *base%1000000 == 0 { // end of a block of a million: go one block down
			*base -= 2000000
		}
		if c, ok := ingest.NHSCheckDigit(b); ok {
			return b*10 + uint64(c)
		}
	}
}

// patient status after ingest, as the generator intends it.
type status uint8

const (
	statusKept   status = iota
	statusSeen          // valid number, row quarantined
	statusAbsent        // no row with a valid number
	statusOptedOut
)

// fault kinds.
type fault uint8

const (
	noFault fault = iota
	faultCheckDigit
	faultMissingNHS
	faultDate
	faultCode
	faultLong
	faultDuplicate
)

type person struct {
	id       string // the FHIR Patient id
	ghost    bool   // events of a patient the extract does not hold
	practice string
	nhs      uint64
	nhsText  string
	female   bool
	dob      time.Time
	dod      time.Time // zero when alive
	ndop     bool
	type1    bool // effective dissent
	status   status
	district string
	conds    []int
}

func (g *gen) maybeFault() bool { return g.opts.FaultRate > 0 && g.rng.Float64() < g.opts.FaultRate }

func (g *gen) patient(i int) {
	r := g.rng
	p := &person{nhs: nextNumber(&g.base), id: "pat-" + strconv.Itoa(i)}
	p.nhsText = fmt.Sprintf("%010d", p.nhs)
	p.female = r.Float64() < 0.51
	age := g.age()
	p.dob = RefDate.AddDate(-age, 0, -r.IntN(365)-1)
	if age > 60 && r.Float64() < float64(age-60)*0.004 {
		p.dod = WindowStart.AddDate(0, 0, r.IntN(int(RefDate.Sub(WindowStart).Hours()/24)))
	}
	p.ndop = r.Float64() < 0.05
	if p.ndop {
		g.optOut(p.nhs)
	}
	// Type 1 dissent: ~3% of patients, about a third later withdrawn.
	var consent [][2]any // (code, date)
	if r.Float64() < 0.03 {
		d1 := g.dateBetween(time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC), RefDate.AddDate(0, -6, 0))
		if r.Float64() < 0.1 {
			consent = append(consent, [2]any{codeWithdraw, d1.AddDate(0, -1-r.IntN(24), 0)})
		}
		consent = append(consent, [2]any{codeDissent, d1})
		p.type1 = true
		if r.Float64() < 0.33 {
			consent = append(consent, [2]any{codeWithdraw, d1.AddDate(0, 1+r.IntN(5), 0)})
			p.type1 = false
		}
		if p.type1 {
			g.truth.Type1.Dissenting++
		} else {
			g.truth.Type1.Withdrawn++
		}
	}
	// The patient row.
	pf := noFault
	if g.maybeFault() {
		pf = []fault{faultCheckDigit, faultMissingNHS, faultDate, faultLong, faultDuplicate}[r.IntN(5)]
	}
	g.patientRow(p, pf)

	p.district = districts[r.IntN(len(districts))]
	// Conditions and what follows from them.
	ageAt := float64(age)
	for ci, c := range conditions {
		if r.Float64() < prevalence(c.prev, ageAt) {
			p.conds = append(p.conds, ci)
		}
	}
	g.events(p, i, consent)
}

// age draws an age in years from the UK age pyramid.
func (g *gen) age() int {
	total := 0.0
	for _, w := range ageBands {
		total += w
	}
	x := g.rng.Float64() * total
	for b, w := range ageBands {
		if x < w {
			if b == len(ageBands)-1 {
				return 90 + g.rng.IntN(12)
			}
			return b*5 + g.rng.IntN(5)
		}
		x -= w
	}
	return 40
}

func prevalence(p [3]float64, age float64) float64 {
	switch {
	case age < 18:
		return p[0] * 0.3
	case age < 50:
		return p[0] + (p[1]-p[0])*(age-20)/30
	default:
		return p[1] + (p[2]-p[1])*math.Min(age-50, 40)/30
	}
}

func (g *gen) dateBetween(a, b time.Time) time.Time {
	days := int(b.Sub(a).Hours() / 24)
	if days <= 0 {
		return a
	}
	return a.AddDate(0, 0, g.rng.IntN(days))
}

func (g *gen) optOut(n uint64) {
	s := fmt.Sprintf("%010d", n)
	if g.opts.FaultRate > 0 && g.rng.Float64() < 0.1 {
		s = s[0:3] + " " + s[3:6] + " " + s[6:] // spaced, as typed
	}
	g.optouts.WriteString(s)
	g.optouts.WriteByte('\n')
	g.truth.OptOuts.Numbers++
}

// extraOptOuts adds numbers of people outside the extract (at least one:
// the national list is never empty, and the hub refuses an empty one) and,
// with faults, junk lines.
func (g *gen) extraOptOuts() {
	for i := 0; i < max(1, g.opts.Patients/100); i++ {
		g.optOut(nextNumber(&g.unknownBase))
	}
	if g.opts.FaultRate > 0 {
		for _, junk := range []string{"not a number", "1234567890", "99912345", "", "# comment line"} {
			g.optouts.WriteString(junk + "\n")
			if junk != "" && junk[0] != '#' {
				g.truth.OptOuts.Invalid++
			}
		}
	}
}

func (p *person) optedOutReason() ingest.Reason {
	if p.ndop {
		return ingest.ReasonNDOP
	}
	if p.type1 {
		return ingest.ReasonType1Dissent
	}
	return ingest.ReasonNone
}

// corruptNHS returns the number with its check digit changed.
func corruptNHS(s string) string {
	last := s[9]
	return s[:9] + string(rune('0'+(last-'0'+1)%10))
}

func (g *gen) patientRow(p *person, f fault) {
	r := g.rng
	tt := g.truth.Tables["patients"]
	row := g.row[:9]
	row[0] = p.nhsText
	names := maleNames
	if p.female {
		names = femaleNames
	}
	row[1] = names[r.IntN(len(names))]
	row[2] = familyNames[r.IntN(len(familyNames))]
	row[3] = p.dob.Format(time.DateOnly)
	row[4] = "male"
	if p.female {
		row[4] = "female"
	}
	if r.Float64() < 0.002 {
		row[4] = []string{"other", "unknown"}[r.IntN(2)]
	}
	row[5] = g.postcode()
	row[6] = g.ethnicity()
	row[7] = practices[r.IntN(len(practices))]
	p.practice = row[7]
	row[8] = ""
	if !p.dod.IsZero() {
		row[8] = p.dod.Format(time.DateOnly)
	}

	reason := ingest.ReasonNone
	switch f {
	case faultCheckDigit:
		row[0] = corruptNHS(row[0])
		reason = ingest.ReasonInvalidNHSNumber
	case faultMissingNHS:
		row[0] = ""
		reason = ingest.ReasonMissingNHSNumber
	}
	if reason == ingest.ReasonNone {
		if o := p.optedOutReason(); o != ingest.ReasonNone {
			reason = o
		}
	}
	if reason == ingest.ReasonNone {
		switch f {
		case faultDate:
			row[3] = []string{p.dob.Format("02/01/2006"), p.dob.Format("2006-01") + "-32", "unknown"}[r.IntN(3)]
			reason = ingest.ReasonInvalidDate
		case faultLong:
			row[1] = longText(5000)
			reason = ingest.ReasonFieldTooLong
		}
	}
	switch {
	case reason == ingest.ReasonNone:
		p.status = statusKept
	case reason.Outcome() == ingest.OptedOut:
		p.status = statusOptedOut
	case reason == ingest.ReasonInvalidNHSNumber || reason == ingest.ReasonMissingNHSNumber:
		p.status = statusAbsent
	default:
		p.status = statusSeen
	}
	tt.Add(reason, 1)
	g.w.write(ingest.Patients, row, p.id)
	g.countPatient(p, reason)

	if f == faultDuplicate {
		// The same patient again, having moved house: the first row wins.
		row[5] = g.postcode()
		dup := ingest.ReasonDuplicatePatient
		if o := p.optedOutReason(); o != ingest.ReasonNone {
			dup = o
		}
		tt.Add(dup, 1)
		g.w.write(ingest.Patients, row, p.id+"-dup")
	}
}

func (g *gen) countPatient(p *person, reason ingest.Reason) {
	pc := &g.truth.Patients
	switch p.status {
	case statusKept:
		pc.Kept++
	case statusSeen:
		pc.Quarantined++
	case statusAbsent:
		pc.ExcludedInvalid++
	case statusOptedOut:
		pc.OptedOut++
		if p.ndop {
			pc.OptedOutNDOP++
		}
		if p.type1 {
			pc.OptedOutType1++
		}
	}
}

func longText(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return string(b)
}

func (g *gen) postcode() string {
	r := g.rng
	d := districts[r.IntN(len(districts))]
	return d + " " + string(rune('0'+r.IntN(10))) + string(inwardLetters[r.IntN(len(inwardLetters))]) + string(inwardLetters[r.IntN(len(inwardLetters))])
}

func (g *gen) ethnicity() string {
	x := g.rng.Float64() * 100
	for _, e := range ethnicity {
		if x < e.weight {
			return e.code
		}
		x -= e.weight
	}
	return "Z"
}
