package ingest

import (
	"bytes"
	"encoding/json"
	"testing"
)

// walkTop returns the members of a line's top-level object as walkObject
// sees them, last value winning for a repeated key, and whether the line
// is one object and nothing else.
func walkTop(line []byte) (map[string]string, bool) {
	members := map[string]string{}
	i := skipWS(line, 0)
	end, err := walkObject(line, i, func(key []byte, vi int) (int, error) {
		e, err := skipValue(line, vi)
		if err == nil {
			members[string(key)] = string(line[vi:e])
		}
		return e, err
	})
	return members, err == nil && skipWS(line, end) == len(line)
}

func TestJSONScan(t *testing.T) {
	for _, c := range []struct {
		line string
		ok   bool
	}{
		{`{}`, true},
		{` {"a" : 1 , "b":[1, {"c":"d"}], "e":"x\"}y\\", "f":null} `, true},
		{`{"a":"\u00e9\n","b":-1.5e3,"c":true,"d":false}`, true},
		{`{"a":[[[]]],"b":{"c":{"d":{}}}}`, true},
		{`{"a":1,}`, false},
		{`{"a" 1}`, false},
		{`{"a":[1,2}`, false},
		{`{"a":{"b":1]}`, false},
		{`{"a":"x}`, false},
		{`{"a":tru}`, false},
		{`{"a":1} x`, false},
		{`{}{}`, false},
		{`[1,2]`, false},
		{`{"a":1`, false},
		{`"a"`, false},
		{``, false},
		{`{1:2}`, false},
	} {
		if _, ok := walkTop([]byte(c.line)); ok != c.ok {
			t.Errorf("%s: accepted %v, want %v", c.line, ok, c.ok)
		}
	}
	if got := string(jsonString([]byte(`"O\u2019Brien \"Jr\""`))); got != "O\u2019Brien \"Jr\"" {
		t.Errorf("unescaped %q", got)
	}
}

// FuzzJSONScan checks the scanner against encoding/json: every JSON
// object is accepted with the same members; what the scanner accepts has
// balanced, terminated structure (it may accept what encoding/json would
// refuse inside values it skips, never the other way round).
func FuzzJSONScan(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":[1,{"b":"c\"d"}],"e":null}`, `{"resourceType":"Observation","component":[{"code":{"coding":[{"system":"http://loinc.org","code":"1"}]},"valueQuantity":{"value":1e3}}]}`, `{"a":"\\"}`, `{"a":[}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		if bytes.ContainsAny(line, "\n") {
			return // one line is one resource
		}
		members, ok := walkTop(line)
		var want map[string]json.RawMessage
		if json.Unmarshal(line, &want) == nil && json.Valid(line) && bytes.HasPrefix(bytes.TrimLeft(line, " \t\r"), []byte("{")) {
			if !ok {
				t.Fatalf("a JSON object was refused: %q", line)
			}
			for k, v := range want {
				// encoding/json unescapes keys; compare those without escapes.
				if bytes.IndexByte([]byte(k), '\\') >= 0 || !json.Valid([]byte(`"`+k+`"`)) {
					continue
				}
				if got, found := members[k]; found && got != string(v) {
					t.Fatalf("member %q: %q, encoding/json %q", k, got, v)
				}
			}
		}
		// Whatever the line, decoding it for every table must not panic.
		st := newState(nil)
		st.ndop = &OptOuts{set: newIDSet(16)}
		for _, tb := range Tables {
			d := newFHIRDecoder(st, tb)
			d.decode(tb, line, func([][]byte, []byte) {})
		}
	})
}
