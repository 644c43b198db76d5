// Package enginetables defines the cohort engine's tables (an integer
// patient key, one event date, births and deaths as spans) and makes them
// from a version's published tables: loaded into a DuckDB (package
// cohorts), or written as Parquet beside the version at publish, which any
// engine then reads as they are (sorted by code, so row groups prune on
// it).
package enginetables

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // the "duckdb" driver

	"github.com/nhs-hub/hub/catalog"
)

// A Table is one engine table: how it is made from a version's
// published table.
type Table struct {
	// Name is the table's; Create its DuckDB definition.
	Name, Create string
	// Cols is the SELECT list of the table's columns but pid, from the
	// part files as t; Order, the order events are stored in. Load
	// makes a table of them, cohorts.ParquetViews a view.
	Cols, Order string
	// Optional are columns a version may lack (published before they
	// were): Cols names them as its arguments, in order, NULL
	// where absent. A death is known to its month (death_month) or, where
	// the k-anonymity check generalised it, its year (death_year): the
	// engine's death_month and death_end are the first and last day of
	// whichever it is. The patients' last argument is the version's
	// reference month, which age bands are at.
	Optional []string
}

// Tables are the engine tables: patients get an integer pid, events
// refer to it and carry their date as event_date. Only the columns the
// compiler knows are loaded. Events are stored sorted by code (encounters
// by type), so that DuckDB's per-row-group min/max skips most of a table
// for a code list.
var Tables = []Table{
	{"patients",
		`CREATE TABLE patients (pid INTEGER, patient_id BLOB, year_of_birth SMALLINT, month_of_birth TINYINT, birth_mi INTEGER,
			birth_lo INTEGER, birth_hi INTEGER, age_band VARCHAR, sex VARCHAR, district VARCHAR, postcode_area VARCHAR, ethnicity_group VARCHAR, death_month DATE,
			death_end DATE, gp_practice VARCHAR)`,
		`t.year_of_birth, t.month_of_birth,
			CASE WHEN t.year_of_birth IS NULL THEN NULL ELSE t.year_of_birth * 12 + coalesce(t.month_of_birth, 7) - 1 END AS birth_mi,
			CASE WHEN t.year_of_birth IS NOT NULL THEN t.year_of_birth * 12 + coalesce(t.month_of_birth, 7) - 1
				WHEN t.age_band = '90+' THEN 0
				WHEN t.age_band IS NOT NULL THEN %[3]s - 12 * (CAST(split_part(t.age_band, '-', 2) AS INTEGER) + 1) END AS birth_lo,
			CASE WHEN t.year_of_birth IS NOT NULL THEN t.year_of_birth * 12 + coalesce(t.month_of_birth, 7) - 1
				WHEN t.age_band IS NOT NULL THEN %[3]s - 12 * CAST(regexp_extract(t.age_band, '^[0-9]+') AS INTEGER) END AS birth_hi,
			t.age_band, t.sex, t.district, t.postcode_area, t.ethnicity_group,
			coalesce(t.death_month, make_date(CAST(%[2]s AS BIGINT), 1, 1)) AS death_month,
			coalesce(last_day(t.death_month), make_date(CAST(%[2]s AS BIGINT), 12, 31)) AS death_end, %[1]s AS gp_practice`, "",
		[]string{"gp_practice", "death_year"}},
	{"conditions",
		`CREATE TABLE conditions (pid INTEGER, code_system VARCHAR, code VARCHAR, event_date DATE)`,
		`t.code_system, t.code, t.onset_date AS event_date`, "t.code, p.pid", nil},
	{"medications",
		`CREATE TABLE medications (pid INTEGER, code_system VARCHAR, code VARCHAR, event_date DATE, end_date DATE)`,
		`t.code_system, t.code, t.start_date AS event_date, t.end_date`, "t.code, p.pid", nil},
	{"observations",
		`CREATE TABLE observations (pid INTEGER, code_system VARCHAR, code VARCHAR, value DOUBLE, unit VARCHAR, event_date DATE)`,
		`t.code_system, t.code, t.value, t.unit, t.effective_date AS event_date`, "t.code, p.pid", nil},
	{"encounters",
		`CREATE TABLE encounters (pid INTEGER, type VARCHAR, event_date DATE, end_date DATE, class VARCHAR, admission_source VARCHAR)`,
		`t.type, t.start_date AS event_date, t.end_date, %[1]s AS class, %[2]s AS admission_source`, "t.type, p.pid",
		[]string{"class", "admission_source"}},
	{"procedures",
		`CREATE TABLE procedures (pid INTEGER, code_system VARCHAR, code VARCHAR, event_date DATE)`,
		`t.code_system, t.code, t.performed_date AS event_date`, "t.code, p.pid", nil},
	{"immunizations",
		`CREATE TABLE immunizations (pid INTEGER, code_system VARCHAR, code VARCHAR, event_date DATE)`,
		`t.code_system, t.code, t.occurrence_date AS event_date`, "t.code, p.pid", nil},
	{"registrations",
		`CREATE TABLE registrations (pid INTEGER, start_date DATE, end_date DATE)`,
		`t.start_date, t.end_date`, "p.pid, t.start_date", nil},
}

