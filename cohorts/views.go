package cohorts

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/nhs-hub/hub/catalog"
)

// ParquetViews opens an in-memory DuckDB whose engine tables are views
// over a version's Parquet parts, read in place, with the engine's
// columns (tableLoads): the patient key is the pseudonym itself (no
// integer key, no sort by code), so a plan's SQL runs on it as on an
// engine. It is the benchmark's plain-DuckDB baseline over
// the same Parquet (issue 20); the service never uses it.
func ParquetViews(ctx context.Context, m *catalog.Manifest, files map[string][]string) (*sql.DB, error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return nil, err
	}
	for i, t := range tableLoads {
		if len(files[t.Name]) == 0 {
			continue
		}
		view := "CREATE VIEW " + t.Name + " AS SELECT t.patient_id AS pid, " + columns(m, i) +
			" FROM read_parquet(" + sqlList(files[t.Name]) + ") t"
		if _, err := db.ExecContext(ctx, view); err != nil {
			db.Close()
			return nil, fmt.Errorf("view %s: %w", t.Name, err)
		}
	}
	return db, nil
}

// EngineViews opens an in-memory DuckDB whose engine tables are views over
// a version's engine tables (Manifest.EngineTables), read in place as
// they were published: an integer pid, events sorted by code. It is the
// benchmark's baseline for engines that read the lake as it is; the
// service never uses it.
func EngineViews(ctx context.Context, files map[string][]string) (*sql.DB, error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return nil, err
	}
	if err := createViews(ctx, db, files); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// createViews makes each engine table a view over its engine table's
// files, read in place.
func createViews(ctx context.Context, db *sql.DB, files map[string][]string) error {
	for _, t := range tableLoads {
		if len(files[t.Name]) == 0 {
			return fmt.Errorf("engine table %s: no file", t.Name)
		}
		view := "CREATE VIEW " + t.Name + " AS SELECT * FROM read_parquet(" + sqlList(files[t.Name]) + ")"
		if _, err := db.ExecContext(ctx, view); err != nil {
			return fmt.Errorf("view %s: %w", t.Name, err)
		}
	}
	return nil
}
