package synth

import (
	"strconv"
	"time"

	"github.com/nhs-hub/hub/ingest"
)

// eventFate is the reason ingest must give an event row of patient p
// carrying fault f: the documented precedence is NHS number, opt-out,
// patient, then the row's own fields.
func eventFate(p *person, f fault) ingest.Reason {
	switch f {
	case faultCheckDigit:
		return ingest.ReasonInvalidNHSNumber
	case faultMissingNHS:
		return ingest.ReasonMissingNHSNumber
	}
	if o := p.optedOutReason(); o != ingest.ReasonNone {
		return o
	}
	switch p.status {
	case statusSeen:
		return ingest.ReasonPatientExcluded
	case statusAbsent:
		return ingest.ReasonUnknownPatient
	}
	switch f {
	case faultDate:
		return ingest.ReasonInvalidDate
	case faultCode:
		return ingest.ReasonInvalidCode
	case faultLong:
		return ingest.ReasonFieldTooLong
	}
	return ingest.ReasonNone
}

// emit writes one event row of table t, injecting a fault at the given
// rate. nhsCol, dateCol, codeCol and longCol locate the fields to spoil.
func (g *gen) emit(t ingest.Table, p *person, row []string, dateCol, codeCol, longCol int, faultable bool) {
	f := noFault
	if faultable && g.maybeFault() {
		f = []fault{faultCheckDigit, faultMissingNHS, faultDate, faultCode, faultLong}[g.rng.IntN(5)]
	}
	nhsCol := 0
	if t == ingest.Encounters {
		nhsCol = 1
	}
	switch f {
	case faultCheckDigit:
		row[nhsCol] = corruptNHS(row[nhsCol])
	case faultMissingNHS:
		row[nhsCol] = ""
	case faultDate:
		row[dateCol] = []string{"2023-02-30", "31/12/2023", "2023-1-5", "yesterday"}[g.rng.IntN(4)]
	case faultCode:
		row[codeCol] = spoilCode(t, row[codeCol])
	case faultLong:
		row[longCol] = longText(4097 + g.rng.IntN(8000))
	}
	g.truth.Tables[t.String()].Add(eventFate(p, f), 1)
	g.w.write(t, fill(t, row), g.ref(p, row[nhsCol]))
}

// ref returns the Patient id an event row of p names in a FHIR extract:
// none (the NHS number instead) when the row's number is spoilt or p's
// own record has no valid number, as such an extract would carry it.
func (g *gen) ref(p *person, nhs string) string {
	if nhs != p.nhsText || (p.status == statusAbsent && !p.ghost) {
		return ""
	}
	return p.id
}

// fill pads a row to its table's columns; an encounter gets its class.
func fill(t ingest.Table, row []string) []string {
	cols := len(t.Columns())
	for len(row) < cols {
		row = append(row, "")
	}
	if t == ingest.Encounters && row[6] == "" {
		row[6] = map[string]string{"gp": "AMB", "outpatient": "AMB", "inpatient": "IMP", "ae": "EMER"}[row[2]]
	}
	return row
}

// spoilCode turns a valid code into one ingest must reject.
func spoilCode(t ingest.Table, code string) string {
	if t == ingest.Encounters {
		return "telepathy"
	}
	if len(code) > 0 && code[0] >= 'A' && code[0] <= 'Z' { // ICD-10
		return "9" + code
	}
	last := code[len(code)-1]
	return code[:len(code)-1] + string(rune('0'+(last-'0'+1)%10)) // Verhoeff catches every single-digit error
}

func day(t time.Time) string { return t.Format(time.DateOnly) }

