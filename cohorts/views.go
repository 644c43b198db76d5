package cohorts

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/nhs-hub/hub/catalog"
)

// ParquetViews opens an in-memory DuckDB whose engine tables are views
// over a version's Parquet parts, read in place: the patient key is the
// pseudonym itself (no integer key, no sort by code), so a plan's SQL runs
// on it as on an engine. It is the benchmark's plain-DuckDB baseline over
// the same Parquet (issue 20); the service never uses it.
func ParquetViews(ctx context.Context, m *catalog.Manifest, files map[string][]string) (*sql.DB, error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return nil, err
	}
	ref := ReferenceMonth(m)
	opt := func(table, col string) string { return optionalColumn(m, table, col) }
	birth := "t.year_of_birth * 12 + coalesce(t.month_of_birth, 7) - 1"
	views := map[string]string{
		"patients": fmt.Sprintf(`SELECT t.patient_id AS pid, t.year_of_birth, t.month_of_birth,
			CASE WHEN t.year_of_birth IS NULL THEN NULL ELSE %[1]s END AS birth_mi,
			CASE WHEN t.year_of_birth IS NOT NULL THEN %[1]s WHEN t.age_band = '90+' THEN 0
				WHEN t.age_band IS NOT NULL THEN %[2]d - 12 * (CAST(split_part(t.age_band, '-', 2) AS INTEGER) + 1) END AS birth_lo,
			CASE WHEN t.year_of_birth IS NOT NULL THEN %[1]s
				WHEN t.age_band IS NOT NULL THEN %[2]d - 12 * CAST(regexp_extract(t.age_band, '^[0-9]+') AS INTEGER) END AS birth_hi,
			t.age_band, t.sex, t.district, t.postcode_area, t.ethnicity_group,
			coalesce(t.death_month, make_date(CAST(%[3]s AS BIGINT), 1, 1)) AS death_month,
			coalesce(last_day(t.death_month), make_date(CAST(%[3]s AS BIGINT), 12, 31)) AS death_end,
			%[4]s AS gp_practice FROM read_parquet(%%s) t`, birth, ref, opt("patients", "death_year"), opt("patients", "gp_practice")),
		"conditions":    `SELECT t.patient_id AS pid, t.code_system, t.code, t.onset_date AS event_date FROM read_parquet(%s) t`,
		"medications":   `SELECT t.patient_id AS pid, t.code_system, t.code, t.start_date AS event_date, t.end_date FROM read_parquet(%s) t`,
		"observations":  `SELECT t.patient_id AS pid, t.code_system, t.code, t.value, t.unit, t.effective_date AS event_date FROM read_parquet(%s) t`,
		"encounters":    fmt.Sprintf(`SELECT t.patient_id AS pid, t.type, t.start_date AS event_date, t.end_date, %s AS class, %s AS admission_source FROM read_parquet(%%s) t`, opt("encounters", "class"), opt("encounters", "admission_source")),
		"procedures":    `SELECT t.patient_id AS pid, t.code_system, t.code, t.performed_date AS event_date FROM read_parquet(%s) t`,
		"immunizations": `SELECT t.patient_id AS pid, t.code_system, t.code, t.occurrence_date AS event_date FROM read_parquet(%s) t`,
		"registrations": `SELECT t.patient_id AS pid, t.start_date, t.end_date FROM read_parquet(%s) t`,
	}
	for name, sel := range views {
		if len(files[name]) == 0 {
			continue
		}
		if _, err := db.ExecContext(ctx, "CREATE VIEW "+name+" AS "+fmt.Sprintf(sel, sqlList(files[name]))); err != nil {
			db.Close()
			return nil, fmt.Errorf("view %s: %w", name, err)
		}
	}
	return db, nil
}
