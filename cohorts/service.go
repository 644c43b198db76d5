package cohorts

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/governance"
)

// Projects tells the service what each project was granted; the
// governance store implements it. It is asked before every query, so a
// withdrawal, an expiry or an amendment takes effect at once.
type Projects interface {
	Project(name string) (*governance.Project, error)
}

// Config configures a Service.
type Config struct {
	Lake     *catalog.Lake
	Projects Projects
	// State holds the budget ledgers (and the cache of a remote lake).
	State string
	// Codelists are the code lists queries may name (nil: none).
	Codelists *Codelists
	Logger    *slog.Logger
	// Now is the clock expiries are checked against (default time.Now).
	Now func() time.Time
	// Engine bounds each loaded version's memory (zero: in memory, as
	// before).
	Engine EngineOptions
	// MaxOpen is how many versions stay loaded at once (0: 2); the least
	// recently used one that no query is using is closed past it.
	MaxOpen int
}

// A Service answers cohort queries for projects within their budgets.
// Safe for concurrent use.
type Service struct {
	lake      *catalog.Lake
	projects  Projects
	codelists *Codelists
	state     string
	log       *slog.Logger
	now       func() time.Time

	engineOpt EngineOptions
	maxOpen   int

	mu      sync.Mutex
	engines map[string]*engineSlot
	ledgers map[string]*Ledger
}

// An engineSlot is a version's engine, loaded once; users counts the
// queries using it (a pinned slot, asked for by Engine, is never closed).
type engineSlot struct {
	once   sync.Once
	e      *Engine
	err    error
	users  int
	pinned bool
	used   time.Time
}