// Columns is table t's Cols for a version: its optional columns and
// (patients) its reference month filled in.
func Columns(m *catalog.Manifest, t int) string {
	tl := Tables[t]
	var args []any
	for _, c := range tl.Optional {
		args = append(args, optionalColumn(m, tl.Name, c))
	}
	if tl.Name == "patients" {
		args = append(args, fmt.Sprint(ReferenceMonth(m)))
	}
	return fmt.Sprintf(tl.Cols, args...)
}

// ReferenceMonth is the month (year*12 + month - 1) a version's age bands
// were computed at: its de-identification policy's reference date, or
// the day it was published.
func ReferenceMonth(m *catalog.Manifest) int {
	ref := m.Created.UTC()
	var rep struct {
		Policy struct {
			ReferenceDate string `json:"reference_date"`
		} `json:"policy"`
	}
	if raw, ok := m.Reports["deid"]; ok && json.Unmarshal(raw, &rep) == nil {
		if d, err := time.Parse(time.DateOnly, rep.Policy.ReferenceDate); err == nil {
			ref = d
		}
	}
	return ref.Year()*12 + int(ref.Month()) - 1
}

// optionalColumn names the column, t.NAME where the version's table has
// it and NULL where not.
func optionalColumn(m *catalog.Manifest, table, c string) string {
	if tm := m.Tables[table]; tm != nil && slices.ContainsFunc(tm.Schema, func(col catalog.Column) bool { return col.Name == c }) {
		return "t." + c
	}
	return "NULL"
}

// AutoMemoryLimit is the "auto" memory limit of a version: 300 MB a
// million patients, at least 256 MB, at most half the machine's memory
// (measured: 16 concurrent queries at 5 M patients ran in 1.5 GB, peak
// RSS 1.9 GB; in 512 MB one ran out of memory).
func AutoMemoryLimit(m *catalog.Manifest) string {
	var patients int64
	if t := m.Tables["patients"]; t != nil {
		patients = t.Rows
	}
	mb := max(256, patients*300/1_000_000)
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		mb = min(mb, int64(si.Totalram)*int64(si.Unit)/2/1_000_000)
	}
	return fmt.Sprintf("%dMB", mb)
}

