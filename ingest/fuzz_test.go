package ingest

import (
	"bytes"
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// FuzzCSVRecord checks that the record reader always makes progress,
// never reads past its input and never panics.
func FuzzCSVRecord(f *testing.F) {
	for _, s := range []string{"a,b,c\n", `"a,b","c""d"` + "\r\n", "\"unterminated\n", `"a"x,b` + "\n", "", ",,\n", "\"\"\n", "a\rb\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var fields [][]byte
		var scratch []byte
		pos := 0
		for pos < len(data) {
			var n int
			fields, scratch, n, _, _ = csvRecord(data[pos:], fields, scratch)
			if n <= 0 || pos+n > len(data) {
				t.Fatalf("consumed %d of %d bytes", n, len(data)-pos)
			}
			for _, f := range fields {
				if len(f) > len(data) {
					t.Fatal("field longer than input")
				}
			}
			pos += n
		}
	})
}

// FuzzFHIRLine checks that any line decodes or is rejected, never panics,
// and that the whole row path (validation included) copes with it.
func FuzzFHIRLine(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Patient","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],"name":[{"family":"Smith","given":["A"]}],"gender":"female","birthDate":"1970-05-01"}`))
	f.Add([]byte(`{"resourceType":"Observation","subject":{"identifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}},"code":{"coding":[{"system":"http://snomed.info/sct","code":"60621009"}]},"valueQuantity":{"value":1e400,"unit":"x"},"effectiveDateTime":"2023-01-01"}`))
	f.Add([]byte(`[[[[`))
	f.Add([]byte(`{"resourceType":"Observation","subject":{"reference":"urn:uuid:p1"},"code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"unit":"mm[Hg]"}}],"effectiveDateTime":"2023-01-01","status":"final"}`))
	f.Add([]byte(`{"resourceType":"MedicationRequest","subject":{"reference":"Patient/p1"},"medicationReference":{"reference":"#m"},"contained":[{"resourceType":"Medication","id":"m","code":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"314076"}]}}],"authoredOn":"2020-01-01","status":"active"}`))
	f.Add([]byte(`{"resourceType":"Encounter","id":"e","class":[{"coding":[{"code":"AMB"}]}],"subject":{"reference":"Patient/p1"},"period":{"start":"2020-01-01"}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		st := newState(nil)
		st.ndop = &OptOuts{set: newIDSet(16)}
		st.noteRef(patientNote{nhs: 9434765919, ok: true, ref: keyOf([]byte("p1"))})
		for _, tb := range Tables {
			d := newFHIRDecoder(st, tb)
			b := newRowBuilder(tb, st)
			d.decode(tb, line, func(out [][]byte, raw []byte) {
				var ref *refKey
				if raw != nil {
					k := keyOf(raw)
					ref = &k
				}
				if len(out) != len(columns[tb]) {
					t.Fatalf("%s: %d fields", tb, len(out))
				}
				fate := ReasonNone
				if ref != nil && tb != Patients {
					var n uint64
					next := 0
					if n, fate = st.resolve(*ref, &next); fate == ReasonNone {
						out[nhsColumn[tb]] = appendNHS(nil, n)
					}
				}
				b.add(out, fate, ref)
			})
			if rec := b.flush(memory.DefaultAllocator); rec != nil {
				rec.Release()
			}
		}
	})
}

// FuzzLoadOptOuts checks that any opt-out file loads without panicking and
// that its counts add up.
func FuzzLoadOptOuts(f *testing.F) {
	f.Add([]byte("9434765919\n943 476 5919\r\njunk\n\n# c\n"))
	f.Add([]byte("\xEF\xBB\xBF9876543210"))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := LoadOptOuts(context.Background(), bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		st := o.Stats
		if st.Numbers+st.Invalid+st.Blank != st.Lines {
			t.Fatalf("lines %d != numbers %d + invalid %d + blank %d", st.Lines, st.Numbers, st.Invalid, st.Blank)
		}
		if o.Len() != st.Numbers-st.Repeated {
			t.Fatalf("set holds %d, want %d", o.Len(), st.Numbers-st.Repeated)
		}
	})
}

func TestLoadOptOuts(t *testing.T) {
	in := "\xEF\xBB\xBF9434765919\r\n943 476 5919\n\n  # a comment\njunk\n9876543210 # trailing\n1234567890\n" + strings.Repeat("9", 300) + "\n"
	o, err := LoadOptOuts(t.Context(), strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	st := o.Stats
	if st.Numbers != 3 || st.Repeated != 1 || st.Invalid != 3 || st.Blank != 2 || o.Len() != 2 {
		t.Errorf("stats = %+v, len %d", st, o.Len())
	}
	if want := []int{5, 7, 8}; len(st.InvalidLines) != 3 || st.InvalidLines[0] != want[0] || st.InvalidLines[2] != want[2] {
		t.Errorf("invalid lines = %v, want %v", st.InvalidLines, want)
	}
	if !o.Has(9434765919) || !o.Has(9876543210) || o.Has(1234567881) {
		t.Error("membership wrong")
	}
}

func TestIDSet(t *testing.T) {
	s := newIDSet(4)
	for i := uint64(1); i <= 100000; i++ {
		if !s.Add(i * 7919) {
			t.Fatalf("%d reported present before it was added", i)
		}
	}
	for i := uint64(1); i <= 100000; i++ {
		if s.Add(i*7919) || !s.Has(i*7919) || s.Has(i*7919+1) {
			t.Fatalf("membership wrong at %d", i)
		}
	}
	if s.Len() != 100000 {
		t.Fatalf("len = %d", s.Len())
	}
}

func TestOrderedIDSet(t *testing.T) {
	s := newOrderedIDSet(4) // grows many times
	for i := uint64(1); i <= 100000; i++ {
		s.Add(i * 7919 % 1000003)
	}
	if s.Add(7919) || s.Len() != 100000 || len(s.order) != 100000 {
		t.Fatalf("len %d, order %d", s.Len(), len(s.order))
	}
	for i := uint64(1); i <= 100000; i++ {
		id := i * 7919 % 1000003
		if got := s.Index(id); got != int(i-1) || s.order[got] != id {
			t.Fatalf("Index(%d) = %d, want %d", id, got, i-1)
		}
	}
	if s.Index(1000004) != -1 {
		t.Fatal("an absent id has a place")
	}
	// 0000000000 passes Modulus 11: it is a number like any other.
	if s.Has(0) || !s.Add(0) || s.Add(0) || !s.Has(0) || s.Index(0) != 100000 || s.Len() != 100001 {
		t.Fatalf("0: has %v, index %d, len %d", s.Has(0), s.Index(0), s.Len())
	}
	p := newIDSet(4)
	if !p.Add(0) || p.Add(0) || !p.Has(0) || p.Has(1) || p.Len() != 1 {
		t.Fatalf("plain set: 0 has %v, len %d", p.Has(0), p.Len())
	}
}

// Both kinds of id set agree with a map on random adds and look-ups
// across many regrowths, at the ends of the range (0 and 9999999999) and
// with ids that collide on their low bits.
func TestIDSetAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for _, ordered := range []bool{false, true} {
		s := newIDSet(4)
		if ordered {
			s = newOrderedIDSet(4)
		}
		seen := map[uint64]int{}
		var order []uint64
		for i := range 300000 {
			var id uint64
			switch i % 4 {
			case 0:
				id = rng.Uint64N(10_000_000_000) // anywhere in the range
			case 1:
				id = rng.Uint64N(50000) // near 0, often again
			case 2:
				id = 9_999_999_999 - rng.Uint64N(50000) // near the top
			default:
				id = rng.Uint64N(1000) << 24 // equal low bits
			}
			_, had := seen[id]
			if s.Has(id) != had {
				t.Fatalf("ordered %v: Has(%d) = %v before adding, want %v", ordered, id, !had, had)
			}
			if s.Add(id) == had {
				t.Fatalf("ordered %v: Add(%d) = %v, want %v", ordered, id, had, !had)
			}
			if !had {
				seen[id] = len(order)
				order = append(order, id)
			}
		}
		if s.Len() != len(seen) {
			t.Fatalf("ordered %v: Len %d, want %d", ordered, s.Len(), len(seen))
		}
		for id, k := range seen {
			if !s.Has(id) || (ordered && s.Index(id) != k) {
				t.Fatalf("ordered %v: id %d: has %v, index %d, want place %d", ordered, id, s.Has(id), s.Index(id), k)
			}
		}
		if ordered && !slices.Equal(s.order, order) {
			t.Fatalf("the order differs")
		}
	}
}

// FuzzPlainRecord checks that the SWAR path, whenever it takes a record,
// splits it as the general path does.
func FuzzPlainRecord(f *testing.F) {
	for _, s := range []string{"a,b,c\nxxxxxxxxx", "abcdefgh,ijklmnop,\r\nqrstuvwxyz", `ab"c,d` + "\n12345678", "\n\n\n\n\n\n\n\n\n", ",,,,,,,,,,\r\n,,,,,,,,,"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkPlainRecord(t, data) })
}

func checkPlainRecord(t *testing.T, data []byte) {
	t.Helper()
	fast, n := plainRecord(data, nil)
	if n == 0 {
		return
	}
	slow, _, m, lines, err := generalRecord(data, nil, nil)
	if err != nil || m != n || lines != 1 || len(slow) != len(fast) {
		t.Fatalf("%q: plain path took %d bytes, %d fields; general path %d bytes, %d lines, %d fields, %v", data, n, len(fast), m, lines, len(slow), err)
	}
	for i := range slow {
		if !bytes.Equal(slow[i], fast[i]) {
			t.Fatalf("%q: field %d is %q, general path %q", data, i, fast[i], slow[i])
		}
	}
}

// TestPlainRecord runs the comparison over random records of the bytes
// that matter to CSV.
func TestPlainRecord(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const alphabet = "ab,,\n\r\"1 "
	taken := 0
	for range 200000 {
		b := make([]byte, rng.IntN(40))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		if _, n := plainRecord(b, nil); n > 0 {
			taken++
		}
		checkPlainRecord(t, b)
	}
	if taken < 10000 {
		t.Fatalf("the plain path took only %d records", taken)
	}
}
