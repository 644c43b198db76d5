package deid

import (
	"bytes"
	"math/rand/v2"
	"testing"
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