// New returns a service over a lake, keeping its ledgers in cfg.State.
func New(cfg Config) (*Service, error) {
	if cfg.Lake == nil || cfg.State == "" || cfg.Projects == nil {
		return nil, errors.New("cohorts: a lake, the projects and a state folder are required")
	}
	for _, d := range []string{"ledger", "cache"} {
		if err := os.MkdirAll(filepath.Join(cfg.State, d), 0o700); err != nil {
			return nil, fmt.Errorf("state folder: %w", err)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	maxOpen := cfg.MaxOpen
	if maxOpen <= 0 {
		maxOpen = 2
	}
	return &Service{lake: cfg.Lake, projects: cfg.Projects, codelists: cfg.Codelists, state: cfg.State, log: log.With("component", "cohorts"),
		now: now, engineOpt: cfg.Engine, maxOpen: maxOpen, engines: map[string]*engineSlot{}, ledgers: map[string]*Ledger{}}, nil
}

// Codelists returns the code lists queries may name, without their codes.
func (s *Service) Codelists() ([]Codelist, error) {
	if s.codelists == nil {
		return []Codelist{}, nil
	}
	return s.codelists.List()
}

// Close releases every engine and ledger.
func (s *Service) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, slot := range s.engines {
		if slot.e != nil {
			errs = append(errs, slot.e.Close())
		}
	}
	for _, l := range s.ledgers {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

func ledgerPath(state, name string) string {
	return filepath.Join(state, "ledger", name+".jsonl")
}

// project returns a project's grant, as it stands now, and its ledger,
// opened on first use.
func (s *Service) project(name string) (*governance.Project, *Ledger, error) {
	p, err := s.projects.Project(name)
	if err != nil {
		return nil, nil, err
	}
	l, err := s.ledger(p.Name)
	if err != nil {
		return nil, nil, err
	}
	return p, l, nil
}

// ledger returns a project's ledger, opened on first use.
func (s *Service) ledger(name string) (*Ledger, error) {
	if !catalog.ValidName(name) {
		return nil, fmt.Errorf("ledger: project name %q is not valid", clip(name))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.ledgers[name]; ok {
		return l, nil
	}
	l, err := OpenLedger(ledgerPath(s.state, name))
	if err != nil {
		return nil, err
	}
	// Every charge of the ledger is in the audit log: one a crash kept
	// out of it is written now, before the project is served.
	if r, ok := s.projects.(interface {
		RecoverCharges(string, []governance.LedgerCharge) (int, error)
	}); ok {
		var charges []governance.LedgerCharge
		for _, e := range l.Entries() {
			charges = append(charges, e.charge())
		}
		n, err := r.RecoverCharges(name, charges)
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("ledger %s: its charges could not be written to the audit log: %w", name, err)
		}
		if n > 0 {
			s.log.Warn("ledger charges with no audit entry were recorded in the audit log", "project", name, "charges", n)
		}
	}
	// The audit log's charges are the least the project has spent: a
	// ledger emptied, lost or rolled back does not give budget back.
	if a, ok := s.projects.(interface{ AuditedSpend(string) (int64, int64) }); ok {
		eps, delta := a.AuditedSpend(name)
		if le, ld, _ := l.Spent(); eps > le || delta > ld {
			s.log.Warn("the ledger holds less spend than the audit log; the audit log's is taken", "project", name)
		}
		l.SetFloor(eps, delta)
	}
	s.ledgers[name] = l
	return l, nil
}

// Spent returns what a project's ledger has spent, in units, without
// asking the projects: the governance store asks it (holding its own lock)
// when the DAC amends a budget.
func (s *Service) Spent(project string) (eps, delta int64, err error) {
	l, err := s.ledger(project)
	if err != nil {
		return 0, 0, err
	}
	eps, delta, _ = l.Spent()
	return eps, delta, nil
}

// A Budget is a project's privacy budget.
type Budget struct {
	Project          string     `json:"project"`
	EpsilonTotal     float64    `json:"epsilon_total"`
	EpsilonSpent     float64    `json:"epsilon_spent"`
	EpsilonRemaining float64    `json:"epsilon_remaining"`
	DeltaTotal       float64    `json:"delta_total"`
	DeltaSpent       float64    `json:"delta_spent"`
	DeltaRemaining   float64    `json:"delta_remaining"`
	MaxQueryEpsilon  float64    `json:"max_query_epsilon"`
	Queries          int        `json:"queries"`
	Datasets         []string   `json:"datasets"`
	Expires          *time.Time `json:"expires,omitempty"`
	Withdrawn        bool       `json:"withdrawn,omitempty"`
	// Rules are the release rules the DAC set (nil: a project approved
	// before them, which keeps the rules of its time).
	Rules *governance.ReleaseRules `json:"release_rules,omitempty"`
	// The units behind the figures above, exact.
	EpsilonSpentU int64 `json:"epsilon_spent_units"`
	DeltaSpentU   int64 `json:"delta_spent_units"`
}

// Budget returns a project's budget.
func (s *Service) Budget(project string) (*Budget, error) {
	p, l, err := s.project(project)
	if err != nil {
		return nil, err
	}
	e, d, n := l.Spent()
	exp := p.Expires
	return &Budget{Project: p.Name, EpsilonTotal: float64(p.EpsilonU) * EpsilonUnit, EpsilonSpent: float64(e) * EpsilonUnit,
		EpsilonRemaining: float64(max(p.EpsilonU-e, 0)) * EpsilonUnit, DeltaTotal: float64(p.DeltaU) * DeltaUnit,
		DeltaSpent: float64(d) * DeltaUnit, DeltaRemaining: float64(max(p.DeltaU-d, 0)) * DeltaUnit,
		MaxQueryEpsilon: float64(p.MaxQueryU) * EpsilonUnit, Queries: n, Datasets: p.Datasets, Expires: &exp,
		Withdrawn: p.Withdrawn, EpsilonSpentU: e, DeltaSpentU: d, Rules: p.Rules}, nil
}

// History returns a project's released queries (costs and hashes only).
func (s *Service) History(project string) ([]Entry, error) {
	_, l, err := s.project(project)
	if err != nil {
		return nil, err
	}
	return l.Entries(), nil
}

// Engine returns the loaded engine of a dataset version (0: latest),
// loading it on first use from verified local files. The engine stays
// loaded until the service closes (benchmarks and tests use it directly).
func (s *Service) Engine(ctx context.Context, dataset string, version int) (*Engine, error) {
	m, err := s.lake.Manifest(ctx, dataset, version)
	if err != nil {
		return nil, err
	}
	e, release, err := s.engine(ctx, m)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.engines[engineKey(m)].pinned = true
	s.mu.Unlock()
	release()
	return e, nil
}

// Lake is the lake the service answers from.
func (s *Service) Lake() *catalog.Lake { return s.lake }

func engineKey(m *catalog.Manifest) string { return fmt.Sprintf("%s@%d", m.Dataset, m.Version) }

// engine returns the loaded engine of a committed version's manifest, in
// use until release is called; past MaxOpen loaded versions, the least
// recently used one not in use is closed.
func (s *Service) engine(ctx context.Context, m *catalog.Manifest) (*Engine, func(), error) {
	key := engineKey(m)
	s.mu.Lock()
	slot, ok := s.engines[key]
	if !ok {
		slot = &engineSlot{}
		s.engines[key] = slot
	}
	slot.users++
	slot.used = s.now()
	s.mu.Unlock()
	release := func() {
		s.mu.Lock()
		slot.users--
		s.mu.Unlock()
	}
	slot.once.Do(func() {
		start := time.Now()
		var e *Engine
		var files map[string][]string
		var err error
		cache := filepath.Join(s.state, "cache")
		if !s.engineOpt.Loaded(m) { // a database file needs no parts
			tables, _ := sources(m)
			files, err = s.lake.LocalTables(ctx, tables, cache)
		}
		if err == nil {
			e, err = OpenEngine(ctx, m, files, s.engineOpt)
		}
		var copies []string // of a remote lake's files, in the cache
		for _, fs := range files {
			for _, f := range fs {
				if strings.HasPrefix(f, cache+string(filepath.Separator)) {
					copies = append(copies, f)
				}
			}
		}
		switch {
		case err != nil:
		case s.engineOpt.inPlace(m):
			// Read where they lie: the copies stay while the engine is
			// open, and go when it closes.
			e.cached = copies
		case s.engineOpt.Dir != "":
			// The copies served only the load: the database file holds
			// the version now.
			for _, f := range copies {
				os.Remove(f)
			}
		}
		s.mu.Lock() // evict reads other slots' engines under the lock
		slot.e, slot.err = e, err
		s.mu.Unlock()
		if err != nil {
			s.log.Error("load dataset", "dataset", key, "err", err)
			return
		}
		s.log.Info("loaded dataset", "dataset", key, "seconds", time.Since(start).Seconds())
		s.evict(slot)
		s.capFiles()
	})
	if slot.err != nil {
		release()
		s.mu.Lock()
		if s.engines[key] == slot {
			delete(s.engines, key) // let a later query retry
		}
		s.mu.Unlock()
		return nil, nil, slot.err
	}
	return slot.e, release, nil
}

// capFiles keeps the engines' database files under their cap.
func (s *Service) capFiles() {
	open := map[string]bool{}
	s.mu.Lock()
	for _, sl := range s.engines {
		if sl.e != nil && sl.e.path != "" {
			open[sl.e.path] = true
		}
	}
	s.mu.Unlock()
	removed, err := capFiles(s.engineOpt, open)
	if err != nil {
		s.log.Error("engine files over their cap not removed", "err", err)
	}
	for _, f := range removed {
		s.log.Info("removed an engine file over the cap", "file", filepath.Base(f))
	}
}

// evict closes least recently used engines, neither in use nor pinned,
// while more than maxOpen are loaded.
func (s *Service) evict(keep *engineSlot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		loaded, oldest := 0, ""
		for k, sl := range s.engines {
			if sl.e == nil {
				continue
			}
			loaded++
			if sl != keep && sl.users == 0 && !sl.pinned && (oldest == "" || sl.used.Before(s.engines[oldest].used)) {
				oldest = k
			}
		}
		if loaded <= s.maxOpen || oldest == "" {
			return
		}
		s.log.Info("closed dataset", "dataset", oldest, "reason", "more than --max-open versions loaded")
		s.engines[oldest].e.Close()
		delete(s.engines, oldest)
	}
}

// Query answers a validated query for a project. In order: the project
// must allow the dataset and the query's ε must be under its cap; an
// identical earlier query is answered from the ledger at no cost; a query
// the remaining budget cannot pay is refused before any SQL runs; then the
// SQL runs, the project is asked again (a withdrawal or an expiry while
// the SQL ran refuses the query), and the ledger charges the budget and
// releases the noisy answer as one synced step. Nothing is charged when
// anything fails.
func (s *Service) Query(ctx context.Context, project string, q *Query) (*Answer, error) {
	p, ledger, err := s.project(project)
	if err != nil {
		return nil, err
	}
	if err := p.Allows(q.Dataset, s.now()); err != nil {
		return nil, err
	}
	lists, err := resolveCodelists(q, s.codelists)
	if err != nil {
		return nil, err
	}
	epsU, deltaU := units(q.Epsilon, EpsilonUnit), units(q.Delta, DeltaUnit)
	if epsU > p.MaxQueryU {
		return nil, fmt.Errorf("%w (asks %g, cap %g)", ErrOverCap, q.Epsilon, float64(p.MaxQueryU)*EpsilonUnit)
	}
	m, err := s.lake.Manifest(ctx, q.Dataset, q.Version)
	if err != nil {
		return nil, err
	}
	hash := q.Hash(m.Version)
	if a := ledger.Released(hash); a != nil {
		return repeated(a), nil
	}
	charge := Charge{Hash: hash, Dataset: q.Dataset, Version: m.Version, EpsilonU: epsU, DeltaU: deltaU,
		TotalE: p.EpsilonU, TotalD: p.DeltaU}
	if err := ledger.Check(charge); err != nil {
		return nil, err
	}
	eng, done, err := s.engine(ctx, m)
	if err != nil {
		return nil, err
	}
	defer done()
	plan, err := CompileFor(q, randomSeed(), eng.Dialect())
	if err != nil {
		return nil, err
	}
	xs, err := eng.exact(ctx, plan)
	if err != nil {
		return nil, err
	}
	unknowns, err := eng.unknownCounts(ctx, plan)
	if err != nil {
		return nil, err
	}
	a, repeat, err := ledger.Spend(charge, func() (*Answer, error) {
		// The SQL took time: a withdrawal or an expiry since the checks
		// above stops the charge and the answer (under the ledger's lock,
		// so nothing is charged).
		now, err := s.projects.Project(project)
		if err == nil {
			err = now.Allows(q.Dataset, s.now())
		}
		if err != nil {
			return nil, err
		}
		a, err := release(q, xs, now.Rules)
		if err != nil {
			return nil, err
		}
		a.Epsilon, a.Delta, a.Codelists = q.Epsilon, q.Delta, lists
		if len(unknowns) > 0 {
			a.Unknowns, err = releaseUnknowns(q, unknowns, now.Rules)
		}
		return a, err
	})
	if err != nil {
		return nil, err
	}
	if repeat {
		return repeated(a), nil
	}
	s.log.Info("query answered", "project", project, "dataset", q.Dataset, "version", m.Version,
		"epsilon", q.Epsilon, "query_sha256", hash)
	return a, nil
}

func repeated(a *Answer) *Answer {
	c := *a
	c.Repeat = true
	return &c
}

func randomSeed() int64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return int64(binary.LittleEndian.Uint64(b[:]) >> 1)
}

// A DatasetInfo describes a dataset for researchers: its versions and the
// latest version's tables and data dictionary.
type DatasetInfo struct {
	Name     string                            `json:"name"`
	Versions []int                             `json:"versions"`
	Latest   int                               `json:"latest"`
	Created  time.Time                         `json:"created"`
	Tables   map[string]*catalog.TableManifest `json:"tables"`
	// RowsRounded says the tables' row counts are rounded to 10, as
	// everyone but admins sees them.
	RowsRounded bool `json:"rows_rounded,omitempty"`
}

// Datasets lists the lake's datasets.
func (s *Service) Datasets(ctx context.Context) ([]DatasetInfo, error) {
	names, err := s.lake.Datasets(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]DatasetInfo, 0, len(names))
	for _, n := range names {
		d, err := s.Dataset(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, *d)
	}
	return out, nil
}

