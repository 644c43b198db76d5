package cohorts

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// goldenQueries are compiled and compared with testdata/<name>.golden.
var goldenQueries = map[string]string{
	"smallest": `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5}`,
	"all_measures": `{"dataset": "gp", "index_date": "2024-01-01",
		"criteria": {"all": [{"condition": {"id": "t2d", "codes": {"snomed": ["44054006"], "icd10": ["E11"]},
		  "window": {"from": "2020-01-01", "to": "2023-12-31"}}}, {"not": {"region": ["LS", "BD"]}}]},
		"measures": [
		  {"kind": "count", "by": ["year", "sex"], "year_of": "t2d"},
		  {"kind": "count", "by_code": "medications", "max_partitions": 2, "window": {"relative_to": "t2d", "days_after": 365}},
		  {"kind": "mean", "of": {"kind": "observation", "codes": {"snomed": ["999791000000106"]}, "unit": "mmol/mol", "pick": "first"}, "lower": 20, "upper": 150},
		  {"kind": "quantiles", "of": {"kind": "age"}, "ranks": [0.5]},
		  {"kind": "sum", "of": {"kind": "events", "table": "encounters", "types": ["inpatient"]}, "lower": 0, "upper": 5}],
		"epsilon": 1, "delta": 1e-6}`,
}

func init() {
	for name, q := range groundTruthQueries {
		goldenQueries["gt_"+strings.ReplaceAll(name, " ", "_")] = q
	}
}

func render(p *Plan) string {
	var b strings.Builder
	for i, st := range p.Measures {
		fmt.Fprintf(&b, "-- measure %d\n%s;\n-- args: %v\n\n", i, st.SQL, st.Args)
	}
	return b.String()
}

// TestCompileGolden compares generated SQL with reviewed golden files.
func TestCompileGolden(t *testing.T) {
	names := make([]string, 0, len(goldenQueries))
	for n := range goldenQueries {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			p, err := Compile(mustParse(t, goldenQueries[name]), 42)
			if err != nil {
				t.Fatal(err)
			}
			got := render(p)
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./cohorts -run Golden -update)", err)
			}
			if got != string(want) {
				t.Errorf("SQL differs from %s:\n%s", path, got)
			}
		})
	}
}

var (
	reStringLit = regexp.MustCompile(`'`)
	// a number not part of an identifier (e1, t2d) is a literal
	reNumberLit = regexp.MustCompile(`(^|[^A-Za-z0-9_])[0-9]+(\.[0-9]+)?([^A-Za-z0-9_]|$)`)
)

// checkNoLiterals fails when SQL holds any literal: every value is bound.
func checkNoLiterals(t *testing.T, p *Plan) {
	t.Helper()
	for _, st := range p.Measures {
		if reStringLit.MatchString(st.SQL) || reNumberLit.MatchString(st.SQL) {
			t.Fatalf("literal in SQL:\n%s", st.SQL)
		}
		if n := strings.Count(st.SQL, "?"); n != len(st.Args) {
			t.Fatalf("%d placeholders, %d arguments", n, len(st.Args))
		}
	}
}

// TestNoUnboundLiteral: no compiled statement holds a literal.
func TestNoUnboundLiteral(t *testing.T) {
	for name, q := range goldenQueries {
		p, err := Compile(mustParse(t, q), 42)
		if err != nil {
			t.Fatal(name, err)
		}
		checkNoLiterals(t, p)
	}
}

// FuzzQuery: any input either fails validation with a QueryError or
// compiles to SQL without a literal.
// fuzzLists holds the code list FuzzQuery's queries may name.
var fuzzLists *Codelists

func FuzzQuery(f *testing.F) {
	for _, q := range goldenQueries {
		f.Add(q)
	}
	var err error
	if fuzzLists, err = OpenCodelists(f.TempDir()); err != nil {
		f.Fatal(err)
	}
	if err := fuzzLists.Put(&Codelist{Name: "test/t2d", Version: "1", System: SystemSNOMED, Codes: []string{"44054006"}}); err != nil {
		f.Fatal(err)
	}
	f.Add(`{"dataset": "gp", "criteria": {"condition": {"codes": {"codelist": "test/t2d@1", "icd10": ["E11"]}}}, "measures": [{"kind": "count"}], "epsilon": 1}`)
	f.Add(`{"dataset": "gp", "index_date": "2024-01-01", "report_unknowns": true, "criteria": {"not": {"region": ["ZE"]}}, "measures": [{"kind": "count"}], "epsilon": 1}`)
	f.Add(`{"dataset": "gp", "cohorts": [{"name": "a", "criteria": {"sex": ["female"]}}, {"name": "b", "criteria": {"not": {"sex": ["female"]}}}],
		"measures": [{"kind": "count"}], "epsilon": 1}`)
	f.Add(`{"dataset": "gp", "measures": [{"kind": "rate", "by": ["sex"], "denominator": {"registered": {"days_before": 365}},
		"numerator": {"observation": {"codes": {"snomed": ["999791000000106"]}, "window": {"relative_to": "interval"}}},
		"intervals": {"every": "month", "from": "2023-01-01", "to": "2023-06-30"}}], "epsilon": 1}`)
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQuery(strings.NewReader(s))
		if err != nil {
			if _, ok := err.(*QueryError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if _, err := resolveCodelists(q, fuzzLists); err != nil {
			if _, ok := err.(*QueryError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		p, err := Compile(q, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkNoLiterals(t, p)
		checkNoLiterals(t, &Plan{Measures: p.Unknowns})
		for _, sub := range append([]*Plan{p}, p.cohorts...) {
			for _, periods := range sub.rates {
				for _, rp := range periods {
					checkNoLiterals(t, rp.den)
					checkNoLiterals(t, rp.num)
				}
			}
		}
	})
}

// Queries that say something the language cannot mean are refused with
// the path of the mistake and what to write instead.
func TestQueryErrors(t *testing.T) {
	for _, c := range []struct{ query, want string }{
		{`{"dataset": "gp", "criteria": {"encounter": {"window": {"from": "2020-01-01", "until": ["deregistration"]}}}, "measures": [{"kind": "count"}], "epsilon": 1}`,
			`criteria.encounter.window.until: "deregistration" ends follow-up from an anchor; give relative_to`},
		{`{"dataset": "gp", "index_date": "2020-01-01", "criteria": {"encounter": {"window": {"relative_to": "index", "days_after": 9, "until": ["discharge"]}}}, "measures": [{"kind": "count"}], "epsilon": 1}`,
			`criteria.encounter.window.until: "death", "deregistration" or a date`},
		{`{"dataset": "gp", "criteria": {"practice": ["A81001"], "unknown": "sometimes"}, "measures": [{"kind": "count"}], "epsilon": 1}`,
			`criteria.unknown`},
	} {
		_, err := ParseQuery(strings.NewReader(c.query))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.query, err, c.want)
		}
	}
}
