package ingest

import (
	"errors"
	"fmt"
	"testing"
)

func TestParseNHSNumber(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want uint64
		err  error
	}{
		{"valid plain", "9434765919", 9434765919, nil},
		{"valid second vector", "9876543210", 9876543210, nil},
		{"spaces grouping", "943 476 5919", 9434765919, nil},
		{"hyphen grouping", "943-476-5919", 9434765919, nil},
		{"surrounding blanks", "  9434765919\t", 9434765919, nil},
		{"check digit off by one", "9434765918", 0, ErrNHSCheckDigit},
		{"sequential digits", "1234567890", 0, ErrNHSCheckDigit},
		{"empty", "", 0, ErrNHSMissing},
		{"blank", "   ", 0, ErrNHSMissing},
		{"nine digits", "943476591", 0, ErrNHSFormat},
		{"eleven digits", "94347659190", 0, ErrNHSFormat},
		{"letters", "94347659X9", 0, ErrNHSFormat},
		{"mixed separators", "943 476-5919", 0, ErrNHSFormat},
		{"wrong grouping", "9434 76 5919", 0, ErrNHSFormat},
		{"remainder gives ten", "0000000060", 0, ErrNHSCheckDigit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseNHSNumber([]byte(tt.in))
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("got %d, want %d", got, tt.want)
			}
		})
	}
}

func TestNHSCheckDigitAgreesWithParse(t *testing.T) {
	for base := uint64(999000000); base < 999000000+5000; base++ {
		c, ok := NHSCheckDigit(base)
		s := fmt.Sprintf("%09d%d", base, c)
		_, err := ParseNHSNumber([]byte(s))
		if ok && err != nil {
			t.Fatalf("%s: generated check digit rejected: %v", s, err)
		}
		if !ok && err == nil {
			t.Fatalf("%s: base without a check digit accepted", s)
		}
	}
}

func FuzzParseNHSNumber(f *testing.F) {
	for _, s := range []string{"9434765919", "943 476 5919", "943-476-5919", "", "1234567890", "999 999 9999"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := ParseNHSNumber(b)
		if err != nil {
			if errors.Is(err, ErrNHSMissing) || errors.Is(err, ErrNHSFormat) || errors.Is(err, ErrNHSCheckDigit) || errors.Is(err, ErrNHSPlaceholder) {
				return
			}
			t.Fatalf("unexpected error %v", err)
		}
		// A valid number round-trips through its canonical form.
		back, err := ParseNHSNumber(fmt.Appendf(nil, "%010d", n))
		if err != nil || back != n {
			t.Fatalf("canonical form of %d does not round-trip: %v", n, err)
		}
	})
}