func (g *gen) events(p *person, idx int, consent [][2]any) {
	r := g.rng
	end := RefDate
	if !p.dod.IsZero() {
		end = p.dod
	}
	start := WindowStart
	if p.dob.After(start) {
		start = p.dob
	}
	years := end.Sub(start).Hours() / 24 / 365.25
	if years < 0 {
		years = 0
	}
	age := RefDate.Sub(p.dob).Hours() / 24 / 365.25
	nc := float64(len(p.conds))
	isHTN, isT2DM := false, false
	for _, c := range p.conds {
		isHTN = isHTN || conditions[c].name == "hypertension"
		isT2DM = isT2DM || conditions[c].name == "type 2 diabetes"
	}

	// Encounters.
	encN := 0
	var inpatient []string
	encounter := func(typ string, rate float64) {
		for n := g.poisson(rate * years); n > 0; n-- {
			encN++
			id := "E" + strconv.Itoa(idx) + "-" + strconv.Itoa(encN)
			s := g.dateBetween(start, end)
			e := ""
			org := organisations[r.IntN(len(organisations))]
			switch typ {
			case "gp":
				org = "GP practice " + practices[r.IntN(len(practices))]
				e = day(s)
			case "inpatient":
				e = day(s.AddDate(0, 0, 1+r.IntN(10)))
				inpatient = append(inpatient, id)
			case "ae", "outpatient":
				e = day(s)
			}
			if g.opts.FaultRate > 0 && r.Float64() < 0.01 {
				org = "Leeds Teaching Hospitals NHS Trust\nSt James's \"Jimmy's\", Beckett Street"
			}
			g.emit(ingest.Encounters, p, []string{id, p.nhsText, typ, day(s), e, org}, 3, 2, 5, true)
		}
	}
	encounter("gp", 1.2+0.04*age+0.8*nc)
	encounter("outpatient", 0.2+0.15*nc)
	encounter("inpatient", 0.04+0.002*age+0.03*nc)
	encounter("ae", 0.25)

	// Conditions: a primary care SNOMED CT record, and for some a
	// hospital ICD-10 record from an inpatient stay.
	for _, ci := range p.conds {
		c := conditions[ci]
		from := p.dob.AddDate(18, 0, 0)
		if age < 18 {
			from = p.dob
		}
		if y := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC); from.Before(y) {
			from = y
		}
		onset := g.dateBetween(from, end)
		g.emit(ingest.Conditions, p, []string{p.nhsText, "snomed", c.snomed, day(onset), ""}, 3, 2, 4, true)
		if len(inpatient) > 0 && r.Float64() < 0.5 {
			g.emit(ingest.Conditions, p, []string{p.nhsText, "icd10", c.icd10, day(onset), inpatient[r.IntN(len(inpatient))]}, 3, 2, 4, true)
		}
		// Medications: repeat prescriptions of 56 days through the window.
		if len(c.drugs) > 0 {
			d := c.drugs[r.IntN(len(c.drugs))]
			s := onset
			if s.Before(start) {
				s = start.AddDate(0, 0, r.IntN(60))
			}
			for ; s.Before(end); s = s.AddDate(0, 0, 56+r.IntN(40)) {
				g.emit(ingest.Medications, p, []string{p.nhsText, "dmd", d.code, day(s), day(s.AddDate(0, 0, 56))}, 3, 2, 2, true)
			}
		}
	}

	// Observations.
	obs := func(k obsKind, rate, mean float64) {
		for n := g.poisson(rate * years); n > 0; n-- {
			v := mean + r.NormFloat64()*(k.hi-k.lo)/8
			v = max(k.lo, min(k.hi, v))
			val := strconv.FormatFloat(v, 'f', k.digits, 64)
			g.emit(ingest.Observations, p, []string{p.nhsText, "snomed", k.code, val, k.unit, day(g.dateBetween(start, end))}, 5, 2, 4, true)
		}
	}
	if age >= 16 {
		sys := 118 + 0.4*age
		if isHTN {
			sys += 18
		}
		bpRate := 0.5
		if isHTN {
			bpRate = 2
		}
		obs(obsSystolic, bpRate, sys)
		obs(obsBMI, 0.4, 27.5)
	}
	if isT2DM {
		obs(obsHbA1c, 2, 58)
	} else if age >= 40 {
		obs(obsHbA1c, 0.15, 38)
	}
	if age >= 40 {
		obs(obsCholesterol, 0.3, 5.0)
	}
	// Consent entries: never spoiled, so the truth stays exact.
	// A kept patient's consent rows are not published either: they say
	// the patient once objected.
	for _, c := range consent {
		fate := eventFate(p, noFault)
		if fate == ingest.ReasonNone {
			fate = ingest.ReasonOptOutCode
		}
		g.truth.Tables[ingest.Observations.String()].Add(fate, 1)
		g.w.write(ingest.Observations, fill(ingest.Observations, []string{p.nhsText, "snomed", c[0].(string), "", "", day(c[1].(time.Time))}), g.ref(p, p.nhsText))
	}
	g.extras(p, idx, start, end, age, inpatient)
	// Events for a patient the extract does not hold.
	if g.opts.FaultRate > 0 && r.Float64() < g.opts.FaultRate {
		g.ghosts++
		ghost := &person{status: statusAbsent, ghost: true, id: "ghost-" + strconv.Itoa(g.ghosts)}
		ghost.nhsText = padNHS(nextNumber(&g.unknownBase))
		c := conditions[r.IntN(len(conditions))]
		g.emit(ingest.Conditions, ghost, []string{ghost.nhsText, "snomed", c.snomed, day(g.dateBetween(start, end)), ""}, 3, 2, 4, false)
	}
}

func padNHS(n uint64) string {
	s := strconv.FormatUint(n, 10)
	for len(s) < 10 {
		s = "0" + s
	}
	return s
}

// poisson draws from a Poisson distribution (Knuth for small means, a
// rounded normal approximation for large ones).
func (g *gen) poisson(mean float64) int {
	if mean <= 0 {
		return 0
	}
	if mean > 30 {
		return max(0, int(mean+g.rng.NormFloat64()*sqrt(mean)+0.5))
	}
	l, k, p := exp(-mean), 0, 1.0
	for {
		p *= g.rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}
