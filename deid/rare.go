package deid

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// Rare codes. A code that fewer than k patients have is a quasi-identifier
// of its own (one person with a rare disease in a region). With the
// policy's rare_codes "generalise" (the default), the rows of such a code
// are held back from the table's parts until the table ends, then written
// with the code generalised: an ICD-10 code to its three-character
// category when the rows published under that category would have k
// patients, any other code (and such a category that would not) to
// "other". Rows are never dropped.
//
// Each worker counts, per code, the distinct patients of the rows it was
// dealt, up to k. A code the worker has seen k patients with is common
// and its rows pass straight through; the rows of a code not yet common
// to the worker are held (a compact copy, not the batch). At the table's
// end the workers' patients of codes still held are put together: a code
// with k patients in all is common after all and its rows are written as
// they are. Only the first rows of each code, and the rare codes' rows,
// are ever held.

// RareCodes says what happens to codes used by fewer than k patients.
type RareCodes string

const (
	RareGeneralise RareCodes = "generalise"
	RareKeep       RareCodes = "keep"
)

// codedTables are the tables whose code column (2, after the pseudonym
// and code_system) is checked.
var codedTables = map[ingest.Table]bool{ingest.Conditions: true, ingest.Medications: true, ingest.Observations: true,
	ingest.Procedures: true, ingest.Immunizations: true}

// Other is the code of rare codes generalised past a category.
const Other = "other"

// A codeCount is one code's patients seen by one worker, up to k.
type codeCount struct {
	patients []uint64 // NHS numbers, nil once common (never written)
	common   bool
}

// rareState is a worker's count of one table's codes and its held rows.
type rareState struct {
	k     int
	codes map[string]map[string]*codeCount // system → code → count
	held  []arrow.RecordBatch              // published rows of codes not yet common
}

func newRareState(k int) *rareState {
	return &rareState{k: k, codes: map[string]map[string]*codeCount{}}
}

// split counts the codes of rec (an identifiable batch) and its published
// form out, row for row, and returns the runs of out to write now; the
// rows of codes not yet common are copied into s.held. The caller
// releases the returned slices.
func (s *rareState) split(rec, out arrow.RecordBatch) ([]arrow.RecordBatch, error) {
	nhs := rec.Column(0).(*array.Uint64)
	sys, ok := rec.Column(1).(*array.Dictionary)
	if !ok {
		return nil, fmt.Errorf("rare codes: code_system is %s, not a dictionary", rec.Column(1).DataType())
	}
	sysNames := sys.Dictionary().(*array.String)
	codes := rec.Column(2).(*array.String)
	n := int(rec.NumRows())
	hold := make([]bool, n)
	any := false
	for i := range n {
		system := sysNames.Value(sys.GetValueIndex(i))
		byCode := s.codes[system]
		if byCode == nil {
			byCode = map[string]*codeCount{}
			s.codes[strings.Clone(system)] = byCode
		}
		code := codes.Value(i)
		c := byCode[code]
		if c == nil {
			c = &codeCount{}
			byCode[strings.Clone(code)] = c
		}
		if c.common {
			continue
		}
		c.patients = addPatient(c.patients, nhs.Value(i), s.k)
		if len(c.patients) >= s.k {
			c.common, c.patients = true, nil
			continue // its rows pass from now on (those held are written at the end)
		}
		hold[i], any = true, true
	}
	if !any {
		out.Retain()
		return []arrow.RecordBatch{out}, nil
	}
	var pass, held []arrow.RecordBatch
	for i := 0; i < n; {
		j := i
		for j < n && hold[j] == hold[i] {
			j++
		}
		if hold[i] {
			held = append(held, out.NewSlice(int64(i), int64(j)))
		} else {
			pass = append(pass, out.NewSlice(int64(i), int64(j)))
		}
		i = j
	}
	copied, err := concatBatches(held)
	for _, h := range held {
		h.Release()
	}
	if err != nil {
		for _, p := range pass {
			p.Release()
		}
		return nil, err
	}
	s.held = append(s.held, copied)
	return pass, nil
}

// addPatient adds p to the distinct patients ps, which stop at k: k is
// all a count of them needs to know.
func addPatient(ps []uint64, p uint64, k int) []uint64 {
	if len(ps) >= k || slices.Contains(ps, p) {
		return ps
	}
	return append(ps, p)
}

