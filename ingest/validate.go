package ingest

import (
	"bytes"
	"strconv"

	"github.com/apache/arrow-go/v18/arrow"
)

// Dates are accepted from minYear to maxYear inclusive.
const (
	minYear = 1890
	maxYear = 2100
)

// parseDate parses an ISO 8601 calendar date (YYYY-MM-DD). A FHIR dateTime
// ("2023-04-05T10:00:00Z") is accepted and cut to its date.
func parseDate(b []byte) (arrow.Date32, bool) {
	b = trimSpace(b)
	if len(b) > 10 && b[10] == 'T' {
		b = b[:10]
	}
	if len(b) != 10 || b[4] != '-' || b[7] != '-' {
		return 0, false
	}
	// A digit minus '0' wraps to over 9 for anything else.
	y0, y1, y2, y3 := b[0]-'0', b[1]-'0', b[2]-'0', b[3]-'0'
	m0, m1, d0, d1 := b[5]-'0', b[6]-'0', b[8]-'0', b[9]-'0'
	if y0 > 9 || y1 > 9 || y2 > 9 || y3 > 9 || m0 > 9 || m1 > 9 || d0 > 9 || d1 > 9 {
		return 0, false
	}
	y := int(y0)*1000 + int(y1)*100 + int(y2)*10 + int(y3)
	m := int(m0)*10 + int(m1)
	d := int(d0)*10 + int(d1)
	if y < minYear || y > maxYear || m < 1 || m > 12 || d < 1 {
		return 0, false
	}
	leap := yearLeap[y-minYear]
	if d > int(monthDays[leap][m]) {
		return 0, false
	}
	return arrow.Date32(yearDays[y-minYear] + int32(monthStart[leap][m]) + int32(d) - 1), true
}

// Calendar tables for parseDate: look-ups in place of the divisions of
// daysFromCivil (0.2 CPU-s on the benchmark extract's 33 M dates).
var (
	yearDays   [maxYear - minYear + 1]int32 // days from 1970-01-01 to 1 January
	yearLeap   [maxYear - minYear + 1]uint8 // 1 in a leap year
	monthDays  = [2][13]uint8{{0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}, {0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}}
	monthStart [2][13]uint16 // days from 1 January to the 1st of the month
)

func init() {
	for y := minYear; y <= maxYear; y++ {
		yearDays[y-minYear] = int32(daysFromCivil(y, 1, 1))
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			yearLeap[y-minYear] = 1
		}
	}
	for leap := range monthStart {
		for m := 2; m <= 12; m++ {
			monthStart[leap][m] = monthStart[leap][m-1] + uint16(monthDays[leap][m-1])
		}
	}
}

// daysFromCivil returns days since 1970-01-01 (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int) int {
	if m <= 2 {
		y--
	}
	era := y / 400
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// Verhoeff tables, used by SNOMED CT identifiers (and so dm+d codes).
var (
	verhoeffD = [10][10]byte{
		{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 2, 3, 4, 0, 6, 7, 8, 9, 5},
		{2, 3, 4, 0, 1, 7, 8, 9, 5, 6}, {3, 4, 0, 1, 2, 8, 9, 5, 6, 7},
		{4, 0, 1, 2, 3, 9, 5, 6, 7, 8}, {5, 9, 8, 7, 6, 0, 4, 3, 2, 1},
		{6, 5, 9, 8, 7, 1, 0, 4, 3, 2}, {7, 6, 5, 9, 8, 2, 1, 0, 4, 3},
		{8, 7, 6, 5, 9, 3, 2, 1, 0, 4}, {9, 8, 7, 6, 5, 4, 3, 2, 1, 0},
	}
	verhoeffP = [8][10]byte{
		{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 5, 7, 6, 2, 8, 3, 0, 9, 4},
		{5, 8, 0, 3, 7, 9, 6, 1, 4, 2}, {8, 9, 1, 6, 0, 4, 3, 5, 2, 7},
		{9, 4, 5, 3, 1, 2, 6, 8, 7, 0}, {4, 2, 8, 6, 5, 7, 3, 9, 0, 1},
		{2, 7, 9, 3, 8, 0, 6, 4, 1, 5}, {7, 0, 4, 6, 9, 1, 3, 2, 5, 8},
	}
)

// verhoeffStep[i][c][d] = verhoeffD[c][verhoeffP[i][d]]: one look-up a
// digit instead of two dependent ones.
var verhoeffStep = func() (t [8][10][10]byte) {
	for i := range t {
		for c := range t[i] {
			for d := range t[i][c] {
				t[i][c][d] = verhoeffD[c][verhoeffP[i][d]]
			}
		}
	}
	return t
}()

