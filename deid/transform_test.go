package deid

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// 0000000000 passes Modulus 11: a worker whose first event row is that
// patient's must still give it the patient's pseudonym, not the empty
// cache's zero bytes.
func TestPatientZero(t *testing.T) {
	k, err := NewKey(bytes.Repeat([]byte{5}, 32))
	if err != nil {
		t.Fatal(err)
	}
	p := DefaultPolicy()
	p.EventDates, p.ShiftDays = DatesShift, 30
	tr := &transformer{policy: p, ps: NewPseudonymiser(k, p.Domain, p.PseudonymBytes)}
	ref := NewPseudonymiser(k, p.Domain, p.PseudonymBytes)
	for _, nhs := range []uint64{0, 0, 9434765919, 0} {
		if got, want := tr.patient(nhs), ref.Patient(nhs); !bytes.Equal(got, want) {
			t.Fatalf("patient %010d: pseudonym %x, want %x", nhs, got, want)
		}
		if got, want := tr.lastSh, ref.Shift(nhs, p.ShiftDays); got != want {
			t.Fatalf("patient %010d: shift %d, want %d", nhs, got, want)
		}
	}
}

// Event rows take their patient's pseudonym from the known patients when
// they follow the patients table's order, and from the HMAC otherwise: the
// pseudonym is the same either way.
func TestKnownPatients(t *testing.T) {
	k, err := NewKey(bytes.Repeat([]byte{6}, 32))
	if err != nil {
		t.Fatal(err)
	}
	p := DefaultPolicy()
	ref := NewPseudonymiser(k, p.Domain, p.PseudonymBytes)
	known := &knownPatients{}
	for n := uint64(1); n <= 300000; n++ {
		known.add(n*11, ref.Patient(n*11))
	}
	rng := rand.New(rand.NewPCG(6, 6))
	orders := map[string][]uint64{}
	for n := uint64(1); n <= 300000; n += uint64(1 + rng.IntN(3)) { // in order, some patients with no rows
		orders["in order"] = append(orders["in order"], n*11)
	}
	orders["shuffled"] = append([]uint64(nil), orders["in order"]...)
	rng.Shuffle(len(orders["shuffled"]), func(i, j int) {
		orders["shuffled"][i], orders["shuffled"][j] = orders["shuffled"][j], orders["shuffled"][i]
	})
	for n := uint64(0); n < 1000; n++ {
		orders["unknown"] = append(orders["unknown"], n*11+5)
	}
	for name, order := range orders {
		tr := &transformer{policy: p, ps: NewPseudonymiser(k, p.Domain, p.PseudonymBytes), known: known}
		for i, nhs := range order {
			if i%5000 == 0 {
				tr.galloped = false // a new batch
			}
			if got, want := tr.patient(nhs), ref.Patient(nhs); !bytes.Equal(got, want) {
				t.Fatalf("%s: patient %d: pseudonym %x, want %x", name, nhs, got, want)
			}
		}
		t.Logf("%s: %d of %d from the known patients", name, tr.hits, len(order))
		if name == "in order" && tr.hits != len(order) {
			t.Errorf("in order: only %d of %d pseudonyms came from the known patients", tr.hits, len(order))
		}
	}
}

// An event batch's patient and encounter pseudonyms are the HMACs of its
// NHS numbers and encounter ids, row for row, and a null encounter id
// stays null; also for a batch that is a slice, whose validity bitmap
// starts mid-byte.
func TestEventPseudonyms(t *testing.T) {
	k, err := NewKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	p := DefaultPolicy()
	ref := NewPseudonymiser(k, p.Domain, p.PseudonymBytes)
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	b := array.NewRecordBuilder(mem, ingest.Schemas[ingest.Conditions])
	defer b.Release()
	type row struct {
		nhs uint64
		enc string
	}
	var rows []row
	for i := range 1000 {
		r := row{nhs: uint64(9000000000 + i/3*11)}
		if i%4 != 1 {
			r.enc = fmt.Sprintf("E%d-%d", i/3, i)
		}
		rows = append(rows, r)
		b.Field(0).(*array.Uint64Builder).Append(r.nhs)
		b.Field(1).(*array.BinaryDictionaryBuilder).AppendString("snomed")
		b.Field(2).(*array.StringBuilder).Append("44054006")
		b.Field(3).(*array.Date32Builder).Append(19000)
		if r.enc == "" {
			b.Field(4).AppendNull()
		} else {
			b.Field(4).(*array.StringBuilder).Append(r.enc)
		}
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	for _, from := range []int64{0, 3} {
		in := rec.NewSlice(from, rec.NumRows())
		tr := &transformer{policy: p, ps: NewPseudonymiser(k, p.Domain, p.PseudonymBytes), schemas: Schemas(p), mem: mem}
		out := tr.event(ingest.Conditions, in)
		pid, eid := out.Column(0).(*array.FixedSizeBinary), out.Column(4).(*array.FixedSizeBinary)
		if eid.NullN() == 0 {
			t.Fatal("no null encounter ids: the test lost its nulls")
		}
		for i := range int(out.NumRows()) {
			r := rows[int(from)+i]
			if !bytes.Equal(pid.Value(i), ref.Patient(r.nhs)) {
				t.Fatalf("slice from %d, row %d: patient pseudonym %x, want %x", from, i, pid.Value(i), ref.Patient(r.nhs))
			}
			switch {
			case r.enc == "" && eid.IsValid(i):
				t.Fatalf("slice from %d, row %d: a null encounter id got a pseudonym", from, i)
			case r.enc != "" && eid.IsNull(i):
				t.Fatalf("slice from %d, row %d: encounter %s lost its pseudonym", from, i, r.enc)
			case r.enc != "" && !bytes.Equal(eid.Value(i), ref.Token("encounter", []byte(r.enc))):
				t.Fatalf("slice from %d, row %d: encounter pseudonym %x, want %x", from, i, eid.Value(i), ref.Token("encounter", []byte(r.enc)))
			}
		}
		out.Release()
		in.Release()
	}
}