// concatBatches copies batches of one schema into one compact batch, so
// that a held row does not keep its whole batch in memory.
func concatBatches(recs []arrow.RecordBatch) (arrow.RecordBatch, error) {
	cols := make([]arrow.Array, recs[0].NumCols())
	rows := int64(0)
	for _, r := range recs {
		rows += r.NumRows()
	}
	for c := range cols {
		parts := make([]arrow.Array, len(recs))
		for i, r := range recs {
			parts[i] = r.Column(c)
		}
		var err error
		if cols[c], err = array.Concatenate(parts, memory.DefaultAllocator); err != nil {
			for _, a := range cols[:c] {
				a.Release()
			}
			return nil, fmt.Errorf("rare codes: hold rows: %w", err)
		}
	}
	rec := array.NewRecordBatch(recs[0].Schema(), cols, rows)
	for _, a := range cols {
		a.Release()
	}
	return rec, nil
}

// RareCodeReport says what the rare-code check did to one table.
type RareCodeReport struct {
	// Codes is how many (system, code) pairs fewer than k patients had;
	// ToCategory and ToOther how many of them were published as an
	// ICD-10 category and as "other"; Rows, the rows they were on.
	Codes      int `json:"codes"`
	ToCategory int `json:"to_category"`
	ToOther    int `json:"to_other"`
	Rows       int `json:"rows"`
}

// rareMapping decides, from every worker's counts of a table, the code
// each rare code is published as: system → code → published code.
func rareMapping(states []*rareState, k int) (map[string]map[string]string, RareCodeReport) {
	// The patients of each code no worker found common.
	type key struct{ system, code string }
	common := map[key]bool{}
	patients := map[key][]uint64{}
	for _, s := range states {
		for system, byCode := range s.codes {
			for code, c := range byCode {
				kk := key{system, code}
				if c.common {
					common[kk] = true
					continue
				}
				for _, p := range c.patients {
					patients[kk] = addPatient(patients[kk], p, k)
				}
			}
		}
	}
	var rare []key
	for kk, ps := range patients {
		if common[kk] {
			continue
		}
		if len(ps) >= k {
			common[kk] = true
			continue
		}
		rare = append(rare, kk)
	}
	sort.Slice(rare, func(i, j int) bool {
		return rare[i].system < rare[j].system || rare[i].system == rare[j].system && rare[i].code < rare[j].code
	})
	// An ICD-10 category is published for a rare code when the rows
	// published under it (the category's own code, if common, and every
	// rare code of the category) have k patients.
	category := func(kk key) (string, bool) {
		if kk.system != "icd10" || len(kk.code) < 3 {
			return "", false
		}
		return kk.code[:3], true // a rare category code itself joins its category's rows
	}
	catPatients := map[key][]uint64{}
	for _, kk := range rare {
		if cat, ok := category(kk); ok {
			ck := key{kk.system, cat}
			for _, p := range patients[kk] {
				catPatients[ck] = addPatient(catPatients[ck], p, k)
			}
		}
	}
	out := map[string]map[string]string{}
	rep := RareCodeReport{Codes: len(rare)}
	for _, kk := range rare {
		to := Other
		if cat, ok := category(kk); ok {
			if ck := (key{kk.system, cat}); common[ck] || len(catPatients[ck]) >= k {
				to = cat
			}
		}
		if to == Other {
			rep.ToOther++
		} else {
			rep.ToCategory++
		}
		if out[kk.system] == nil {
			out[kk.system] = map[string]string{}
		}
		out[kk.system][kk.code] = to
	}
	return out, rep
}

// publishHeld returns s's held rows with rare codes replaced as mapping
// says, and how many rows it changed; s.held is emptied.
func (s *rareState) publishHeld(mapping map[string]map[string]string) ([]arrow.RecordBatch, int) {
	var out []arrow.RecordBatch
	changed := 0
	for _, h := range s.held {
		sys := h.Column(1)
		codes := h.Column(2).(*array.String)
		b := array.NewStringBuilder(memory.DefaultAllocator)
		n := 0
		for i := range int(h.NumRows()) {
			code := codes.Value(i)
			if to, ok := mapping[sys.ValueStr(i)][code]; ok {
				code = to
				n++
			}
			b.Append(code)
		}
		changed += n
		if n == 0 {
			b.Release()
			out = append(out, h)
			continue
		}
		col := b.NewArray()
		b.Release()
		cols := slices.Clone(h.Columns())
		cols[2] = col
		rec := array.NewRecordBatch(h.Schema(), cols, h.NumRows())
		col.Release()
		h.Release()
		out = append(out, rec)
	}
	s.held = nil
	return out, changed
}
