package ingest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/bits"
)

// A small JSON scanner for NDJSON resources: it walks an object's members
// as raw key and value slices of the line, without allocating, and skips
// the values ingest does not read at the speed of bytes.IndexByte (strings
// are most of a FHIR resource). It checks the structure of everything it
// walks or skips: strings end, brackets match by kind, members are
// "key": value separated by commas, literals are true, false, null or
// number-shaped, and nothing but blanks follows the resource. It does not
// check what encoding/json also would inside the values it skips (a
// number's exact grammar, a string's escapes), which carry nothing ingest
// reads. encoding/json decoded these resources at 120 MB/s a core and
// goccy/go-json at 485 MB/s, most of it allocation: this reads them at
// several times that.

var errJSON = errors.New("malformed JSON")

// maxDepth bounds nesting, as encoding/json's does.
const maxDepth = 10000

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd returns the index just past the closing quote of the string
// whose contents start at b[i]. It looks for the quote and backslashes
// eight bytes at a time (SWAR, as plainRecord does for CSV): strings are
// most of a FHIR resource, and a byte loop or a call into IndexByte for
// each of them took 3 of 26 CPU-s on the benchmark export.
func stringEnd(b []byte, i int) (int, error) {
	const ones, lows = 0x0101010101010101, 0x7F7F7F7F7F7F7F7F
	// zero marks the zero bytes of x exactly (no borrow between bytes).
	zero := func(x uint64) uint64 { return ^((x&lows + lows) | x | lows) }
	j := i
	for {
		k := -1
		for ; j+8 <= len(b); j += 8 {
			w := binary.LittleEndian.Uint64(b[j:])
			if m := zero(w^(ones*'"')) | zero(w^(ones*'\\')); m != 0 {
				k = j + bits.TrailingZeros64(m)/8
				break
			}
		}
		if k < 0 {
			for k = j; k < len(b) && b[k] != '"' && b[k] != '\\'; k++ {
			}
			if k >= len(b) {
				return 0, errJSON
			}
		}
		if b[k] == '"' {
			return k + 1, nil
		}
		j = k + 2 // an escape: the backslash and the byte it escapes
		if j > len(b) {
			return 0, errJSON
		}
	}
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errJSON
	}
	switch c := b[i]; {
	case c == '"':
		return stringEnd(b, i+1)
	case c == '{' || c == '[':
		return skipBlock(b, i)
	default:
		j := i
		for j < len(b) {
			switch b[j] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				goto done
			}
			j++
		}
	done:
		if !literal(b[i:j]) {
			return 0, errJSON
		}
		return j, nil
	}
}

// literal reports whether b is true, false, null or shaped like a number.
func literal(b []byte) bool {
	switch string(b) {
	case "true", "false", "null":
		return true
	case "":
		return false
	}
	if b[0] != '-' && !isDigit(b[0]) {
		return false
	}
	for _, c := range b[1:] {
		if !isDigit(c) && c != '.' && c != 'e' && c != 'E' && c != '+' && c != '-' {
			return false
		}
	}
	return true
}

// skipBlock returns the index just past the object or array at b[i],
// checking that brackets match by kind and strings end.
func skipBlock(b []byte, i int) (int, error) {
	var stack [64]byte
	open := stack[:0]
	for j := i; j < len(b); j++ {
		switch c := b[j]; c {
		case '"':
			end, err := stringEnd(b, j+1)
			if err != nil {
				return 0, err
			}
			j = end - 1
		case '{', '[':
			if len(open) >= maxDepth {
				return 0, errJSON
			}
			open = append(open, c)
		case '}', ']':
			want := byte('{')
			if c == ']' {
				want = '['
			}
			if len(open) == 0 || open[len(open)-1] != want {
				return 0, errJSON
			}
			open = open[:len(open)-1]
			if len(open) == 0 {
				return j + 1, nil
			}
		}
	}
	return 0, errJSON
}

