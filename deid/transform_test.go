package deid

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/testkey"
)

// testKey is a key of 32 bytes b.
func testKey(t *testing.T, b byte) *Key {
	t.Helper()
	k, err := NewKey(testkey.Bytes(b))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// 0000000000 passes Modulus 11: a worker whose first event row is that
// patient's must still give it the patient's pseudonym, not the empty
// cache's zero bytes.
func TestPatientZero(t *testing.T) {
	k := testKey(t, 5)
	p := DefaultPolicy()
	p.EventDates, p.ShiftDays = DatesShift, 30
	tr := &transformer{policy: p, ps: NewPseudonymiser(k, p.Domain, p.PseudonymBytes)}
	ref := NewPseudonymiser(k, p.Domain, p.PseudonymBytes)
	for _, nhs := range []uint64{0, 0, 9434765919, 0} {
		if got, want := tr.patient(nhs, -1), ref.Patient(nhs); !bytes.Equal(got, want) {
			t.Fatalf("patient %010d: pseudonym %x, want %x", nhs, got, want)
		}
		if got, want := tr.lastSh, ref.Shift(nhs, p.ShiftDays); got != want {
			t.Fatalf("patient %010d: shift %d, want %d", nhs, got, want)
		}
	}
}

// Event rows take their patient's pseudonym from the known patients at
// the place ingest names, and from the HMAC when the place is wrong or the
// patient unknown: the pseudonym is the same either way.
func TestKnownPatients(t *testing.T) {
	k := testKey(t, 6)
	p := DefaultPolicy()
	ref := NewPseudonymiser(k, p.Domain, p.PseudonymBytes)
	known := &knownPatients{}
	for n := uint64(0); n < 100000; n++ {
		known.add([]uint64{n * 11}, ref.Patient(n*11))
	}
	rng := rand.New(rand.NewPCG(6, 6))
	type row struct {
		nhs   uint64
		place int
	}
	orders := map[string][]row{}
	for n := 0; n < 100000; n += 1 + rng.IntN(3) { // some patients with no rows
		orders["right places"] = append(orders["right places"], row{uint64(n) * 11, n})
		orders["wrong places"] = append(orders["wrong places"], row{uint64(n) * 11, []int{n + 1, n - 1, -1, 1 << 30}[n%4]})
		orders["unknown"] = append(orders["unknown"], row{uint64(n)*11 + 5, n})
	}
	for name, rows := range orders {
		tr := &transformer{policy: p, ps: NewPseudonymiser(k, p.Domain, p.PseudonymBytes), known: known}
		for _, r := range rows {
			if got, want := tr.patient(r.nhs, r.place), ref.Patient(r.nhs); !bytes.Equal(got, want) {
				t.Fatalf("%s: patient %d at %d: pseudonym %x, want %x", name, r.nhs, r.place, got, want)
			}
		}
		if want := map[string]int{"right places": len(rows)}[name]; tr.hits != want {
			t.Errorf("%s: %d of %d pseudonyms came from the known patients, want %d", name, tr.hits, len(rows), want)
		}
	}
}

// An event batch's patient and encounter pseudonyms are the HMACs of its
// NHS numbers and encounter ids, row for row, whether the patient's place
// is right (the known pseudonym) or wrong (the HMAC), and a null encounter
// id stays null; also for a batch that is a slice, whose validity bitmap
// starts mid-byte.
func TestEventPseudonyms(t *testing.T) {
	k := testKey(t, 7)
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
	known := &knownPatients{}
	for k := range 334 {
		known.add([]uint64{uint64(9000000000 + k*11)}, ref.Patient(uint64(9000000000+k*11)))
	}
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
		place := uint32(i / 3)
		if i/3%5 == 0 {
			place++ // a wrong place: the HMAC, not a neighbour's pseudonym
		}
		b.Field(5).AppendNull()
		b.Field(6).AppendNull()
		b.Field(7).(*array.Uint32Builder).Append(place)
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	for _, from := range []int64{0, 3} {
		in := rec.NewSlice(from, rec.NumRows())
		tr := &transformer{policy: p, ps: NewPseudonymiser(k, p.Domain, p.PseudonymBytes), schemas: Schemas(p), mem: mem, known: known}
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
		if tr.hits == 0 || tr.hits >= 334 {
			t.Errorf("slice from %d: %d pseudonyms from the known patients; want some, not all", from, tr.hits)
		}
		out.Release()
		in.Release()
	}
}

// A key too alike to be secret is refused: a run of one letter, a short
// pattern repeated; random bytes and hex are taken.
func TestWeakKeysRefused(t *testing.T) {
	for _, weak := range [][]byte{[]byte(strings.Repeat("k", 40)), []byte(strings.Repeat("abc", 16)), make([]byte, 32)} {
		if _, err := NewKey(weak); !errors.Is(err, ErrKeyWeak) {
			t.Errorf("%q: %v, want ErrKeyWeak", weak[:8], err)
		}
	}
	for _, good := range [][]byte{testkey.Bytes(1), []byte("0123456789abcdef0123456789abcdef"), []byte("correct horse battery staple, a passphrase")} {
		if _, err := NewKey(good); err != nil {
			t.Errorf("%q: %v", good[:8], err)
		}
	}
}