// Dataset describes one dataset.
func (s *Service) Dataset(ctx context.Context, name string) (*DatasetInfo, error) {
	if !catalog.ValidName(name) {
		return nil, fmt.Errorf("%q: %w", clip(name), catalog.ErrNotFound)
	}
	vs, err := s.lake.Versions(ctx, name)
	if err != nil {
		return nil, err
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("%s: %w", name, catalog.ErrNotFound)
	}
	m, err := s.lake.Manifest(ctx, name, vs[len(vs)-1])
	if err != nil {
		return nil, err
	}
	tables := map[string]*catalog.TableManifest{}
	for t, tm := range m.Tables {
		tables[t] = &catalog.TableManifest{Rows: tm.Rows, Schema: tm.Schema}
	}
	return &DatasetInfo{Name: name, Versions: vs, Latest: m.Version, Created: m.Created, Tables: tables}, nil
}

// Released returns a project's earlier answer to the query whose
// canonical hash is given (ErrNotFound-like error if none): a repeat
// costs nothing, so showing it again releases nothing new.
func (s *Service) Released(project, hash string) (*Answer, error) {
	_, l, err := s.project(project)
	if err != nil {
		return nil, err
	}
	a := l.Released(hash)
	if a == nil {
		return nil, fmt.Errorf("%w: no answer %q in project %s", governance.ErrNotFound, hash, project)
	}
	return a, nil
}
