package cohorts

import (
	"database/sql"
	"fmt"
	"sort"
	"testing"
)

// The benchmark's baseline, DuckDB over views of the Parquet read in
// place, answers every ground-truth query's statements exactly as the
// engine does: it is the same question over the same data.
func TestParquetViewsAgree(t *testing.T) {
	s := newService(t)
	e, err := s.Engine(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	files, err := lake(t).Local(t.Context(), e.Manifest, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	db, err := ParquetViews(t.Context(), e.Manifest, files)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	views := &Engine{db: db, Manifest: e.Manifest}
	for name, text := range groundTruthQueries {
		plan, err := Compile(mustParse(t, text), 1)
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range plan.Statements() {
			want, err := e.rows(t.Context(), st)
			if err != nil {
				t.Fatalf("%s: engine: %v", name, err)
			}
			got, err := views.rows(t.Context(), st)
			if err != nil {
				t.Fatalf("%s: views: %v\n%s", name, err, st.SQL)
			}
			if a, b := canon(want), canon(got); a != b {
				t.Errorf("%s statement %d: engine %s, views %s", name, i, a, b)
			}
		}
	}
}

// canon is rows as sorted text (the statements' rows come in no order).
func canon(rows [][]any) string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = fmt.Sprint(r...)
	}
	sort.Strings(out)
	return fmt.Sprint(out)
}

// The engine tables published with a version hold exactly what an engine
// derives from its parts at load (every table, column by column), and
// answer every golden query's statements alike; each is stored sorted as
// the engine stores it.
func TestEngineTablesAgree(t *testing.T) {
	m := mustManifest(t)
	if len(m.EngineTables) != len(tableLoads) {
		t.Fatalf("the test lake has %d engine tables, want %d", len(m.EngineTables), len(tableLoads))
	}
	if err := lake(t).Verify(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	ef, err := lake(t).LocalEngine(t.Context(), m, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	published, err := OpenEngine(t.Context(), m, ef, EngineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer published.Close()
	old := *m
	old.EngineTables = nil
	pf, err := lake(t).Local(t.Context(), &old, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	derived, err := OpenEngine(t.Context(), &old, pf, EngineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer derived.Close()
	// same runs st on both and compares their rows.
	same := func(what string, st Statement) [][]any {
		t.Helper()
		want, err := derived.rows(t.Context(), st)
		if err != nil {
			t.Fatal(err)
		}
		got, err := published.rows(t.Context(), st)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := canon(want), canon(got); a != b {
			t.Errorf("%s: derived %s, published %s", what, a, b)
		}
		return want
	}
	for _, tl := range tableLoads {
		want := same(tl.Name, Statement{SQL: "SELECT count(*), sum(hash(COLUMNS(*))::HUGEINT) FROM " + tl.Name})
		if m.EngineTables[tl.Name].Rows != toInt(want[0][0]) {
			t.Errorf("%s: the manifest says %d rows, the table has %v", tl.Name, m.EngineTables[tl.Name].Rows, want[0][0])
		}
	}
	for name, text := range goldenQueries {
		plan, err := Compile(mustParse(t, text), 1)
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range plan.Statements() {
			same(fmt.Sprintf("%s statement %d", name, i), st)
		}
	}
	// Sorted by code in the file: a code's rows are one run.
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var runs, codes int
	q := "SELECT count(*) FILTER (WHERE code IS DISTINCT FROM prev), count(DISTINCT code) FROM (SELECT code, lag(code) OVER (ORDER BY file_row_number) AS prev FROM read_parquet(" +
		sqlList(ef["conditions"]) + ", file_row_number = true))"
	if err := db.QueryRowContext(t.Context(), q).Scan(&runs, &codes); err != nil {
		t.Fatal(err)
	}
	if runs != codes || codes < 5 {
		t.Errorf("conditions' engine table: %d runs of %d codes, want one run a code", runs, codes)
	}
}
