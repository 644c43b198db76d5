package ingest

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

func TestParseDate(t *testing.T) {
	tests := []struct {
		in   string
		want int32
		ok   bool
	}{
		{"1970-01-01", 0, true},
		{"2000-03-01", 11017, true},
		{"2024-02-29", 19782, true},
		{"2023-02-29", 0, false},
		{"2023-13-01", 0, false},
		{"2023-1-01", 0, false},
		{"01/02/2023", 0, false},
		{"1850-01-01", 0, false},
		{"2023-04-05T10:00:00Z", 19452, true},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseDate([]byte(tt.in))
		if ok != tt.ok || (ok && int32(got) != tt.want) {
			t.Errorf("parseDate(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// Every date of the accepted years parses to the day count the time
// package gives, and every day past a month's end is refused.
func TestParseDateEveryDay(t *testing.T) {
	for d := time.Date(minYear, 1, 1, 0, 0, 0, 0, time.UTC); d.Year() <= maxYear; d = d.AddDate(0, 0, 1) {
		want := int32(d.Unix() / 86400)
		got, ok := parseDate([]byte(d.Format("2006-01-02")))
		if !ok || int32(got) != want {
			t.Fatalf("parseDate(%s) = %d, %v; want %d", d.Format("2006-01-02"), got, ok, want)
		}
		if next := d.AddDate(0, 0, 1); next.Month() != d.Month() {
			for day := d.Day() + 1; day <= 32; day++ {
				s := fmt.Sprintf("%04d-%02d-%02d", d.Year(), d.Month(), day)
				if _, ok := parseDate([]byte(s)); ok {
					t.Fatalf("parseDate(%s) accepted a day past the month's end", s)
				}
			}
		}
	}
	for _, s := range []string{"1889-12-31", "2101-01-01", "2023-00-10", "2023-01-00", "2023-1a-01", "2023-01-0/", "2023-01-0:", "+023-01-01"} {
		if _, ok := parseDate([]byte(s)); ok {
			t.Errorf("parseDate(%s) accepted", s)
		}
	}
}

// validSCTID's one-table Verhoeff check agrees with the two-table
// definition on random digit strings.
func TestVerhoeffStep(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ref := func(b []byte) bool {
		c := byte(0)
		for i := range b {
			c = verhoeffD[c][verhoeffP[i%8][b[len(b)-1-i]-'0']]
		}
		return c == 0
	}
	valid := 0
	for range 200000 {
		b := make([]byte, 6+r.IntN(13))
		for i := range b {
			b[i] = byte('0' + r.IntN(10))
		}
		b[0] = byte('1' + r.IntN(9))
		b[len(b)-3], b[len(b)-2] = byte('0'+r.IntN(2)), '0'
		if got, want := validSCTID(b), ref(b); got != want {
			t.Fatalf("validSCTID(%s) = %v, want %v", b, got, want)
		}
		if ref(b) {
			valid++
		}
	}
	if valid < 10000 { // about one in ten passes the check digit
		t.Fatalf("only %d of 200000 random identifiers valid; the test no longer exercises both answers", valid)
	}
}

func TestValidCodes(t *testing.T) {
	sct := map[string]bool{
		"44054006":            true,  // type 2 diabetes mellitus
		"38341003":            true,  // hypertensive disorder
		"827241000000103":     true,  // type 1 dissent (UK extension)
		"827261000000102":     true,  // withdrawal of type 1 dissent
		"44054007":            false, // check digit off
		"04405406":            false, // leading zero
		"12345":               false, // too short
		"4405400X":            false,
		"1234567890123456789": false,
	}
	for code, want := range sct {
		if got := validSCTID([]byte(code)); got != want {
			t.Errorf("validSCTID(%s) = %v, want %v", code, got, want)
		}
	}
	for _, base := range []string{"4405400", "82724100000010"} {
		full := base + string(VerhoeffDigit([]byte(base)))
		if !validSCTID([]byte(full)) {
			t.Errorf("VerhoeffDigit(%s) gave invalid %s", base, full)
		}
	}
	icd := map[string]bool{"E11": true, "E11.9": true, "I10X": true, "J45.909": true, "e11": false, "E1": false, "E11.": false, "11E": false}
	for code, want := range icd {
		if got := validICD10([]byte(code)); got != want {
			t.Errorf("validICD10(%s) = %v, want %v", code, got, want)
		}
	}
}

func TestNormalisePostcode(t *testing.T) {
	tests := map[string]string{"LS6 2AB": "LS6 2AB", "ls62ab": "LS6 2AB", "S1 1AA": "S1 1AA", "YO10 5DD": "YO10 5DD", "BD1  1HY": "BD1 1HY", "XYZ": "", "LS6 2A!": "", "123 4AB": ""}
	for in, want := range tests {
		got, ok := normalisePostcode(nil, []byte(in))
		if (want == "") == ok || (ok && string(got) != want) {
			t.Errorf("normalisePostcode(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

// The Verhoeff permutation table's rows must be successive powers of its
// first non-trivial row; a transposed entry once hid here.
func TestVerhoeffPermutationPowers(t *testing.T) {
	for i := 2; i < 8; i++ {
		for x := 0; x < 10; x++ {
			if got, want := verhoeffP[i][x], verhoeffP[1][verhoeffP[i-1][x]]; got != want {
				t.Fatalf("p[%d][%d] = %d, want %d", i, x, got, want)
			}
		}
	}
}
