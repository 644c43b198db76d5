package cohorts

import (
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
