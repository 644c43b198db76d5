package cohorts

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/duckdb/duckdb-go/v2"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts/enginetables"
)

// An Engine is one dataset version loaded into an embedded DuckDB (in
// memory, or a database file with bounded memory: EngineOptions) that can
// read no file but the version's own parts: the parts are named in
// allowed_paths and external access is switched off before anything is
// loaded, and the configuration is locked before any query runs. Safe
// for concurrent use.
//
// An Engine may instead run on another engine (EngineOptions.Engine): its
// backend then answers the compiled statements, in its dialect.
type Engine struct {
	db       *sql.DB
	Manifest *catalog.Manifest
	path     string // the database file ("": in memory)
	dialect  Dialect
	backend  backend // nil: db
	// cached are copies of a remote lake's files the engine reads in
	// place, removed when it closes.
	cached []string
}

// A backend is an engine other than the embedded DuckDB: it runs a
// statement of its dialect and returns every row's values (int64,
// float64, string or nil).
type backend interface {
	rows(ctx context.Context, st Statement) ([][]any, error)
	close() error
}

// clickHouse opens versions on ClickHouse, where the build has it (-tags
// chdb: chdb-go loads libchdb.so when its package loads, and panics
// without it).
var clickHouse interface {
	open(ctx context.Context, m *catalog.Manifest, files map[string][]string, opt EngineOptions) (*Engine, error)
	loaded(m *catalog.Manifest, opt EngineOptions) bool
	// capBytes drops the least recently opened databases, but those
	// open, until they take at most max bytes, and returns their names.
	capBytes(max int64, open map[string]bool) ([]string, error)
}

// errNoClickHouse says how to get a build with ClickHouse.
var errNoClickHouse = errors.New("this hub was built without the ClickHouse engine: build it with -tags chdb and libchdb.so (make hub-chdb), or use --engine duckdb")

// ParseEngine names an engine: duckdb or clickhouse.
func ParseEngine(name string) (Dialect, error) {
	switch name {
	case "", "duckdb":
		return DuckDB, nil
	case "clickhouse":
		if clickHouse == nil {
			return DuckDB, errNoClickHouse
		}
		return ClickHouse, nil
	}
	return DuckDB, fmt.Errorf("engine %q: duckdb or clickhouse", name)
}

// Dialect is the SQL the engine speaks: compile a query for it with
// [CompileFor].
func (e *Engine) Dialect() Dialect { return e.dialect }

// The engine's tables, and how they are made from a version's parts.
var (
	tableLoads = enginetables.Tables
	columns    = enginetables.Columns
	sqlList    = enginetables.SQLList
)

// ReferenceMonth is the month (year*12 + month - 1) a version's age bands
// were computed at (see [enginetables.ReferenceMonth]).
func ReferenceMonth(m *catalog.Manifest) int { return enginetables.ReferenceMonth(m) }

// sources are the tables an engine loads a version from: the engine
// tables published with it, or (before them, or published without) its
// tables, and which.
func sources(m *catalog.Manifest) (tables map[string]*catalog.TableManifest, engine bool) {
	if len(m.EngineTables) > 0 {
		return m.EngineTables, true
	}
	return m.Tables, false
}

// EngineOptions bound an engine's memory.
type EngineOptions struct {
	// Dir, when set, holds each version as a DuckDB database file, loaded
	// once and reopened after a restart, and DuckDB's spill files: the
	// version lives on disk and only what queries touch is in memory. ""
	// keeps the version in memory, as before.
	Dir string
	// MemoryLimit is DuckDB's memory_limit, e.g. "1GB" ("": DuckDB's
	// default, 80% of the machine's memory), or "auto": 300 MB a million
	// patients of the version, at least 256 MB and at most half the
	// machine's memory (measured: 16 concurrent queries at 5 M patients
	// ran in 1.5 GB, peak RSS 1.9 GB; in 512 MB one ran out of memory).
	MemoryLimit string
	// MaxBytes caps the database files in Dir (0: no cap): past it, the
	// least recently opened files of versions not loaded are removed (a
	// later query loads the version again).
	MaxBytes int64
	// Engine is the engine that answers: DuckDB, embedded (the default),
	// or ClickHouse, in process (chdb), its tables kept in
	// Dir/clickhouse.
	Engine Dialect
	// InPlace has DuckDB query a version's engine tables (published with
	// it) in place, as views over their Parquet, within MemoryLimit:
	// nothing is loaded or kept in Dir but spill files. A version
	// published without them is loaded as before.
	InPlace bool
}

// inPlace reports whether a version is queried in place.
func (opt EngineOptions) inPlace(m *catalog.Manifest) bool {
	_, engine := sources(m)
	return opt.InPlace && engine && opt.Engine == DuckDB
}