// SQLString quotes a string as a SQL literal.
func SQLString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// SQLList quotes file paths (the engine's own, never a query's) as a
// DuckDB list literal.
func SQLList(paths []string) string {
	q := make([]string, len(paths))
	for i, p := range paths {
		q[i] = SQLString(p)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// Settings are the statements that bound a DuckDB for engine work: its
// memory ("" DuckDB's default, "auto" AutoMemoryLimit), spill files in
// tmp (none when ""), and no file but readable's to read and none
// outside writable's folders to write.
func Settings(m *catalog.Manifest, memoryLimit, tmp string, readable, writable []string) []string {
	var out []string
	if memoryLimit == "auto" {
		memoryLimit = AutoMemoryLimit(m)
	}
	if memoryLimit != "" {
		out = append(out, "SET memory_limit = "+SQLString(memoryLimit))
	}
	if tmp != "" {
		out = append(out, "SET temp_directory = "+SQLString(tmp))
	}
	return append(out,
		// Aggregates need no row order; keeping it costs memory.
		"SET preserve_insertion_order = false",
		"SET allowed_paths = "+SQLList(readable),
		"SET allowed_directories = "+SQLList(writable),
		"SET autoinstall_known_extensions = false",
		"SET autoload_known_extensions = false",
		"SET enable_external_access = false")
}

// Load creates and fills the engine tables in db from a version's files:
// its published tables' parts, or, with fromEngine, the engine tables
// published beside them (read as they are).
func Load(ctx context.Context, db *sql.DB, m *catalog.Manifest, files map[string][]string, fromEngine bool) error {
	for i, t := range Tables {
		if _, err := db.ExecContext(ctx, t.Create); err != nil {
			return fmt.Errorf("create %s: %w", t.Name, err)
		}
		if len(files[t.Name]) == 0 {
			continue
		}
		var load string
		switch {
		case fromEngine:
			// Written sorted: inserted in file order (preserved for
			// this insert alone), rows keep their order, and the
			// table's row groups their narrow min/max by code.
			load = "SET preserve_insertion_order = true; INSERT INTO " + t.Name + " BY NAME SELECT * FROM read_parquet(" + SQLList(files[t.Name]) +
				"); SET preserve_insertion_order = false"
		case t.Order == "":
			load = loadPatients(m, files)
		default:
			load = "INSERT INTO " + t.Name + " " + events(m, i, files) + " ORDER BY " + t.Order
		}
		if _, err := db.ExecContext(ctx, load); err != nil {
			return fmt.Errorf("load %s: %w", t.Name, err)
		}
	}
	if _, err := db.ExecContext(ctx, "ALTER TABLE patients DROP COLUMN patient_id"); err != nil {
		return fmt.Errorf("load patients: %w", err)
	}
	return nil
}

// loadPatients fills the patients table (Tables[0]): each gets an
// integer pid in file order, and keeps its pseudonym until the events
// have taken the pid by joining on it.
func loadPatients(m *catalog.Manifest, files map[string][]string) string {
	return "INSERT INTO patients SELECT CAST(row_number() OVER () AS INTEGER), t.patient_id, " + Columns(m, 0) +
		" FROM read_parquet(" + SQLList(files["patients"]) + ") t"
}

// events selects an event table's engine rows (Tables[i]) from its
// parts, t, with their patient's pid, p, unordered.
func events(m *catalog.Manifest, i int, files map[string][]string) string {
	return "SELECT p.pid, " + Columns(m, i) + " FROM read_parquet(" + SQLList(files[Tables[i].Name]) + ") t JOIN patients p ON p.patient_id = t.patient_id"
}

// typed casts each column of a table's rows, x, to its type in the
// table's definition (an optional column absent from a version is a
// typed NULL, not an untyped one), but the pseudonym.
func typed(t Table) string {
	def := t.Create[strings.Index(t.Create, "(")+1 : strings.LastIndex(t.Create, ")")]
	var cols []string
	for _, c := range strings.Split(def, ",") {
		f := strings.Fields(c)
		if f[0] != "patient_id" {
			cols = append(cols, "CAST(x."+f[0]+" AS "+f[1]+") AS "+f[0])
		}
	}
	return strings.Join(cols, ", ")
}

// A Written table is an engine table written as Parquet.
type Written struct {
	Path   string
	Rows   int64
	Schema []catalog.Column
}

// Write writes a version's engine tables, made from its published
// tables' local files, as Parquet files in dir, one a table, sorted as
// the engine stores them. DuckDB does the work in a database file in dir
// (removed after), within memoryLimit (see Settings), reading no file but
// the parts.
func Write(ctx context.Context, m *catalog.Manifest, files map[string][]string, dir, memoryLimit string) (map[string]Written, error) {
	var parts []string
	for _, t := range Tables {
		parts = append(parts, files[t.Name]...)
	}
	path := filepath.Join(dir, "load.duckdb")
	db, err := sql.Open("duckdb", path)
	if err != nil {
		return nil, fmt.Errorf("open duckdb: %w", err)
	}
	defer func() {
		db.Close()
		os.Remove(path)
		os.Remove(path + ".wal")
	}()
	for _, s := range Settings(m, memoryLimit, dir, parts, []string{dir}) {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return nil, fmt.Errorf("configure duckdb: %w", err)
		}
	}
	// The patients are a table (the events join it for the pid); each
	// event table is written straight from its parts, sorted, never
	// stored.
	if Tables[0].Name != "patients" {
		return nil, fmt.Errorf("engine tables: patients must come first")
	}
	if _, err := db.ExecContext(ctx, Tables[0].Create); err != nil {
		return nil, fmt.Errorf("create patients: %w", err)
	}
	if len(files["patients"]) > 0 {
		if _, err := db.ExecContext(ctx, loadPatients(m, files)); err != nil {
			return nil, fmt.Errorf("%s@%d's engine tables: patients: %w", m.Dataset, m.Version, err)
		}
	}
	unprefixed := strings.NewReplacer("t.", "", "p.", "")
	out := map[string]Written{}
	for i, t := range Tables {
		var q string
		switch {
		case i == 0:
			q = "SELECT " + typed(t) + " FROM patients x ORDER BY pid"
		case len(files[t.Name]) == 0:
			if _, err := db.ExecContext(ctx, t.Create); err != nil {
				return nil, fmt.Errorf("create %s: %w", t.Name, err)
			}
			q = "SELECT * FROM " + t.Name
		default:
			q = "SELECT " + typed(t) + " FROM (" + events(m, i, files) + ") x ORDER BY " + unprefixed.Replace(t.Order)
		}
		f := filepath.Join(dir, t.Name+".parquet")
		res, err := db.ExecContext(ctx, "COPY ("+q+") TO "+SQLString(f)+" (FORMAT parquet, COMPRESSION zstd)")
		if err != nil {
			return nil, fmt.Errorf("write %s's engine table %s: %w", m.Dataset, t.Name, err)
		}
		rows, _ := res.RowsAffected()
		schema, err := schemaOf(ctx, db, m, t.Name, f)
		if err != nil {
			return nil, err
		}
		out[t.Name] = Written{Path: f, Rows: rows, Schema: schema}
	}
	return out, nil
}

// arrowType names DuckDB's types as the published tables' schemas do.
var arrowType = map[string]string{"INTEGER": "int32", "SMALLINT": "int16", "TINYINT": "int8", "BIGINT": "int64",
	"VARCHAR": "utf8", "DATE": "date32", "DOUBLE": "float64"}

// descriptions are the engine columns' own; the rest take the published
// column's description.
var descriptions = map[string]string{
	"pid":         "patient number within this version (1 to the number of patients): the engine tables' join key, not the same patient's number in another version",
	"birth_mi":    "month of birth as year × 12 + month − 1 (July where only the year is published)",
	"birth_lo":    "earliest month of birth (as birth_mi) the published birth allows: birth_mi where the year is published, the age band's first at the reference date where only the band is",
	"birth_hi":    "latest month of birth (as birth_mi) the published birth allows",
	"death_month": "first day of the month of death (of the year, where only the year is published)",
	"death_end":   "last day of the month of death (of the year, where only the year is published)",
	"event_date":  "the event's date (onset, start, effective, performed or occurrence)",
}

// schemaOf is an engine table's data dictionary.
func schemaOf(ctx context.Context, db *sql.DB, m *catalog.Manifest, table, file string) ([]catalog.Column, error) {
	rows, err := db.QueryContext(ctx, "SELECT column_name, column_type, \"null\" FROM (DESCRIBE SELECT * FROM read_parquet("+SQLString(file)+"))")
	if err != nil {
		return nil, fmt.Errorf("%s's columns: %w", table, err)
	}
	defer rows.Close()
	var out []catalog.Column
	for rows.Next() {
		var name, typ, nullable string
		if err := rows.Scan(&name, &typ, &nullable); err != nil {
			return nil, err
		}
		c := catalog.Column{Name: name, Type: strings.ToLower(typ), Nullable: nullable == "YES", Description: descriptions[name]}
		if t, ok := arrowType[typ]; ok {
			c.Type = t
		}
		if c.Description == "" && m.Tables[table] != nil {
			for _, pc := range m.Tables[table].Schema {
				if pc.Name == name {
					c.Description = pc.Description
				}
			}
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
