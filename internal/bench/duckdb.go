// Package bench holds the baselines that hub's benchmarks are measured
// against. It is the only package that links DuckDB so far.
package bench

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" driver
)

// DuckDBIngest is what a data engineer would write with DuckDB in place of
// hub's ingest: read_csv of every table, anti-joined against the opt-out
// list on the NHS number, materialised (so every column is parsed) and
// dropped. It validates nothing and knows no type 1 dissent. It returns
// the rows read and the rows kept.
func DuckDBIngest(ctx context.Context, dir string) (read, kept int64, err error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return 0, 0, fmt.Errorf("open duckdb: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	quote := func(p string) string { return "'" + strings.ReplaceAll(p, "'", "''") + "'" }
	if _, err := conn.ExecContext(ctx, `CREATE TABLE optout AS SELECT DISTINCT nhs FROM read_csv(`+
		quote(filepath.Join(dir, "optouts.txt"))+`, header = false, columns = {'nhs': 'VARCHAR'})`); err != nil {
		return 0, 0, fmt.Errorf("load opt-outs: %w", err)
	}
	for _, t := range tablesIn(dir) {
		src := quote(filepath.Join(dir, t+".csv"))
		var n int64
		if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM read_csv(`+src+`, header = true, all_varchar = true)`).Scan(&n); err != nil {
			return 0, 0, fmt.Errorf("count %s: %w", t, err)
		}
		read += n
		if _, err := conn.ExecContext(ctx, `CREATE TABLE kept AS SELECT t.* FROM read_csv(`+src+`, header = true) t
			ANTI JOIN optout o ON CAST(t.nhs_number AS VARCHAR) = o.nhs`); err != nil {
			return 0, 0, fmt.Errorf("ingest %s: %w", t, err)
		}
		if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM kept`).Scan(&n); err != nil {
			return 0, 0, err
		}
		kept += n
		if _, err := conn.ExecContext(ctx, `DROP TABLE kept`); err != nil {
			return 0, 0, err
		}
	}
	return read, kept, nil
}

// DuckDBPipeline is the best plain-DuckDB pipeline a data engineer would
// write for ingest → deid → publish: the opt-out list anti-joined to the
// patients, one binary sha256(key || nhs_number) pseudonym per surviving
// patient, every table read_csv and joined to it, and written with
// COPY ... TO parquet (COMPRESSION zstd). It validates nothing, knows no
// type 1 dissent and generalises nothing. It returns the rows read.
func DuckDBPipeline(ctx context.Context, dir, out, key string) (read int64, err error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return 0, fmt.Errorf("open duckdb: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	q := func(p string) string { return "'" + strings.ReplaceAll(p, "'", "''") + "'" }
	src := func(t string) string { return "read_csv(" + q(filepath.Join(dir, t+".csv")) + ", header = true)" }
	stmts := []string{
		`CREATE TABLE optout AS SELECT DISTINCT nhs FROM read_csv(` + q(filepath.Join(dir, "optouts.txt")) + `, header = false, columns = {'nhs': 'VARCHAR'})`,
		`CREATE TABLE pid AS SELECT CAST(p.nhs_number AS VARCHAR) AS nhs, unhex(sha256(` + q(key) + ` || CAST(p.nhs_number AS VARCHAR))) AS patient_id
			FROM ` + src("patients") + ` p ANTI JOIN optout o ON CAST(p.nhs_number AS VARCHAR) = o.nhs`,
		`COPY (SELECT pid.patient_id, year(t.date_of_birth) AS year_of_birth, month(t.date_of_birth) AS month_of_birth, t.sex,
			split_part(t.postcode, ' ', 1) AS district, t.ethnicity, t.date_of_death
			FROM ` + src("patients") + ` t JOIN pid ON CAST(t.nhs_number AS VARCHAR) = pid.nhs)
			TO ` + q(filepath.Join(out, "patients.parquet")) + ` (FORMAT parquet, COMPRESSION zstd)`,
	}
	for _, t := range tablesIn(dir)[1:] {
		stmts = append(stmts, `COPY (SELECT pid.patient_id, t.* EXCLUDE (nhs_number) FROM `+src(t)+` t
			JOIN pid ON CAST(t.nhs_number AS VARCHAR) = pid.nhs) TO `+q(filepath.Join(out, t+".parquet"))+` (FORMAT parquet, COMPRESSION zstd)`)
	}
	for _, s := range stmts {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return 0, fmt.Errorf("duckdb pipeline: %w", err)
		}
	}
	for _, t := range tablesIn(dir) {
		var n int64
		if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM `+src(t)).Scan(&n); err != nil {
			return 0, err
		}
		read += n
	}
	return read, nil
}

// tablesIn lists the CSV tables of an extract, patients first.
func tablesIn(dir string) []string {
	var out []string
	for _, t := range []string{"patients", "encounters", "conditions", "medications", "observations", "procedures", "immunizations", "registrations"} {
		if _, err := os.Stat(filepath.Join(dir, t+".csv")); err == nil {
			out = append(out, t)
		}
	}
	return out
}