// OpenEngine loads a version from local, already verified part files
// (see [catalog.Lake.Local]), or reopens the database file an earlier
// load left in opt.Dir.
func OpenEngine(ctx context.Context, m *catalog.Manifest, files map[string][]string, opt EngineOptions) (*Engine, error) {
	if opt.Engine == ClickHouse {
		if clickHouse == nil {
			return nil, errNoClickHouse
		}
		return clickHouse.open(ctx, m, files, opt)
	}
	var all []string
	for _, t := range tableLoads {
		all = append(all, files[t.Name]...)
	}
	if opt.inPlace(m) {
		e, err := open(ctx, m, "", all, opt)
		if err != nil {
			return nil, err
		}
		if err := createViews(ctx, e.db, files); err != nil {
			e.db.Close()
			return nil, err
		}
		return locked(ctx, e)
	}
	path := "" // in memory, loaded below; else a database file, loaded once
	if opt.Dir != "" {
		var err error
		if path, err = enginePath(opt, m); err != nil {
			return nil, err
		}
		if _, err := os.Stat(path); err != nil {
			if err := load(ctx, m, files, all, path, opt); err != nil {
				return nil, err
			}
		}
	}
	e, err := open(ctx, m, path, all, opt)
	if err != nil {
		return nil, err
	}
	if path != "" {
		e.path = path
		// A file removed between the check and the open (over the cap)
		// opens as an empty database: refuse it, and a retry loads.
		if _, err := e.db.ExecContext(ctx, "SELECT 1 FROM patients LIMIT 0"); err != nil {
			e.db.Close()
			os.Remove(path)
			return nil, fmt.Errorf("%s@%d: its database file went missing while opening; ask again to load it", m.Dataset, m.Version)
		}
		now := time.Now() // the file's time says when it was last opened
		os.Chtimes(path, now, now)
	}
	if path == "" {
		if err := e.load(ctx, m, files); err != nil {
			e.db.Close()
			return nil, err
		}
	}
	return locked(ctx, e)
}

// locked locks an engine's configuration before any query runs (closing
// it if that fails).
func locked(ctx context.Context, e *Engine) (*Engine, error) {
	if _, err := e.db.ExecContext(ctx, "SET lock_configuration = true"); err != nil {
		e.db.Close()
		return nil, fmt.Errorf("configure duckdb: %w", err)
	}
	return e, nil
}

// engineLayout numbers the engine's tables' layout: a database file
// loaded by a build with another layout is not reopened (2: death_end;
// 3: birth_lo and birth_hi).
const engineLayout = 3

// enginePath is a version's database file in opt.Dir, named by its
// manifest's hash and the layout, so that a file is never taken for
// another version's or another build's.
func enginePath(opt EngineOptions, m *catalog.Manifest) (string, error) {
	sum, err := manifestHash(m)
	if err != nil {
		return "", err
	}
	return filepath.Join(opt.Dir, fmt.Sprintf("%s@%d-%s-%d.duckdb", m.Dataset, m.Version, sum[:16], engineLayout)), nil
}

// Loaded reports whether opt.Dir holds a version's database file already,
// so that its parts need not be fetched again.
func (opt EngineOptions) Loaded(m *catalog.Manifest) bool {
	if opt.Engine == ClickHouse {
		return clickHouse != nil && clickHouse.loaded(m, opt)
	}
	if opt.Dir == "" || opt.inPlace(m) {
		return false
	}
	path, err := enginePath(opt, m)
	if err != nil {
		return false
	}
	_, err = os.Stat(path)
	return err == nil
}

// capFiles removes the least recently opened database files in opt.Dir,
// except those of open engines, until the files take at most
// opt.MaxBytes. It returns the files removed. On ClickHouse it drops
// databases instead (open names them).
func capFiles(opt EngineOptions, open map[string]bool) ([]string, error) {
	if opt.Engine == ClickHouse {
		if clickHouse == nil || opt.MaxBytes <= 0 {
			return nil, nil
		}
		return clickHouse.capBytes(opt.MaxBytes, open)
	}
	if opt.Dir == "" || opt.MaxBytes <= 0 {
		return nil, nil
	}
	paths, err := filepath.Glob(filepath.Join(opt.Dir, "*.duckdb"))
	if err != nil {
		return nil, err
	}
	var files []stored
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			continue
		}
		size := st.Size()
		if wal, err := os.Stat(p + ".wal"); err == nil {
			size += wal.Size()
		}
		files = append(files, stored{p, size, st.ModTime()})
	}
	return dropOldest(files, opt.MaxBytes, func(p string) (bool, error) {
		if open[p] {
			return false, nil
		}
		if err := os.Remove(p); err != nil {
			return false, err
		}
		os.Remove(p + ".wal")
		return true, nil
	})
}

