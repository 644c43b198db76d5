package deid

import (
	"fmt"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// codeBatch is an identifiable conditions-like batch (nhs, code_system
// as a dictionary, code) of rows "nhs system code".
func codeBatch(t *testing.T, rows [][3]string) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{{Name: "nhs_number", Type: arrow.PrimitiveTypes.Uint64},
		{Name: "code_system", Type: ingest.Vocabulary}, {Name: "code", Type: arrow.BinaryTypes.String}}, nil)
	b := array.NewRecordBuilder(memory.DefaultAllocator, schema)
	defer b.Release()
	for _, r := range rows {
		var n uint64
		fmt.Sscan(r[0], &n)
		b.Field(0).(*array.Uint64Builder).Append(n)
		if err := b.Field(1).(*array.BinaryDictionaryBuilder).AppendString(r[1]); err != nil {
			t.Fatal(err)
		}
		b.Field(2).(*array.StringBuilder).Append(r[2])
	}
	return b.NewRecordBatch()
}

// Two workers' counts: a code each saw with three patients has five in
// all and stays; a rare ICD-10 code joins its category when the category
// is common; rare codes of a rare category, and rare codes of other
// systems, become "other"; held rows are written with the new codes and
// the rows of codes that were common all along pass at once.
func TestRareCodes(t *testing.T) {
	a, b := newRareState(5), newRareState(5)
	var rowsA, rowsB [][3]string
	for i := 1; i <= 3; i++ {
		rowsA = append(rowsA, [3]string{fmt.Sprint(i), "snomed", "111"})
		rowsB = append(rowsB, [3]string{fmt.Sprint(i + 2), "snomed", "111"}) // patient 3 on both: 5 in all
	}
	for i := 1; i <= 6; i++ {
		rowsA = append(rowsA, [3]string{fmt.Sprint(i), "icd10", "E11.9"}) // common to A
	}
	rowsA = append(rowsA, [3]string{"7", "icd10", "E11.65"}, [3]string{"7", "icd10", "E11.65"}, [3]string{"8", "icd10", "Q90.0"},
		[3]string{"11", "icd10", "Q87.1"}, [3]string{"12", "icd10", "Q87.1"}, [3]string{"13", "icd10", "Q87.1"})
	rowsB = append(rowsB, [3]string{"9", "icd10", "Q90.1"}, [3]string{"10", "snomed", "222"},
		[3]string{"14", "icd10", "Q87.4"}, [3]string{"15", "icd10", "Q87.4"})
	pass := 0
	for _, w := range []struct {
		s    *rareState
		rows [][3]string
	}{{a, rowsA}, {b, rowsB}} {
		rec := codeBatch(t, w.rows)
		out, err := w.s.split(rec, rec)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range out {
			pass += int(o.NumRows())
			o.Release()
		}
		rec.Release()
	}
	// Passed at once: E11.9's rows from its fifth patient on (2).
	if pass != 2 {
		t.Errorf("%d rows passed at once, want 2", pass)
	}
	m, rep := rareMapping([]*rareState{a, b}, 5)
	// E11.65 does not join E11: no row is published as E11 but its own
	// (E11.9 stays E11.9), so E11 would be one patient's.
	want := map[string]map[string]string{"icd10": {"E11.65": "other", "Q87.1": "Q87", "Q87.4": "Q87", "Q90.0": "other", "Q90.1": "other"},
		"snomed": {"222": "other"}}
	if fmt.Sprint(m) != fmt.Sprint(want) || rep.Codes != 6 || rep.ToCategory != 2 || rep.ToOther != 4 {
		t.Errorf("mapping %v %+v, want %v", m, rep, want)
	}
	got := map[string]int{}
	changed := 0
	for _, s := range []*rareState{a, b} {
		recs, n := s.publishHeld(m)
		changed += n
		for _, r := range recs {
			for i := range int(r.NumRows()) {
				got[r.Column(1).ValueStr(i)+" "+r.Column(2).ValueStr(i)]++
			}
			r.Release()
		}
	}
	if changed != 10 || fmt.Sprint(got) != "map[icd10 E11.9:4 icd10 Q87:5 icd10 other:4 snomed 111:6 snomed other:1]" {
		t.Errorf("held rows written as %v (%d changed)", got, changed)
	}
}
