//go:build chdb

package cohorts

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	chdbpurego "github.com/chdb-io/chdb-go/chdb-purego"
	"github.com/dustin/go-humanize"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts/enginetables"
)

// The ClickHouse engine runs ClickHouse in process (chdb: libchdb.so,
// found through CHDB_LIB_PATH). A version is a database of MergeTree
// tables, loaded once from the version's engine tables
// ([enginetables.Write]: the same pids and derived columns as DuckDB's)
// and kept on disk; events are ordered by code, so a code list reads
// only its granules. Queries run read-only (no table function reaches a
// file), with a time, result-row and memory cap, and see no ε: the engine
// returns exact aggregates to release, as DuckDB does.
//
// chdb holds one session a process, at the path the first engine gave it
// (Dir/clickhouse, or a temporary folder): its queries run one at a
// time, each over all of the machine's cores.
func init() { clickHouse = chOpener{} }

type chOpener struct{}

// ch is the process's chdb session.
var ch struct {
	sync.Mutex
	conn chdbpurego.ChdbConn
	path string
	db   string // the database in USE
	// loading serialises the loads of one database.
	loading map[string]*sync.Mutex
}

// chLayout numbers the ClickHouse tables' layout, as engineLayout
// DuckDB's: a database loaded by a build with another is loaded again.
const chLayout = 1

// chConn returns the process's chdb session, opened at dir/clickhouse
// (a temporary folder when dir is "") on first use. The caller holds ch.
func chConn(dir string) (chdbpurego.ChdbConn, error) {
	if ch.conn != nil {
		return ch.conn, nil
	}
	path := filepath.Join(dir, "clickhouse")
	if dir == "" {
		var err error
		if path, err = os.MkdirTemp("", "hub-clickhouse-"); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("clickhouse folder: %w", err)
	}
	var conn chdbpurego.ChdbConn
	err := keepGoFaultHandlers(func() (err error) {
		conn, err = chdbpurego.NewConnectionFromConnString(path)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("start clickhouse (chdb) in %s: %w", path, err)
	}
	ch.conn, ch.path, ch.loading = conn, path, map[string]*sync.Mutex{}
	return conn, nil
}

// chDatabase is a version's database, named by its manifest's hash and
// the layout.
func chDatabase(m *catalog.Manifest) (string, error) {
	sum, err := manifestHash(m)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("v_%s_%d", sum[:16], chLayout), nil
}

// exec runs a statement of the engine's own (no query's values) and
// returns its output as JSONCompact. The caller holds ch.
func chExec(q string) ([]byte, error) {
	r, err := ch.conn.Query(q, "JSONCompact")
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, nil
	}
	defer r.Free()
	return bytes.Clone(r.Buf()), nil
}

// loaded reports whether a version's database is whole (its marker table,
// created last, is there), opening the session (at opt.Dir) if need be:
// after a restart the databases are on disk before anything is opened.
func (chOpener) loaded(m *catalog.Manifest, opt EngineOptions) bool {
	name, err := chDatabase(m)
	if err != nil {
		return false
	}
	ch.Lock()
	defer ch.Unlock()
	if _, err := chConn(opt.Dir); err != nil {
		return false
	}
	return chHas(name)
}

// chHas reports whether a database's marker table exists. The caller
// holds ch.
func chHas(name string) bool {
	out, err := chExec("EXISTS TABLE " + name + ".loaded")
	if err != nil {
		return false
	}
	rows, err := chRows(out)
	return err == nil && len(rows) == 1 && toInt(rows[0][0]) == 1
}

