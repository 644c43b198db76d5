package ingest

import "testing"

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