// jsonString returns the contents of the JSON string val, unescaped (into
// a new slice, only when it holds an escape), or nil when val is not a
// string.
func jsonString(val []byte) []byte {
	if len(val) < 2 || val[0] != '"' {
		return nil
	}
	s := val[1 : len(val)-1]
	if bytes.IndexByte(s, '\\') < 0 {
		return s
	}
	var out string
	if json.Unmarshal(val, &out) != nil {
		return nil
	}
	return []byte(out)
}

// jsonValue returns a number's text, a string's contents (which then fail
// as a number), or nil for anything else.
func jsonValue(val []byte) []byte {
	if len(val) > 0 && val[0] == '"' {
		return jsonString(val)
	}
	if len(val) == 0 || string(val) == "null" || val[0] == '{' || val[0] == '[' || string(val) == "true" || string(val) == "false" {
		return nil
	}
	return val
}

// walkObject walks the object at b[i], calling fn with each member's key
// and the index of its value; fn returns the index just past the value
// (skipValue's, when it does not read it). It returns the index just past
// the object. Each byte is looked at once, however deep fn reads.
func walkObject(b []byte, i int, fn func(key []byte, vi int) (int, error)) (int, error) {
	if i >= len(b) || b[i] != '{' {
		return 0, errJSON
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, errJSON
		}
		kEnd, err := stringEnd(b, i+1)
		if err != nil {
			return 0, err
		}
		key := b[i+1 : kEnd-1]
		i = skipWS(b, kEnd)
		if i >= len(b) || b[i] != ':' {
			return 0, errJSON
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return 0, errJSON
		}
		vEnd, err := fn(key, i)
		if err != nil {
			return 0, err
		}
		var done bool
		if i, done, err = afterValue(b, vEnd, '}'); done || err != nil {
			return i, err
		}
	}
}

// afterValue moves past what follows a member or element ending at b[i]:
// a comma (to the next one), or the closing bracket, when done is set.
func afterValue(b []byte, i int, closing byte) (next int, done bool, err error) {
	i = skipWS(b, i)
	switch {
	case i >= len(b):
		return 0, false, errJSON
	case b[i] == ',':
		return skipWS(b, i+1), false, nil
	case b[i] == closing:
		return i + 1, true, nil
	}
	return 0, false, errJSON
}

// walkArray walks the array at b[i] as walkObject walks an object.
func walkArray(b []byte, i int, fn func(vi int) (int, error)) (int, error) {
	if i >= len(b) || b[i] != '[' {
		return 0, errJSON
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return i + 1, nil
	}
	for {
		if i >= len(b) {
			return 0, errJSON
		}
		vEnd, err := fn(i)
		if err != nil {
			return 0, err
		}
		var done bool
		if i, done, err = afterValue(b, vEnd, ']'); done || err != nil {
			return i, err
		}
	}
}

// stringAt returns the string value at b[i], unescaped (nil when the
// value is not a string), and the index just past it.
func stringAt(b []byte, i int) ([]byte, int, error) {
	end, err := skipValue(b, i)
	if err != nil {
		return nil, 0, err
	}
	return jsonString(b[i:end]), end, nil
}

// objectAt walks the value at b[i] with fn when it is an object and skips
// it otherwise; arrayAt likewise for arrays.
func objectAt(b []byte, i int, fn func(key []byte, vi int) (int, error)) (int, error) {
	if b[i] != '{' {
		return skipValue(b, i)
	}
	return walkObject(b, i, fn)
}

func arrayAt(b []byte, i int, fn func(vi int) (int, error)) (int, error) {
	if b[i] != '[' {
		return skipValue(b, i)
	}
	return walkArray(b, i, fn)
}

// ResourceKey returns the resourceType and id of an NDJSON line's
// resource, and false when the line is not a JSON object that has both.
func ResourceKey(line []byte) (typ, id []byte, ok bool) {
	i := skipWS(line, 0)
	end, err := walkObject(line, i, func(key []byte, vi int) (int, error) {
		switch string(key) {
		case "resourceType":
			return strAt(line, vi, &typ)
		case "id":
			return strAt(line, vi, &id)
		}
		return skipValue(line, vi)
	})
	return typ, id, err == nil && skipWS(line, end) == len(line) && len(typ) > 0 && len(id) > 0
}
