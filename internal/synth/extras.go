package synth

import (
	"strconv"
	"time"

	"github.com/nhs-hub/hub/ingest"
)

// What real extracts carry beyond the first five tables' rows: GP
// registration history, immunisations, procedures (SNOMED CT in primary
// care, OPCS-4 in hospital), blood pressure panels with components in
// LOINC, coded smoking status and, with faults, records whose status says
// they did not happen or are wrong and codes in a local system. All of it
// draws from g.more, so the first five tables stay as earlier versions of
// the generator wrote them.

var (
	vaccines = []struct{ code, name string }{
		{"836377006", "influenza"}, {"1119349007", "COVID-19 mRNA"}, {"836398006", "pneumococcal"},
	}
	gpProcedures       = []string{"73761001", "80146002", "232717009"} // colonoscopy, appendicectomy, CABG
	hospitalProcedures = []string{"H01.9", "H22.9", "K40.1"}           // OPCS-4
	smokingValues      = []string{"77176002", "8517006", "266919005"}  // smoker, ex-smoker, never smoked
)

// LocalCodeSystem is a trust's own code system, which the hub does not
// know: its codes are kept under its URI.
const LocalCodeSystem = "https://codes.example-trust.nhs.uk/problem-list"

// extra emits one generated row of table t for p, with status status
// (none for ""), counting its fate; components, for a blood pressure
// panel, are its component rows, published as rows of their own.
func (g *gen) extra(t ingest.Table, p *person, row []string, status string, comps [][]string) {
	row = fill(t, row)
	fate := eventFate(p, noFault)
	if fate == ingest.ReasonNone && status != "" {
		fate = map[string]ingest.Reason{"entered-in-error": ingest.ReasonEnteredInError, "refuted": ingest.ReasonRefuted,
			"cancelled": ingest.ReasonCancelled, "not-done": ingest.ReasonNotDone}[status]
	}
	g.truth.Tables[t.String()].Add(fate, int64(1+len(comps)))
	ref := g.ref(p, p.nhsText)
	if g.w.format == ingest.CSV || len(comps) == 0 {
		g.w.write(t, row, ref)
		for _, c := range comps {
			cr := append([]string(nil), row...)
			cr[1], cr[2], cr[3], cr[4], cr[6] = c[0], c[1], c[2], c[3], ""
			g.w.write(t, cr, ref)
		}
		return
	}
	g.w.writeFHIR(t, fhirLine(g.w.line[:0], t, g.w.ids[t]+1, row, ref, comps))
}

