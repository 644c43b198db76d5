//go:build chdb

package cohorts

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/nhs-hub/hub/cohorts/enginetables"
	"github.com/nhs-hub/hub/governance"
)

// parityQueries are the parity suite: every golden query (the ground
// truth's included), every example of docs/cohort-language.md and every
// study of docs/studies, on the test lake.
func parityQueries(t *testing.T) map[string]*Query {
	t.Helper()
	out := map[string]*Query{}
	for name, text := range goldenQueries {
		out["golden "+name] = mustParse(t, text)
	}
	doc, err := os.ReadFile(filepath.Join("..", "docs", "cohort-language.md"))
	if err != nil {
		t.Fatal(err)
	}
	examples := 0
	for i, m := range regexp.MustCompile("(?s)```json\n(.*?)```").FindAllStringSubmatch(string(doc), -1) {
		text := strings.ReplaceAll(m[1], `"demo"`, `"gp"`)
		switch {
		case strings.Contains(text, `"query_sha256"`):
			continue // an answer
		case strings.HasPrefix(strings.TrimSpace(text), `{"kind"`):
			// A measure: asked of everyone.
			text = `{"dataset": "gp", "measures": [` + text + `], "epsilon": 1}`
		}
		out[fmt.Sprintf("docs example %d", i+1)] = mustParse(t, text)
		examples++
	}
	if examples < 3 {
		t.Fatalf("%d examples found in docs/cohort-language.md", examples)
	}
	for name, q := range studyQueries(t) {
		out["study "+name] = q
	}
	return out
}

// TestClickHouseParity runs every statement of the parity suite on DuckDB
// and on ClickHouse and compares the exact aggregates row by row (sums to
// a millionth: the engines add in different orders). A breakdown by_code
// picks each patient's codes by the engine's own hash, so there the
// totals must agree, and every cell with a patient limit no patient
// reaches.
func TestClickHouseParity(t *testing.T) {
	duck, click := engineOn(t, EngineOptions{}), engineOn(t, EngineOptions{Engine: ClickHouse})
	if click.Dialect() != ClickHouse {
		t.Fatal("the ClickHouse engine is not ClickHouse's")
	}
	statements := 0
	for name, q := range parityQueries(t) {
		t.Run(name, func(t *testing.T) {
			dp, err := CompileFor(q, 7, DuckDB)
			if err != nil {
				t.Fatal(err)
			}
			cp, err := CompileFor(q, 7, ClickHouse)
			if err != nil {
				t.Fatal(err)
			}
			ds, cs := dp.Statements(), cp.Statements()
			ds, cs = append(ds, dp.Unknowns...), append(cs, cp.Unknowns...)
			if len(ds) != len(cs) {
				t.Fatalf("%d statements for DuckDB, %d for ClickHouse", len(ds), len(cs))
			}
			for i := range ds {
				want, err := duck.rows(t.Context(), ds[i])
				if err != nil {
					t.Fatalf("statement %d on DuckDB: %v", i, err)
				}
				got, err := click.rows(t.Context(), cs[i])
				if err != nil {
					t.Fatalf("statement %d on ClickHouse: %v\n%s", i, err, cs[i].SQL)
				}
				statements++
				if strings.Contains(ds[i].SQL, "ranked AS") {
					if a, b := total(want, 2), total(got, 2); a != b {
						t.Errorf("statement %d (by code): DuckDB counts %d, ClickHouse %d", i, a, b)
					}
					continue
				}
				if a, b := canonical(want), canonical(got); a != b {
					t.Errorf("statement %d: DuckDB %s\nClickHouse %s\n%s", i, a, b, cs[i].SQL)
				}
			}
		})
	}
	// A patient limit no one reaches: the same cells on both.
	q := mustParse(t, `{"dataset": "gp", "measures": [{"kind": "count", "by_code": "conditions", "max_partitions": 20}], "epsilon": 1, "delta": 1e-6}`)
	dp, _ := CompileFor(q, 3, DuckDB)
	cp, _ := CompileFor(q, 3, ClickHouse)
	want, err := duck.rows(t.Context(), dp.Measures[0])
	if err != nil {
		t.Fatal(err)
	}
	got, err := click.rows(t.Context(), cp.Measures[0])
	if err != nil {
		t.Fatal(err)
	}
	if a, b := canonical(want), canonical(got); a != b || len(want) < 10 {
		t.Errorf("by code, every code: DuckDB %d rows, ClickHouse %d rows, or they differ", len(want), len(got))
	}
	t.Logf("%d statements agree", statements)
}