func (chOpener) open(ctx context.Context, m *catalog.Manifest, files map[string][]string, opt EngineOptions) (*Engine, error) {
	name, err := chDatabase(m)
	if err != nil {
		return nil, err
	}
	ch.Lock()
	if _, err := chConn(opt.Dir); err != nil {
		ch.Unlock()
		return nil, err
	}
	mu := ch.loading[name]
	if mu == nil {
		mu = &sync.Mutex{}
		ch.loading[name] = mu
	}
	used := chUsed(ch.path, name)
	ch.Unlock()
	mu.Lock()
	defer mu.Unlock()
	ch.Lock()
	have := chHas(name)
	ch.Unlock()
	if !have {
		if err := chLoad(ctx, m, files, opt, name); err != nil {
			return nil, fmt.Errorf("load %s@%d into clickhouse: %w", m.Dataset, m.Version, err)
		}
	}
	limit := opt.MemoryLimit
	if limit == "auto" {
		limit = enginetables.AutoMemoryLimit(m)
	}
	var maxMemory int64
	if limit != "" {
		n, err := humanize.ParseBytes(limit)
		if err != nil {
			return nil, fmt.Errorf("memory limit %q: %w", limit, err)
		}
		maxMemory = int64(n)
	}
	now := time.Now() // the file's time says when the database was last opened
	os.MkdirAll(filepath.Dir(used), 0o700)
	if f, err := os.Create(used); err == nil {
		f.Close()
		os.Chtimes(used, now, now)
	}
	return &Engine{Manifest: m, path: name, dialect: ClickHouse, backend: &chEngine{db: name, maxMemory: maxMemory}}, nil
}

// chUsed is the file whose time says when a database was last opened:
// beside the session's folder (base), in clickhouse-used.
func chUsed(base, name string) string {
	return filepath.Join(filepath.Dir(base), "clickhouse-used", name)
}

func (chOpener) capBytes(maxBytes int64, open map[string]bool) ([]string, error) {
	ch.Lock()
	if ch.conn == nil {
		ch.Unlock()
		return nil, nil
	}
	base := ch.path
	out, err := chExec("SELECT database, sum(bytes_on_disk) FROM system.parts WHERE active AND startsWith(database, 'v_') GROUP BY database")
	var rows [][]any
	if err == nil {
		rows, err = chRows(out)
	}
	ch.Unlock()
	if err != nil {
		return nil, fmt.Errorf("clickhouse databases' sizes: %w", err)
	}
	var dbs []stored
	for _, r := range rows {
		d := stored{name: str(r[0]), size: toInt(r[1])}
		if st, err := os.Stat(chUsed(base, d.name)); err == nil {
			d.used = st.ModTime()
		}
		dbs = append(dbs, d)
	}
	ch.Lock()
	defer ch.Unlock()
	return dropOldest(dbs, maxBytes, func(name string) (bool, error) {
		// A database being loaded has no marker yet: left alone.
		if open[name] || !chHas(name) {
			return false, nil
		}
		if _, err := chExec("DROP DATABASE " + name + " SYNC"); err != nil {
			return false, err
		}
		if ch.db == name {
			ch.db = ""
		}
		os.Remove(chUsed(base, name))
		return true, nil
	})
}

// chOrder is the sorting key of each engine table in ClickHouse: events
// by code (encounters by type), then patient.
var chOrder = map[string]string{"patients": "pid", "conditions": "(code, pid)", "medications": "(code, pid)",
	"observations": "(code, pid)", "encounters": "(type, pid)", "procedures": "(code, pid)",
	"immunizations": "(code, pid)", "registrations": "(pid, start_date)"}

