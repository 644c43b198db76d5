package ingest

import "errors"

// Sentinel errors returned by [ParseNHSNumber]. They never carry the value.
var (
	ErrNHSMissing    = errors.New("missing NHS number")
	ErrNHSFormat     = errors.New("NHS number is not 10 digits")
	ErrNHSCheckDigit = errors.New("NHS number fails the Modulus 11 check")
	// ErrNHSPlaceholder is a number of ten equal digits (0000000000,
	// 1111111111, ..., 9999999999): each passes Modulus 11, but systems
	// use them as fillers for an unknown number, so they name no one.
	ErrNHSPlaceholder = errors.New("NHS number is a placeholder (ten equal digits)")
)

// ParseNHSNumber parses an NHS number written as ten digits, optionally in
// the 3-3-4 grouping separated by single spaces or hyphens ("943 476 5919",
// "943-476-5919"), with surrounding blanks ignored. It checks the Modulus 11
// check digit, refuses the placeholders of ten equal digits, and returns
// the number as an integer. The input never appears in the returned error.
func ParseNHSNumber(b []byte) (uint64, error) {
	b = trimSpace(b)
	if len(b) == 0 {
		return 0, ErrNHSMissing
	}
	var d [10]byte
	switch len(b) {
	case 10:
		copy(d[:], b)
	case 12:
		sep := b[3]
		if (sep != ' ' && sep != '-') || b[7] != sep {
			return 0, ErrNHSFormat
		}
		copy(d[0:3], b[0:3])
		copy(d[3:6], b[4:7])
		copy(d[6:10], b[8:12])
	default:
		return 0, ErrNHSFormat
	}
	var n uint64
	sum := 0
	for i, c := range d {
		if c < '0' || c > '9' {
			return 0, ErrNHSFormat
		}
		v := int(c - '0')
		n = n*10 + uint64(v)
		if i < 9 {
			sum += v * (10 - i)
		}
	}
	check := 11 - sum%11
	if check == 11 {
		check = 0
	}
	if check == 10 || check != int(d[9]-'0') {
		return 0, ErrNHSCheckDigit
	}
	if n%1111111111 == 0 {
		return 0, ErrNHSPlaceholder
	}
	return n, nil
}

// NHSCheckDigit returns the Modulus 11 check digit for the nine leading
// digits in base, and false when no check digit exists (remainder 1).
func NHSCheckDigit(base uint64) (int, bool) {
	sum := 0
	for i := 8; i >= 0; i-- {
		sum += int(base%10) * (10 - i)
		base /= 10
	}
	check := 11 - sum%11
	if check == 11 {
		check = 0
	}
	return check, check != 10
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