// engineOn opens the test lake's latest version on an engine.
func engineOn(t *testing.T, opt EngineOptions) *Engine {
	t.Helper()
	s, err := New(Config{Lake: lake(t), State: t.TempDir(), Projects: &grants{m: map[string]*governance.Project{}}, Engine: opt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e, err := s.Engine(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// canonical is rows as sorted text, integers as integers and other
// numbers to a millionth (the rows come in no order).
func canonical(rows [][]any) string {
	out := make([]string, len(rows))
	for i, r := range rows {
		var cells []string
		for _, v := range r {
			switch x := v.(type) {
			case float64:
				if x == math.Trunc(x) {
					cells = append(cells, fmt.Sprint(int64(x)))
				} else {
					cells = append(cells, fmt.Sprintf("%.6f", x))
				}
			case nil:
				cells = append(cells, "NULL")
			default:
				if n := toInt(v); n != 0 || fmt.Sprint(v) == "0" {
					cells = append(cells, fmt.Sprint(n))
				} else {
					cells = append(cells, str(v))
				}
			}
		}
		out[i] = strings.Join(cells, "|")
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// total adds a column of rows.
func total(rows [][]any, col int) int64 {
	var n int64
	for _, r := range rows {
		n += toInt(r[col])
	}
	return n
}

// Past --engine-files-max, the least recently opened ClickHouse databases
// are dropped, but never an open one or one being loaded.
func TestCapClickHouseDatabases(t *testing.T) {
	e := engineOn(t, EngineOptions{Engine: ClickHouse})
	ch.Lock()
	for _, s := range []string{
		"CREATE DATABASE v_00000000000000aa_1", "CREATE TABLE v_00000000000000aa_1.t ENGINE = MergeTree ORDER BY n AS SELECT number AS n FROM numbers(100000)",
		"CREATE TABLE v_00000000000000aa_1.loaded (ok UInt8) ENGINE = TinyLog",
		"CREATE DATABASE v_00000000000000bb_1", "CREATE TABLE v_00000000000000bb_1.t ENGINE = MergeTree ORDER BY n AS SELECT number AS n FROM numbers(100000)",
	} {
		if _, err := chExec(s); err != nil {
			ch.Unlock()
			t.Fatal(err)
		}
	}
	ch.Unlock()
	t.Cleanup(func() {
		ch.Lock()
		chExec("DROP DATABASE IF EXISTS v_00000000000000bb_1 SYNC")
		ch.Unlock()
	})
	dropped, err := capFiles(EngineOptions{Engine: ClickHouse, MaxBytes: 1}, map[string]bool{e.path: true})
	if err != nil {
		t.Fatal(err)
	}
	// Other tests' versions, not open, may go too.
	if !slices.Contains(dropped, "v_00000000000000aa_1") || slices.Contains(dropped, "v_00000000000000bb_1") || slices.Contains(dropped, e.path) {
		t.Errorf("dropped %v, want the whole database not open, not the one being loaded nor the open one (%s)", dropped, e.path)
	}
	xs, err := e.exact(t.Context(), mustPlan(t, e, groundTruthQueries["everyone"]))
	if err != nil || xs[0].count == 0 {
		t.Fatalf("the open database after the cap: %v, %v", xs, err)
	}
}

func mustPlan(t *testing.T, e *Engine, text string) *Plan {
	t.Helper()
	p, err := CompileFor(mustParse(t, text), 1, e.Dialect())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A statement on the ClickHouse engine reads no file and no URL, and
// writes nothing: it runs read-only.
func TestClickHouseReadsNoFile(t *testing.T) {
	e := engineOn(t, EngineOptions{Engine: ClickHouse})
	secret := filepath.Join(t.TempDir(), "secret.csv")
	os.WriteFile(secret, []byte("a\n1\n"), 0o600)
	for _, q := range []string{
		"SELECT count() FROM file(" + enginetables.SQLString(secret) + ", 'CSV')",
		"SELECT count() FROM url('http://127.0.0.1:1/x', 'CSV')",
		"INSERT INTO patients (pid) VALUES (1)",
		"CREATE TABLE x (a UInt8) ENGINE = Memory",
	} {
		if rows, err := e.rows(t.Context(), Statement{SQL: q}); err == nil {
			t.Errorf("%s: ran, %v", q, rows)
		} else if !strings.Contains(err.Error(), "READONLY") && !strings.Contains(err.Error(), "readonly") {
			t.Errorf("%s: %v (want a read-only refusal)", q, err)
		}
	}
	if rows, err := e.rows(t.Context(), Statement{SQL: "SELECT count(*) FROM patients"}); err != nil || toInt(rows[0][0]) == 0 {
		t.Fatalf("the engine answers nothing after the refusals: %v %v", rows, err)
	}
}

// With ClickHouse's session open, a Go panic is still a panic: a nil
// pointer is recovered (as net/http recovers a handler's), not a crash of
// the process by ClickHouse's own fault handler.
func TestGoPanicsRecoverBesideClickHouse(t *testing.T) {
	engineOn(t, EngineOptions{Engine: ClickHouse})
	var nilPointer *Engine
	recovered := func() (ok bool) {
		defer func() { ok = recover() != nil }()
		_ = nilPointer.Manifest
		return false
	}()
	if !recovered {
		t.Fatal("a nil pointer's panic was not recovered")
	}
}