func (g *gen) extras(p *person, idx int, start, end time.Time, age float64, inpatient []string) {
	r := g.more
	faults := g.opts.FaultRate > 0
	maybe := func(rate float64) bool { return faults && r.Float64() < rate }
	statusRow := func(t ingest.Table, col int, row []string, status string) []string {
		row = fill(t, row)
		row[col] = status
		return row
	}

	// Registrations: the current practice since some date, and for a
	// quarter of patients the one before, which for a third of those
	// ended up to 90 days before (a move, registered late).
	until := RefDate.AddDate(0, -1, 0)
	if !p.dod.IsZero() && p.dod.Before(until) {
		until = p.dod
	}
	since := g.moreDate(maxTime(p.dob, time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)), until)
	if r.Float64() < 0.25 && since.Sub(p.dob) > 400*24*time.Hour {
		from := g.moreDate(maxTime(p.dob, since.AddDate(-20, 0, 0)), since.AddDate(0, 0, -30))
		prev := practices[r.IntN(len(practices))]
		end := since.AddDate(0, 0, -1)
		if r.Float64() < 1.0/3 {
			end = end.AddDate(0, 0, -1-r.IntN(90))
		}
		g.extra(ingest.Registrations, p, []string{p.nhsText, prev, day(from), day(end)}, "", nil)
	}
	last := ""
	if !p.dod.IsZero() {
		last = day(p.dod)
	}
	g.extra(ingest.Registrations, p, []string{p.nhsText, p.practice, day(since), last}, "", nil)

	// Immunisations: influenza each autumn from 65, COVID-19 for some,
	// pneumococcal once.
	if age >= 65 {
		for y := start.Year(); y < end.Year(); y++ {
			d := time.Date(y, 10, 1+r.IntN(28), 0, 0, 0, 0, time.UTC)
			if d.Before(start) || d.After(end) || r.Float64() > 0.7 {
				continue
			}
			status := ""
			if maybe(0.03) {
				status = "not-done"
			}
			g.extra(ingest.Immunizations, p, statusRow(ingest.Immunizations, 5, []string{p.nhsText, "snomed", vaccines[0].code, day(d), ""}, status), status, nil)
		}
		if r.Float64() < 0.3 {
			g.extra(ingest.Immunizations, p, []string{p.nhsText, "snomed", vaccines[2].code, day(g.moreDate(start, end)), ""}, "", nil)
		}
	}
	if age >= 18 && r.Float64() < 0.5 {
		g.extra(ingest.Immunizations, p, []string{p.nhsText, "snomed", vaccines[1].code, day(g.moreDate(start, end)), ""}, "", nil)
	}

	// Procedures: OPCS-4 in half the inpatient stays, a SNOMED CT one in
	// primary care now and then.
	for _, enc := range inpatient {
		if r.Float64() < 0.5 {
			d := g.moreDate(start, end)
			status := ""
			if maybe(0.03) {
				status = "not-done"
			}
			row := statusRow(ingest.Procedures, 6, []string{p.nhsText, "opcs4", hospitalProcedures[r.IntN(len(hospitalProcedures))], day(d), day(d.AddDate(0, 0, r.IntN(2))), enc}, status)
			g.extra(ingest.Procedures, p, row, status, nil)
		}
	}
	if age >= 40 && r.Float64() < 0.08 {
		g.extra(ingest.Procedures, p, []string{p.nhsText, "snomed", gpProcedures[r.IntN(len(gpProcedures))], day(g.moreDate(start, end)), ""}, "", nil)
	}

	if age >= 16 {
		// Blood pressure panels (LOINC), the readings as components.
		for n := g.morePoisson(0.3 * end.Sub(start).Hours() / 24 / 365.25); n > 0; n-- {
			sys, dia := 110+r.IntN(60), 65+r.IntN(30)
			status := ""
			if maybe(0.02) {
				status = "entered-in-error"
			}
			row := statusRow(ingest.Observations, 7, []string{p.nhsText, "loinc", "85354-9", "", "", day(g.moreDate(start, end))}, status)
			g.extra(ingest.Observations, p, row, status, [][]string{
				{"loinc", "8480-6", strconv.Itoa(sys), "mm[Hg]"}, {"loinc", "8462-4", strconv.Itoa(dia), "mm[Hg]"}})
		}
		// Smoking status, a coded value.
		row := fill(ingest.Observations, []string{p.nhsText, "loinc", "72166-2", "", "", day(g.moreDate(start, end))})
		row[6] = smokingValues[r.IntN(len(smokingValues))]
		g.extra(ingest.Observations, p, row, "", nil)
	}

	if !faults {
		return
	}
	// Faults real extracts have: a diagnosis refuted or entered in error,
	// one in a local code system, a cancelled appointment.
	if maybe(0.02) {
		c := conditions[r.IntN(len(conditions))]
		status := []string{"refuted", "entered-in-error"}[r.IntN(2)]
		g.extra(ingest.Conditions, p, statusRow(ingest.Conditions, 6, []string{p.nhsText, "snomed", c.snomed, day(g.moreDate(start, end)), ""}, status), status, nil)
	}
	if maybe(0.02) {
		g.extra(ingest.Conditions, p, []string{p.nhsText, LocalCodeSystem, "PL" + strconv.Itoa(100+r.IntN(900)), day(g.moreDate(start, end)), ""}, "", nil)
	}
	if maybe(0.02) {
		id := "E" + strconv.Itoa(idx) + "-c"
		g.extra(ingest.Encounters, p, statusRow(ingest.Encounters, 7, []string{id, p.nhsText, "outpatient", day(g.moreDate(start, end)), "", organisations[r.IntN(len(organisations))]}, "cancelled"), "cancelled", nil)
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (g *gen) moreDate(a, b time.Time) time.Time {
	days := int(b.Sub(a).Hours() / 24)
	if days <= 0 {
		return a
	}
	return a.AddDate(0, 0, g.more.IntN(days))
}

func (g *gen) morePoisson(mean float64) int {
	l, k, p := exp(-mean), 0, 1.0
	for {
		p *= g.more.Float64()
		if p <= l {
			return k
		}
		k++
	}
}
