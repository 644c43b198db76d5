package cohorts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts/enginetables"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/internal/testlake"
)

// TestConcurrentBudget: 200 different queries at once against a budget
// that pays for exactly 20: exactly 20 are answered, the rest refused with
// ErrBudgetExhausted, and the ledger (reopened from disk) agrees.
func TestConcurrentBudget(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0, 1e-5)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := mustParse(t, fmt.Sprintf(`{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": %d}}, "measures": [{"kind": "count"}], "epsilon": 0.05}`, i%100))
			if i >= 100 {
				q.Measures[0].By = []string{"sex"}
			}
			_, err := s.Query(t.Context(), "study", q)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrBudgetExhausted):
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != 20 || refused != 180 {
		t.Fatalf("%d answered, %d refused; want 20 and 180", ok, refused)
	}
	b, _ := s.Budget("study")
	if b.EpsilonSpent != 1.0 || b.EpsilonRemaining != 0 || b.Queries != 20 {
		t.Fatalf("budget %+v", b)
	}
	l, err := OpenLedger(ledgerPath(s.state, "study"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if e, _, n := l.Spent(); e != 1_000_000 || n != 20 {
		t.Fatalf("ledger on disk: %d units in %d entries", e, n)
	}
}

// TestRepeatIsFree: the same query (reformatted) returns the same released
// answer and costs nothing; an exhausted budget refuses at no cost; a bad
// query costs nothing.
func TestRepeatIsFree(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0, 1e-5)
	q1 := mustParse(t, `{"dataset":"gp","measures":[{"kind":"count"}],"epsilon":0.6}`)
	q2 := mustParse(t, `{"epsilon": 0.6,  "measures": [ {"kind": "count"} ], "dataset": "gp", "version": 1}`)
	a1, err := s.Query(t.Context(), "study", q1)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := s.Query(t.Context(), "study", q2)
	if err != nil {
		t.Fatal(err)
	}
	if !a2.Repeat || a1.Repeat || *a1.Measures[0].Value != *a2.Measures[0].Value || a1.QuerySHA256 != a2.QuerySHA256 {
		t.Fatalf("repeat: %+v then %+v", a1, a2)
	}
	b, _ := s.Budget("study")
	if b.EpsilonSpent != 0.6 {
		t.Fatalf("spent %v after a query and its repeat, want 0.6", b.EpsilonSpent)
	}
	_, err = s.Query(t.Context(), "study", mustParse(t, `{"dataset":"gp","measures":[{"kind":"count", "by": ["sex"]}],"epsilon":0.5}`))
	if !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("over budget: %v", err)
	}
	if b, _ := s.Budget("study"); b.EpsilonSpent != 0.6 || b.Queries != 1 {
		t.Fatalf("a refused query changed the budget: %+v", b)
	}
	// The answer survives a restart: the repeat is still free.
	s2, err := New(Config{Lake: s.lake, State: s.state, Projects: s.projects})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	a3, err := s2.Query(t.Context(), "study", q1)
	if err != nil || !a3.Repeat || *a3.Measures[0].Value != *a1.Measures[0].Value {
		t.Fatalf("after restart: %+v, %v", a3, err)
	}
}