// validSCTID reports whether b is a well-formed SNOMED CT concept
// identifier: 6 to 18 digits, no leading zero, a concept partition
// identifier ("00" or "10") and a valid Verhoeff check digit. Membership of
// the terminology is not checked here: that needs a terminology release.
func validSCTID(b []byte) bool {
	n := len(b)
	if n < 6 || n > 18 || b[0] == '0' {
		return false
	}
	c := byte(0)
	for i := 0; i < n; i++ {
		d := b[n-1-i] - '0'
		if d > 9 {
			return false
		}
		c = verhoeffStep[i%8][c][d]
	}
	if c != 0 {
		return false
	}
	part := b[n-3 : n-1]
	return (part[0] == '0' || part[0] == '1') && part[1] == '0'
}

// VerhoeffDigit returns the check digit that completes the digits in b.
func VerhoeffDigit(b []byte) byte {
	c := byte(0)
	for i := 0; i < len(b); i++ {
		c = verhoeffD[c][verhoeffP[(i+1)%8][b[len(b)-1-i]-'0']]
	}
	inv := [10]byte{0, 4, 3, 2, 1, 5, 6, 7, 8, 9}
	return '0' + inv[c]
}

// validICD10 reports whether b is a well-formed ICD-10 code: a letter, two
// digits, then optionally a dot and one to four further digits or letters
// (the UK's 5th-character extensions such as "E11.9" or "I10X" included).
func validICD10(b []byte) bool {
	if len(b) < 3 || len(b) > 8 || b[0] < 'A' || b[0] > 'Z' || !isDigit(b[1]) || !isDigit(b[2]) {
		return false
	}
	rest := b[3:]
	if len(rest) > 0 && rest[0] == '.' {
		rest = rest[1:]
		if len(rest) == 0 {
			return false
		}
	}
	if len(rest) > 4 {
		return false
	}
	for _, c := range rest {
		if !isDigit(c) && (c < 'A' || c > 'Z') {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// normalisePostcode returns a UK postcode in upper case with one space
// before the inward code ("ls62ab" → "LS6 2AB"), or false when b is not
// shaped like one. dst is reused.
func normalisePostcode(dst, b []byte) ([]byte, bool) {
	dst = dst[:0]
	for _, c := range b {
		switch {
		case c == ' ':
		case c >= 'a' && c <= 'z':
			dst = append(dst, c-32)
		case (c >= 'A' && c <= 'Z') || isDigit(c):
			dst = append(dst, c)
		default:
			return dst, false
		}
	}
	n := len(dst)
	if n < 5 || n > 7 {
		return dst, false
	}
	in := dst[n-3:]
	if !isDigit(in[0]) || !isLetter(in[1]) || !isLetter(in[2]) || !isLetter(dst[0]) {
		return dst, false
	}
	out := dst[:n-3]
	for _, c := range out[1:] {
		if !isDigit(c) && !isLetter(c) {
			return dst, false
		}
	}
	dst = append(dst, 0)
	copy(dst[n-2:], dst[n-3:n])
	dst[n-3] = ' '
	return dst, true
}

func isLetter(c byte) bool { return c >= 'A' && c <= 'Z' }

// validODS reports whether b looks like a GP practice ODS code (a letter
// and five digits, e.g. B86001).
func validODS(b []byte) bool {
	if len(b) != 6 || !isLetter(b[0]) {
		return false
	}
	for _, c := range b[1:] {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// ethnicCategories are the NHS ethnic category codes (NHS Data Dictionary
// "Ethnic Category"), Z meaning not stated.
const ethnicCategories = "ABCDEFGHJKLMNPRSZ"

func validEthnicity(b []byte) bool {
	return len(b) == 1 && bytes.IndexByte([]byte(ethnicCategories), b[0]) >= 0
}

// parseValue parses a finite decimal observation value.
func parseValue(b []byte) (float64, bool) {
	v, err := strconv.ParseFloat(string(trimSpace(b)), 64)
	if err != nil || v != v || v > 1e12 || v < -1e12 {
		return 0, false
	}
	return v, true
}

// equalFold reports whether b equals the lower-case ASCII word s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 32
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// ValidSCTID reports whether s is a well-formed SNOMED CT concept
// identifier (see validSCTID). dm+d identifiers have the same form.
func ValidSCTID(s string) bool { return validSCTID([]byte(s)) }

// ValidICD10 reports whether s is a well-formed ICD-10 code such as "E11",
// "E11.9" or "I10X".
func ValidICD10(s string) bool { return validICD10([]byte(s)) }