// chLoad loads a version into a new database: the engine tables are
// written as Parquet by DuckDB into a folder beside the session's, each
// read into a MergeTree table, and the marker table created last, so a
// crash midway leaves a database that the next open drops and loads
// again.
func chLoad(ctx context.Context, m *catalog.Manifest, files map[string][]string, opt EngineOptions, name string) error {
	tables, engine := sources(m)
	for n, t := range tables {
		if len(files[n]) != len(t.Parts) {
			return fmt.Errorf("%d of %s's %d parts given: ask again", len(files[n]), n, len(t.Parts))
		}
	}
	// A version published with its engine tables is read as it is;
	// another's are written first.
	out := map[string]string{}
	if engine {
		for n, fs := range files {
			if len(fs) != 1 {
				return fmt.Errorf("engine table %s: %d files, one expected", n, len(fs))
			}
			out[n] = fs[0]
		}
	} else {
		ch.Lock()
		base := ch.path
		ch.Unlock()
		dir, err := os.MkdirTemp(filepath.Dir(base), "clickhouse-load-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		written, err := enginetables.Write(ctx, m, files, dir, opt.MemoryLimit)
		if err != nil {
			return err
		}
		for n, w := range written {
			out[n] = w.Path
		}
	}
	stmts := []string{"DROP DATABASE IF EXISTS " + name + " SYNC", "CREATE DATABASE " + name}
	for _, t := range tableLoads {
		stmts = append(stmts, "CREATE TABLE "+name+"."+t.Name+" ENGINE = MergeTree ORDER BY "+chOrder[t.Name]+
			" SETTINGS allow_nullable_key = 1 AS SELECT * FROM file("+enginetables.SQLString(out[t.Name])+", 'Parquet')")
	}
	stmts = append(stmts, "CREATE TABLE "+name+".loaded (ok UInt8) ENGINE = TinyLog")
	ch.Lock()
	defer ch.Unlock()
	for _, s := range stmts {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := chExec(s); err != nil {
			return fmt.Errorf("%s: %w", strings.SplitN(s, " AS ", 2)[0], err)
		}
	}
	ch.db = ""
	return nil
}

// chEngine is one version's database.
type chEngine struct {
	db        string
	maxMemory int64 // bytes a query may use (0: ClickHouse's default)
}

// close leaves the database on disk for the next open.
func (c *chEngine) close() error { return nil }

func (c *chEngine) rows(ctx context.Context, st Statement) ([][]any, error) {
	q, err := inlineArgs(st)
	if err != nil {
		return nil, err
	}
	seconds := 600
	if d, ok := ctx.Deadline(); ok {
		seconds = max(1, int(time.Until(d).Seconds()))
	}
	q += fmt.Sprintf(" SETTINGS readonly = 1, join_use_nulls = 1, max_execution_time = %d, max_result_rows = 1000000, result_overflow_mode = 'throw', output_format_json_quote_64bit_integers = 0", seconds)
	if c.maxMemory > 0 {
		q += fmt.Sprintf(", max_memory_usage = %d", c.maxMemory)
	}
	ch.Lock()
	defer ch.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if ch.db != c.db {
		if _, err := chExec("USE " + c.db); err != nil {
			return nil, err
		}
		ch.db = c.db
	}
	out, err := chExec(q)
	if err != nil {
		return nil, err
	}
	return chRows(out)
}

// chRows decodes JSONCompact's rows: integers as int64, other numbers as
// float64, strings (dates too) and NULL as nil.
func chRows(out []byte) ([][]any, error) {
	if len(out) == 0 {
		return nil, nil
	}
	var res struct {
		Data [][]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("clickhouse's answer: %w", err)
	}
	rows := make([][]any, len(res.Data))
	for i, r := range res.Data {
		rows[i] = make([]any, len(r))
		for j, raw := range r {
			d := json.NewDecoder(bytes.NewReader(raw))
			d.UseNumber()
			var v any
			if err := d.Decode(&v); err != nil {
				return nil, fmt.Errorf("clickhouse's answer: %w", err)
			}
			switch x := v.(type) {
			case json.Number:
				if n, err := x.Int64(); err == nil {
					v = n
				} else if f, err := x.Float64(); err == nil {
					v = f
				} else {
					return nil, fmt.Errorf("clickhouse's answer: number %s", x)
				}
			case bool:
				v = map[bool]int64{false: 0, true: 1}[x]
			}
			rows[i][j] = v
		}
	}
	return rows, nil
}

// inlineArgs writes a statement's arguments into its text as ClickHouse
// literals: chdb binds no parameters. The compiler's text holds no literal
// of its own, so every ? is a placeholder.
func inlineArgs(st Statement) (string, error) {
	parts := strings.Split(st.SQL, "?")
	if len(parts)-1 != len(st.Args) {
		return "", fmt.Errorf("a statement has %d placeholders and %d arguments", len(parts)-1, len(st.Args))
	}
	var b strings.Builder
	for i, p := range parts {
		b.WriteString(p)
		if i == len(st.Args) {
			break
		}
		switch v := st.Args[i].(type) {
		case string:
			b.WriteString("'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'")
		case int64:
			b.WriteString(strconv.FormatInt(v, 10))
		case float64:
			s := strconv.FormatFloat(v, 'f', -1, 64)
			if !strings.Contains(s, ".") {
				s += ".0"
			}
			b.WriteString(s)
		case bool:
			b.WriteString(strconv.FormatBool(v))
		default:
			return "", fmt.Errorf("an argument of type %T", v)
		}
	}
	return b.String(), nil
}