// TestTornLedgerLine: a crash mid-append leaves a line without its newline;
// it was never synced nor answered, so reopening drops it.
func TestTornLedgerLine(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0, 1e-5)
	if _, err := s.Query(t.Context(), "study", mustParse(t, `{"dataset":"gp","measures":[{"kind":"count"}],"epsilon":0.25}`)); err != nil {
		t.Fatal(err)
	}
	path := ledgerPath(s.state, "study")
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":2,"epsilon_units":500000,"ans`)
	f.Close()
	l, err := OpenLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if e, _, n := l.Spent(); e != 250000 || n != 1 {
		t.Fatalf("after a torn line: %d units, %d entries", e, n)
	}
}

// TestEngineReachesNoOtherFile: the engine's DuckDB refuses to read any
// file but the dataset's parts, and its configuration cannot be unlocked.
func TestEngineReachesNoOtherFile(t *testing.T) {
	t.Run("in memory", func(t *testing.T) { reachesNoOtherFile(t, newService(t)) })
	t.Run("on disk", func(t *testing.T) { reachesNoOtherFile(t, diskService(t, t.TempDir())) })
}

// diskService is a service whose engines are database files in dir with
// a small memory limit.
func diskService(t *testing.T, dir string) *Service {
	t.Helper()
	s, err := New(Config{Lake: lake(t), State: t.TempDir(), Projects: &grants{m: map[string]*governance.Project{}},
		Engine: EngineOptions{Dir: dir, MemoryLimit: "128MB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func reachesNoOtherFile(t *testing.T, s *Service) {
	_, root := testlake.Shared(t)
	eng, err := s.Engine(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"SET memory_limit = '64GB'",
		"ATTACH '" + filepath.Join(t.TempDir(), "other.duckdb") + "' AS other",
		"SELECT * FROM read_csv('/etc/passwd')",
		"SELECT * FROM read_parquet('" + root + "/datasets/gp/versions/1/manifest.json')",
		"SET enable_external_access = true",
		"COPY patients TO '/tmp/leak.csv'",
		"INSTALL httpfs",
	} {
		if _, err := eng.DB().ExecContext(t.Context(), q); err == nil {
			t.Errorf("%s: allowed", q)
		}
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(eng.Manifest.Tables["patients"].Rows); err != nil || buf.Len() == 0 {
		t.Fatal("manifest missing")
	}
}

// TestEveryGoldenQueryAnswers runs every golden query through the service.
func TestEveryGoldenQueryAnswers(t *testing.T) {
	s := newService(t)
	project(t, s, "big", 100, 1e-3)
	for name, text := range goldenQueries {
		a, err := s.Query(t.Context(), "big", mustParse(t, text))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(a.Measures) == 0 {
			t.Fatalf("%s: no measures", name)
		}
	}
}

// remoteStore hides the local folder's LocalPath, as an S3 store would.
type remoteStore struct{ catalog.Store }

// TestRemoteLakeCache: a lake that is not a local folder is read through
// the state's cache; a corrupted cached part is fetched again, not trusted.
func TestRemoteLakeCache(t *testing.T) {
	remote := catalog.NewLake(remoteStore{lake(t).Store()})
	state := t.TempDir()
	s, err := New(Config{Lake: remote, State: state, Projects: &grants{}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := remote.Manifest(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Engine(t.Context(), "gp", 0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The version has engine tables: those are what the engine reads.
	part := m.EngineTables["patients"].Parts[0]
	cached := filepath.Join(state, "cache", filepath.FromSlash(part.Path))
	if err := os.WriteFile(cached, []byte("not parquet"), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err := remote.LocalEngine(t.Context(), m, filepath.Join(state, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	if files["patients"][0] != cached {
		t.Fatalf("patients read from %s, want the cache", files["patients"][0])
	}
	if st, _ := os.Stat(cached); st.Size() != part.Size {
		t.Fatalf("corrupted cache kept: %d bytes", st.Size())
	}
}

// withdrawnAfter answers a project as granted for its first n asks, then
// as withdrawn: a withdrawal while the query's SQL runs.
type withdrawnAfter struct {
	*grants
	n int
}

func (w *withdrawnAfter) Project(name string) (*governance.Project, error) {
	p, err := w.grants.Project(name)
	if err == nil {
		w.mu.Lock()
		w.n--
		p.Withdrawn = w.n < 0
		w.mu.Unlock()
	}
	return p, err
}

// A project withdrawn (or expired) between the checks and the charge is
// refused then: nothing is charged or released.
func TestWithdrawalBeforeTheCharge(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0, 1e-5)
	g := s.projects.(*grants)
	s.projects = &withdrawnAfter{grants: g, n: 1}
	_, err := s.Query(t.Context(), "study", mustParse(t, `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.1}`))
	if !errors.Is(err, governance.ErrWithdrawn) {
		t.Fatalf("err = %v, want the withdrawal", err)
	}
	s.projects = g
	if b, _ := s.Budget("study"); b.EpsilonSpent != 0 || b.Queries != 0 {
		t.Fatalf("budget %+v: the refused query was charged", b)
	}
}

// audited adds the audit log's spend to a fake's projects.
type audited struct {
	*grants
	eps int64
}

func (a *audited) AuditedSpend(string) (int64, int64) { return a.eps, 0 }

// A ledger emptied (or lost) does not give the budget back: the audit
// log's charges are the least the project has spent, and new charges add
// to them.
func TestEmptiedLedgerKeepsTheSpend(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0, 1e-5)
	s.projects = &audited{grants: s.projects.(*grants), eps: 900_000} // ε 0.9 in the audit log, none in the ledger
	b, err := s.Budget("study")
	if err != nil {
		t.Fatal(err)
	}
	if b.EpsilonSpentU != 900_000 {
		t.Fatalf("spent %d units, want the audit log's 900000", b.EpsilonSpentU)
	}
	q := mustParse(t, `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.2}`)
	if _, err := s.Query(t.Context(), "study", q); !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("a query past what the audit log leaves: %v", err)
	}
	q = mustParse(t, `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.05}`)
	if _, err := s.Query(t.Context(), "study", q); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.Budget("study"); b.EpsilonSpentU != 950_000 {
		t.Fatalf("spent %d units after a charge of 0.05, want 950000", b.EpsilonSpentU)
	}
}

// A rate is answered interval by interval and cell by cell for one charge
// (docs/examples/hba1c-quarterly.json, on the test dataset).
func TestRateQuery(t *testing.T) {
	s := newService(t)
	project(t, s, "p", 10, 1e-5)
	rules := governance.DefaultRules
	s.projects.(*grants).m["p"].Rules = &rules // counts rounded to 5
	b, err := os.ReadFile(filepath.Join("..", "docs", "examples", "hba1c-quarterly.json"))
	if err != nil {
		t.Fatal(err)
	}
	q := mustParse(t, strings.Replace(string(b), `"demo"`, `"gp"`, 1))
	q.Epsilon = 4
	a, err := s.Query(t.Context(), "p", q)
	if err != nil {
		t.Fatal(err)
	}
	ivs := a.Measures[0].Intervals
	if len(ivs) != 4 || ivs[0].From != "2023-01-01" || ivs[3].To != "2023-12-31" {
		t.Fatalf("intervals %+v", ivs)
	}
	released := 0
	for _, iv := range ivs {
		if len(iv.Cells) != len(Sexes[:3])+1 {
			t.Fatalf("%s: %d cells", iv.From, len(iv.Cells))
		}
		for _, c := range iv.Cells {
			if c.Suppressed {
				if c.Value != nil || c.Numerator != nil {
					t.Errorf("a suppressed cell holds figures: %+v", c)
				}
				continue
			}
			released++
			if *c.Value < 0 || *c.Value > 1 || *c.CILow > *c.Value || *c.CIHigh < *c.Value || math.Mod(*c.Numerator, 5) != 0 {
				t.Errorf("%s %v: %v of %v, rate %v [%v, %v]", iv.From, c.Key, *c.Numerator, *c.Denominator, *c.Value, *c.CILow, *c.CIHigh)
			}
		}
	}
	if released == 0 {
		t.Error("every cell suppressed: the test checks too little")
	}
	if spent, _, _ := s.Spent("p"); spent != units(4, EpsilonUnit) {
		t.Errorf("spent %d units for one rate, want ε 4", spent)
	}
}

// An engine on disk answers exactly as the oracle says, and a restart
// reopens its database file instead of loading the version again.
func TestEngineOnDisk(t *testing.T) {
	dir := t.TempDir()
	s := diskService(t, dir)
	for name, text := range groundTruthQueries {
		t.Run(name, func(t *testing.T) { groundTruth(t, s, mustParse(t, text)) })
	}
	files, _ := filepath.Glob(filepath.Join(dir, "gp@1-*.duckdb"))
	if len(files) != 1 {
		t.Fatalf("database files: %v", files)
	}
	before, _ := os.Stat(files[0])
	s.Close()
	again := diskService(t, dir)
	if !again.engineOpt.Loaded(mustManifest(t)) {
		t.Fatal("the restarted service does not find the database file")
	}
	groundTruth(t, again, mustParse(t, groundTruthQueries["issue example"]))
	if after, _ := os.Stat(files[0]); after.Size() != before.Size() {
		t.Errorf("the database file changed on reopening: %d bytes, then %d", before.Size(), after.Size())
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "*.loading")); len(tmp) != 0 {
		t.Errorf("a load left %v", tmp)
	}
}

func mustManifest(t *testing.T) *catalog.Manifest {
	t.Helper()
	m, err := lake(t).Manifest(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Past MaxOpen loaded versions, the least recently used one that no query
// uses and nothing pinned is closed.
func TestEvictLeastRecentlyUsed(t *testing.T) {
	s, err := New(Config{Lake: lake(t), State: t.TempDir(), Projects: &grants{m: map[string]*governance.Project{}}, MaxOpen: 2})
	if err != nil {
		t.Fatal(err)
	}
	m := mustManifest(t)
	now := time.Now()
	slots := map[string]*engineSlot{}
	for i, k := range []string{"old", "busy", "pinned", "new"} {
		e, err := OpenEngine(t.Context(), m, nil, EngineOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slots[k] = &engineSlot{e: e, used: now.Add(time.Duration(i) * time.Minute)}
		s.engines[k] = slots[k]
	}
	slots["busy"].users, slots["pinned"].pinned = 1, true
	slots["busy"].used = now.Add(-time.Hour)
	s.evict(slots["new"])
	if _, ok := s.engines["old"]; ok || len(s.engines) != 3 {
		t.Errorf("after eviction: %v", slices.Sorted(maps.Keys(s.engines)))
	}
	if err := slots["old"].e.DB().Ping(); err == nil {
		t.Errorf("the evicted engine is still open")
	}
	s.evict(slots["new"]) // the rest are busy, pinned or kept: more than MaxOpen stay
	if len(s.engines) != 3 {
		t.Errorf("evicted a busy or pinned engine: %v", slices.Sorted(maps.Keys(s.engines)))
	}
	s.Close()
}

// Past their cap, the least recently opened database files go first;
// an open engine's file stays whatever its age.
func TestCapEngineFiles(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	for i, name := range []string{"a@1-x.duckdb", "b@1-x.duckdb", "c@1-x.duckdb", "d@1-x.duckdb"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 100), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, now.Add(time.Duration(i)*time.Hour), now.Add(time.Duration(i)*time.Hour))
	}
	os.WriteFile(filepath.Join(dir, "e@1-x.duckdb.loading"), make([]byte, 1000), 0o600)
	removed, err := capFiles(EngineOptions{Dir: dir, MaxBytes: 250}, map[string]bool{filepath.Join(dir, "a@1-x.duckdb"): true})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range removed {
		names = append(names, filepath.Base(r))
	}
	if !slices.Equal(names, []string{"b@1-x.duckdb", "c@1-x.duckdb"}) {
		t.Errorf("removed %v, want the oldest not open: b, c", names)
	}
	if _, err := os.Stat(filepath.Join(dir, "e@1-x.duckdb.loading")); err != nil {
		t.Errorf("a file being loaded was removed")
	}
}

// A database file removed before an engine opens it (over the cap) is
// never replaced by an empty one: without the parts, the open fails, and
// the next ask fetches them and loads the version again.
func TestEngineFileGone(t *testing.T) {
	dir := t.TempDir()
	s := diskService(t, dir)
	if _, err := s.Engine(t.Context(), "gp", 0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	files, _ := filepath.Glob(filepath.Join(dir, "*.duckdb"))
	os.Remove(files[0])
	if _, err := OpenEngine(t.Context(), mustManifest(t), nil, EngineOptions{Dir: dir}); err == nil || !strings.Contains(err.Error(), "ask again") {
		t.Fatalf("opened a removed file without its parts: %v", err)
	}
	if after, _ := filepath.Glob(filepath.Join(dir, "*.duckdb")); len(after) != 0 {
		t.Fatalf("an empty database file was left: %v", after)
	}
	groundTruth(t, diskService(t, dir), mustParse(t, groundTruthQueries["issue example"]))
}

// The auto memory limit grows with the version's patients.
func TestAutoMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		patients int64
		want     string
	}{{10, "256MB"}, {1_000_000, "300MB"}, {5_000_000, "1500MB"}} {
		m := &catalog.Manifest{Tables: map[string]*catalog.TableManifest{"patients": {Rows: c.patients}}}
		if got := enginetables.AutoMemoryLimit(m); got != c.want {
			t.Errorf("%d patients: %s, want %s", c.patients, got, c.want)
		}
	}
}

// With InPlace, a version's engine tables are queried where they lie:
// the answers are the oracle's, no database file is made, and the engine
// reads no other file.
func TestInPlaceEngine(t *testing.T) {
	dir := t.TempDir()
	s, err := New(Config{Lake: lake(t), State: t.TempDir(), Projects: &grants{m: map[string]*governance.Project{}},
		Engine: EngineOptions{Dir: dir, MemoryLimit: "256MB", InPlace: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, name := range []string{"issue example", "follow-up to deregistration", "relative windows", "everyone"} {
		groundTruth(t, s, mustParse(t, groundTruthQueries[name]))
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*.duckdb")); len(files) != 0 {
		t.Errorf("database files made in place: %v", files)
	}
	eng, err := s.Engine(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	var views int
	if err := eng.DB().QueryRowContext(t.Context(), "SELECT count(*) FROM duckdb_views() WHERE NOT internal").Scan(&views); err != nil || views != len(tableLoads) {
		t.Fatalf("%d views (%v), want the %d engine tables", views, err, len(tableLoads))
	}
	secret := filepath.Join(t.TempDir(), "secret.csv")
	os.WriteFile(secret, []byte("a\n1\n"), 0o600)
	for _, q := range []string{"SELECT * FROM read_csv(" + enginetables.SQLString(secret) + ")", "SET memory_limit = '8GB'"} {
		if _, err := eng.DB().ExecContext(t.Context(), q); err == nil {
			t.Errorf("%s: ran in place", q)
		}
	}
}

// In place over a remote lake, the engine tables are read from the
// state's cache while the version is open, and the copies go when it
// closes: the cache does not keep every version ever asked of.
func TestInPlaceRemoteCache(t *testing.T) {
	remote := catalog.NewLake(remoteStore{lake(t).Store()})
	state := t.TempDir()
	s, err := New(Config{Lake: remote, State: state, Projects: &grants{},
		Engine: EngineOptions{Dir: filepath.Join(state, "engines"), MemoryLimit: "256MB", InPlace: true}})
	if err != nil {
		t.Fatal(err)
	}
	m := mustManifest(t)
	groundTruth(t, s, mustParse(t, groundTruthQueries["issue example"]))
	cached := filepath.Join(state, "cache", filepath.FromSlash(m.EngineTables["conditions"].Parts[0].Path))
	if _, err := os.Stat(cached); err != nil {
		t.Fatalf("the engine table is not in the cache while open: %v", err)
	}
	if files, _ := filepath.Glob(filepath.Join(state, "engines", "*.duckdb")); len(files) != 0 {
		t.Errorf("database files made in place: %v", files)
	}
	s.Close()
	if _, err := os.Stat(cached); !os.IsNotExist(err) {
		t.Fatalf("the cached copy stayed after the engine closed: %v", err)
	}
}
