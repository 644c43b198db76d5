//go:build chdb

package main

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chdb-io/chdb-go/chdb"
	_ "github.com/duckdb/duckdb-go/v2"
)

// TestChdbAgainstDuckDB measures, for the sizing of issue 20, ClickHouse
// (chdb, in process) and DuckDB running the same two cohort questions over
// the same Parquet parts of a published version, each reading the files
// in place: women aged 40-80 by region (the patients table), and patients
// with type 2 diabetes and an HbA1c over 48 in 2023 (conditions and
// observations). It runs only with HUB_BENCH_LAKE naming a version's
// folder (make bench-chdb); it prints the best of five runs of each and
// their ratio, and checks the two engines agree.
func TestChdbAgainstDuckDB(t *testing.T) {
	dir := os.Getenv("HUB_BENCH_LAKE")
	if dir == "" {
		t.Skip("HUB_BENCH_LAKE names a published version's folder (make bench-chdb)")
	}
	dir, _ = filepath.Abs(dir)
	t.Chdir(dir) // chdb reads files under its working directory only
	queries := []struct{ name, duck, ch string }{
		{"women 40-80 by region",
			`SELECT postcode_area, count(*) FROM read_parquet('patients/*.parquet') WHERE sex = 'female' AND year_of_birth BETWEEN 1943 AND 1984 GROUP BY ALL ORDER BY 1`,
			`SELECT postcode_area, count() FROM file('patients/*.parquet', Parquet) WHERE sex = 'female' AND year_of_birth BETWEEN 1943 AND 1984 GROUP BY ALL ORDER BY 1`},
		{"T2D and HbA1c > 48 in 2023",
			`SELECT count(*) FROM (SELECT DISTINCT patient_id FROM read_parquet('conditions/*.parquet') WHERE (code_system = 'snomed' AND code = '44054006') OR (code_system = 'icd10' AND starts_with(code, 'E11'))) c
			 WHERE patient_id IN (SELECT patient_id FROM read_parquet('observations/*.parquet') WHERE code_system = 'snomed' AND code = '999791000000106' AND value > 48 AND effective_date BETWEEN DATE '2023-01-01' AND DATE '2023-12-31')`,
			`SELECT count() FROM (SELECT DISTINCT patient_id FROM file('conditions/*.parquet', Parquet) WHERE (code_system = 'snomed' AND code = '44054006') OR (code_system = 'icd10' AND startsWith(code, 'E11'))) c
			 WHERE patient_id IN (SELECT patient_id FROM file('observations/*.parquet', Parquet) WHERE code_system = 'snomed' AND code = '999791000000106' AND value > 48 AND effective_date BETWEEN toDate('2023-01-01') AND toDate('2023-12-31'))`},
	}
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	best := func(run func() (string, error)) (time.Duration, string) {
		var times []time.Duration
		var out string
		for range 5 {
			start := time.Now()
			o, err := run()
			if err != nil {
				t.Fatal(err)
			}
			times = append(times, time.Since(start))
			out = o
		}
		return slices.Min(times), out
	}
	for _, q := range queries {
		dt, dout := best(func() (string, error) {
			rows, err := db.Query(q.duck)
			if err != nil {
				return "", err
			}
			defer rows.Close()
			cols, _ := rows.Columns()
			var b strings.Builder
			for rows.Next() {
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for i := range vals {
					ptrs[i] = &vals[i]
				}
				if err := rows.Scan(ptrs...); err != nil {
					return "", err
				}
				for i, v := range vals {
					if i > 0 {
						b.WriteString(",")
					}
					if v == nil {
						b.WriteString(`\N`)
					} else {
						fmt.Fprint(&b, v)
					}
				}
				b.WriteString("\n")
			}
			return b.String(), rows.Err()
		})
		ct, cout := best(func() (string, error) {
			r, err := chdb.Query(q.ch, "TSV")
			if err != nil {
				return "", err
			}
			return strings.ReplaceAll(r.String(), "\t", ","), nil
		})
		if dout != cout {
			t.Errorf("%s: DuckDB gives\n%s\nClickHouse\n%s", q.name, dout, cout)
		}
		fmt.Printf("%-28s DuckDB %7.0f ms   ClickHouse (chdb) %7.0f ms   ratio %.2f\n", q.name,
			float64(dt.Microseconds())/1000, float64(ct.Microseconds())/1000, float64(ct)/float64(dt))
	}
}