// stored is a version an engine keeps between runs (a DuckDB file, a
// ClickHouse database), its size and when it was last opened.
type stored struct {
	name string
	size int64
	used time.Time
}

// dropOldest drops the least recently opened versions, oldest first,
// until the rest take at most max bytes: drop removes one, or says it
// must stay (in use). It returns the names dropped.
func dropOldest(all []stored, max int64, drop func(name string) (bool, error)) ([]string, error) {
	var total int64
	for _, s := range all {
		total += s.size
	}
	slices.SortFunc(all, func(a, b stored) int { return a.used.Compare(b.used) })
	var dropped []string
	for _, s := range all {
		if total <= max {
			break
		}
		ok, err := drop(s.name)
		if err != nil {
			return dropped, err
		}
		if ok {
			total -= s.size
			dropped = append(dropped, s.name)
		}
	}
	return dropped, nil
}

// manifestHash identifies a version's content: its manifest's SHA-256.
func manifestHash(m *catalog.Manifest) (string, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// load writes a version's database file: into a temporary name, renamed
// into place once whole, so a crash leaves no half-loaded file in use.
func load(ctx context.Context, m *catalog.Manifest, files map[string][]string, all []string, path string, opt EngineOptions) error {
	tables, _ := sources(m)
	for name, t := range tables {
		if len(files[name]) != len(t.Parts) {
			return fmt.Errorf("load %s@%d: %d of %s's %d parts given; its database file may have been removed meanwhile: ask again",
				m.Dataset, m.Version, len(files[name]), name, len(t.Parts))
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("engine folder: %w", err)
	}
	tmp := path + ".loading"
	os.Remove(tmp)
	os.Remove(tmp + ".wal")
	e, err := open(ctx, m, tmp, all, opt)
	if err != nil {
		return err
	}
	err = e.load(ctx, m, files)
	if err == nil {
		_, err = e.db.ExecContext(ctx, "CHECKPOINT")
	}
	if cerr := e.db.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("load %s@%d: %w", m.Dataset, m.Version, err)
	}
	return nil
}

// open opens a DuckDB database (path "": in memory) with the engine's
// settings: bounded memory, spill files beside it, and no access to any
// file but the version's parts.
func open(ctx context.Context, m *catalog.Manifest, path string, all []string, opt EngineOptions) (*Engine, error) {
	connector, err := duckdb.NewConnector(path, nil)
	if err != nil {
		return nil, fmt.Errorf("open duckdb: %w", err)
	}
	db := sql.OpenDB(connector)
	tmp := ""
	if opt.Dir != "" {
		tmp = filepath.Join(opt.Dir, "tmp")
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			db.Close()
			return nil, fmt.Errorf("engine folder: %w", err)
		}
	}
	setup := enginetables.Settings(m, opt.MemoryLimit, tmp, all, nil)
	for _, s := range setup {
		if _, err := db.ExecContext(ctx, s); err != nil {
			db.Close()
			return nil, fmt.Errorf("configure duckdb: %w", err)
		}
	}
	return &Engine{db: db, Manifest: m}, nil
}

// load creates and fills the engine's tables from the version's files.
func (e *Engine) load(ctx context.Context, m *catalog.Manifest, files map[string][]string) error {
	_, engine := sources(m)
	return enginetables.Load(ctx, e.db, m, files, engine)
}

// Close releases the database, and removes the copies it read in place.
func (e *Engine) Close() error {
	if e.backend != nil {
		return e.backend.close()
	}
	err := e.db.Close()
	for _, f := range e.cached {
		os.Remove(f)
	}
	return err
}

// DB is the engine's database, for benchmarks that run a plan's SQL
// directly (nil on an engine other than DuckDB).
func (e *Engine) DB() *sql.DB { return e.db }

// Rows runs a statement of the engine's dialect and returns every row's
// values, for benchmarks and tests; only release may see a plan's.
func (e *Engine) Rows(ctx context.Context, st Statement) ([][]any, error) { return e.rows(ctx, st) }

// rows runs a statement and returns every row's values.
func (e *Engine) rows(ctx context.Context, st Statement) ([][]any, error) {
	if e.backend != nil {
		return e.backend.rows(ctx, st)
	}
	rs, err := e.db.QueryContext(ctx, st.SQL, st.Args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	cols, err := rs.Columns()
	if err != nil {
		return nil, err
	}
	var out [][]any
	for rs.Next() {
		row := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rs.Scan(ptrs...); err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, rs.Err()
}
