package deid

import (
	"bytes"
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
