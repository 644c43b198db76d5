package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
)

// benchQueries are three representative cohort questions; %g is the ε,
// varied per request so that no request is a free repeat.
var benchQueries = []struct {
	name, text string
	// clients and requests, when set, replace --clients and --requests
	// (a rate runs 72 statements: 16 clients would take minutes).
	clients, requests int
}{
	{"women 40-80 by region", `{"dataset": "bench", "index_date": "2024-01-01", "criteria": {"all": [{"sex": ["female"]}, {"age": {"min": 40, "max": 80}}]},
		"measures": [{"kind": "count", "by": ["region"]}], "epsilon": %g}`, 0, 0},
	{"T2D + HbA1c>48 in 2023 by age band", `{"dataset": "bench", "index_date": "2024-01-01", "criteria": {"all": [{"sex": ["female"]}, {"age": {"min": 40, "max": 80}},
		{"condition": {"codes": {"snomed": ["44054006"], "icd10": ["E11"]}}},
		{"observation": {"codes": {"snomed": ["999791000000106"]}, "value": {"min": 48.0001}, "window": {"from": "2023-01-01", "to": "2023-12-31"}}}]},
		"measures": [{"kind": "count", "by": ["age_band"]}], "epsilon": %g}`, 0, 0},
	{"T2D, metformin within a year: mean HbA1c", `{"dataset": "bench", "criteria": {"all": [{"condition": {"id": "t2d", "codes": {"snomed": ["44054006"]}}},
		{"medication": {"codes": {"dmd": ["318824000"]}, "window": {"relative_to": "t2d", "days_after": 365}}}]},
		"measures": [{"kind": "mean", "of": {"kind": "observation", "codes": {"snomed": ["999791000000106"]}, "pick": "last"}, "lower": 20, "upper": 150}], "epsilon": %g}`, 0, 0},
	// Issue 18's measure over time: 36 months, two counts a month.
	{"T2D: monthly HbA1c rate, 3 years, by region", `{"dataset": "bench", "criteria": {"condition": {"codes": {"snomed": ["44054006"]}}},
		"measures": [{"kind": "rate", "by": ["region"], "denominator": {"registered": {"days_before": 365}},
		  "numerator": {"observation": {"codes": {"snomed": ["999791000000106"]}, "window": {"relative_to": "interval"}}},
		  "intervals": {"every": "month", "from": "2021-01-01", "to": "2023-12-31"}}], "epsilon": %g}`, 2, 2},
}

// benchCohorts publishes the benchmark extract once (cached), then times
// each query through the HTTP service and the same compiled SQL run
// directly on the same DuckDB, with the same number of concurrent clients.
// A benchServer is the API over the benchmark dataset, in this process,
// with an approved project "bench" and its researcher's token.
type benchServer struct {
	gov   *governance.Store
	svc   *cohorts.Service
	eng   *cohorts.Engine
	state string
	base  string
	tok   string
	close func()
}

// newBenchServer publishes the benchmark extract once (cached), opens a
// fresh state folder with an approved project and serves the API on a
// loopback port.
func newBenchServer(c *cli.Context, dir string) (*benchServer, error) {
	n := c.Int("patients")
	root := filepath.Join(c.String("cache"), fmt.Sprintf("lake-%d-%d", n, c.Uint64("seed")))
	store, err := file.Open(root)
	if err != nil {
		return nil, err
	}
	lake := catalog.NewLake(store)
	if vs, _ := lake.Versions(c.Context, "bench"); len(vs) == 0 {
		key := filepath.Join(c.String("cache"), "bench.key")
		if err := os.WriteFile(key, []byte("bench-key-0123456789abcdef0123456789"), 0o600); err != nil {
			return nil, err
		}
		fmt.Fprintf(c.App.ErrWriter, "bench: publishing %s into %s (once; cached)\n", dir, root)
		if _, err := child(c, nil, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"),
			"--dataset", "bench", "--lake", root, "--key-file", key); err != nil {
			return nil, err
		}
	}
	b := &benchServer{}
	var closers []func()
	b.close = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	fail := func(err error) (*benchServer, error) { b.close(); return nil, err }
	if b.state, err = os.MkdirTemp("", "hub-bench-state-"); err != nil {
		return nil, err
	}
	closers = append(closers, func() { os.RemoveAll(b.state) })
	if b.gov, err = governance.Open(b.state, governance.Options{}); err != nil {
		return fail(err)
	}
	closers = append(closers, func() { b.gov.Close() })
	if b.tok, err = approvedProject(b.gov, "bench", "bench", 100); err != nil {
		return fail(err)
	}
	var engine cohorts.EngineOptions
	if limit := c.String("memory-limit"); limit != "" {
		engine = cohorts.EngineOptions{Dir: filepath.Join(b.state, "engines"), MemoryLimit: limit}
	}
	if engine.Engine, err = cohorts.ParseEngine(c.String("engine")); err != nil {
		return fail(usageError{fmt.Errorf("--engine: %w", err)})
	}
	engine.InPlace = c.Bool("in-place")
	if b.svc, err = cohorts.New(cohorts.Config{Lake: lake, State: b.state, Projects: b.gov, Engine: engine}); err != nil {
		return fail(err)
	}
	closers = append(closers, func() { b.svc.Close() })
	start := time.Now()
	if b.eng, err = b.svc.Engine(c.Context, "bench", 0); err != nil {
		return fail(err)
	}
	fmt.Fprintf(c.App.ErrWriter, "bench: dataset verified and loaded in %.1fs\n", time.Since(start).Seconds())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail(err)
	}
	srv := &http.Server{Handler: api.Handler(b.gov, b.svc, nil)}
	go srv.Serve(ln)
	closers = append(closers, func() { srv.Shutdown(context.Background()) })
	b.base = "http://" + ln.Addr().String()
	return b, nil
}

// client is an API client with the researcher's token, connecting from
// local (nil: any loopback address).
func (b *benchServer) client(local net.Addr) *api.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	if local != nil {
		tr.DialContext = (&net.Dialer{LocalAddr: local}).DialContext
	}
	return &api.Client{Base: b.base, Token: b.tok, HTTP: &http.Client{Transport: tr}}
}

func benchCohorts(c *cli.Context, dir string) error {
	b, err := newBenchServer(c, dir)
	if err != nil {
		return err
	}
	defer b.close()
	n, eng, cl := c.Int("patients"), b.eng, b.client(nil)
	clients, per := c.Int("clients"), c.Int("requests")
	var seq int
	var mu sync.Mutex
	nextEps := func() float64 { // distinct ε per request: never a free repeat
		mu.Lock()
		defer mu.Unlock()
		seq++
		return 0.001 + float64(seq)*1e-6
	}
	// The plain-DuckDB baseline over the same Parquet: the plan's SQL on
	// views of the parts, read in place (issue 20).
	files, err := b.svc.Lake().Local(c.Context, eng.Manifest, filepath.Join(b.state, "cache"))
	if err != nil {
		return err
	}
	views, err := cohorts.ParquetViews(c.Context, eng.Manifest, files)
	if err != nil {
		return err
	}
	defer views.Close()
	// The engine tables published with the version, read in place too.
	var engineFiles map[string][]string
	if len(eng.Manifest.EngineTables) > 0 {
		if engineFiles, err = b.svc.Lake().LocalEngine(c.Context, eng.Manifest, filepath.Join(b.state, "cache")); err != nil {
			return err
		}
	}
	w := c.App.Writer
	fmt.Fprintf(w, "dataset: %d patients, %d rows; %d concurrent clients, %d requests each\n\n", n, rowsOf(eng.Manifest), clients, per)
	fmt.Fprintf(w, "%-42s %12s %12s %10s %10s %10s %10s %8s %8s\n", "query", "Parquet p50", "engine p50", "SQL p50", "SQL p99", "API p50", "API p99", "p50 ×", "p99 ×")
	for _, bq := range benchQueries {
		if bq.clients > 0 && c.Bool("no-rate") {
			continue
		}
		// The baselines are DuckDB; the service's engine has its dialect.
		q := mustQuery(fmt.Sprintf(bq.text, 0.5))
		plan, err := cohorts.Compile(q, 1)
		if err != nil {
			return err
		}
		ePlan, err := cohorts.CompileFor(q, 1, eng.Dialect())
		if err != nil {
			return err
		}
		clients, per := clients, per
		if bq.clients > 0 {
			clients, per = bq.clients, bq.requests
		}
		inPlace := func(db *sql.DB) func() error {
			return func() error {
				for _, st := range plan.Statements() {
					rows, err := db.QueryContext(c.Context, st.SQL, st.Args...)
					if err != nil {
						return err
					}
					for rows.Next() {
					}
					rows.Close()
				}
				return nil
			}
		}
		parquet, err := load(clients, per, inPlace(views))
		if err != nil {
			return err
		}
		enginePart := "-"
		if engineFiles != nil {
			// Open only while measured: its DuckDB (and its memory) gone
			// before the service's turn.
			engineViews, err := cohorts.EngineViews(c.Context, engineFiles)
			if err != nil {
				return err
			}
			times, err := load(clients, per, inPlace(engineViews))
			engineViews.Close()
			if err != nil {
				return err
			}
			enginePart = ms(pct(times, 0.5))
		}
		direct, err := load(clients, per, func() error {
			for _, st := range ePlan.Statements() {
				if _, err := eng.Rows(c.Context, st); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		api, err := load(clients, per, func() error {
			_, _, err := cl.Query(c.Context, "bench", []byte(fmt.Sprintf(bq.text, nextEps())))
			return err
		})
		if err != nil {
			return err
		}
		d50, d99, a50, a99 := pct(direct, 0.5), pct(direct, 0.99), pct(api, 0.5), pct(api, 0.99)
		fmt.Fprintf(w, "%-42s %12s %12s %10s %10s %10s %10s %8.2f %8.2f\n", bq.name, ms(pct(parquet, 0.5)), enginePart, ms(d50), ms(d99), ms(a50), ms(a99), a50.Seconds()/d50.Seconds(), a99.Seconds()/d99.Seconds())
	}
	fmt.Fprintln(w, "\nParquet is the same SQL run by plain DuckDB on views of the version's Parquet parts, read in place;")
	fmt.Fprintln(w, "engine, on views of the engine tables published with it (engine/: integer pid, sorted by code), read in place (- : none).")
	fmt.Fprintf(w, "SQL is the plan's SQL run directly on the service's engine (%s); × is the service's latency over it (aim: at most 1.15; a rate's at most 1.3).\n", eng.Dialect())
	fmt.Fprintln(w, "A rate runs two statements an interval, with 2 clients making 2 requests each.")
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		where := "in memory"
		switch {
		case c.Bool("in-place") && len(eng.Manifest.EngineTables) > 0:
			where = "the engine tables in place, memory_limit " + c.String("memory-limit")
		case eng.Dialect() == cohorts.ClickHouse:
			where = "ClickHouse (chdb), max_memory_usage " + c.String("memory-limit")
		case c.String("memory-limit") != "":
			where = "a DuckDB file, memory_limit " + c.String("memory-limit")
		}
		fmt.Fprintf(w, "Peak RSS of the process (server, engine, clients and the Parquet baseline's DuckDB; %s): %.0f MB.\n", where, float64(ru.Maxrss)/1024)
	}
	if files, _ := filepath.Glob(filepath.Join(b.state, "engines", "*.duckdb")); len(files) > 0 {
		var size int64
		for _, f := range files {
			if st, err := os.Stat(f); err == nil {
				size += st.Size()
			}
		}
		fmt.Fprintf(w, "The version's DuckDB file: %.0f MB (the lake's Parquet: %.0f MB).\n", float64(size)/1e6, float64(partBytes(eng.Manifest))/1e6)
	}
	return nil
}

func mustQuery(s string) *cohorts.Query {
	q, err := cohorts.ParseQuery(strings.NewReader(s))
	if err != nil {
		panic(err)
	}
	return q
}

func partBytes(m *catalog.Manifest) int64 {
	var n int64
	for _, t := range m.Tables {
		for _, p := range t.Parts {
			n += p.Size
		}
	}
	return n
}

func rowsOf(m *catalog.Manifest) int64 {
	var n int64
	for _, t := range m.Tables {
		n += t.Rows
	}
	return n
}

// load runs f from clients goroutines, per times each, and returns every
// call's latency.
func load(clients, per int, f func() error) ([]time.Duration, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var first error
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				t := time.Now()
				err := f()
				d := time.Since(t)
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, first
}

func pct(lat []time.Duration, p float64) time.Duration {
	return lat[min(len(lat)-1, int(p*float64(len(lat))))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

// approvedProject runs the governance workflow for a benchmark: a
// researcher's request for project on dataset, approved by two DAC
// members. It returns the researcher's token.
func approvedProject(gov *governance.Store, project, dataset string, eps float64) (string, error) {
	host := governance.Host("bench")
	who := map[string]*governance.Principal{}
	var tok string
	for _, u := range []struct {
		name string
		role governance.Role
	}{{"researcher", governance.Researcher}, {"dac-1", governance.DAC}, {"dac-2", governance.DAC}} {
		t, err := gov.AddUser(host, u.name, []governance.Role{u.role}, 0)
		if err != nil {
			return "", err
		}
		if who[u.name], err = gov.Authenticate(t); err != nil {
			return "", err
		}
		if u.role == governance.Researcher {
			tok = t
		}
	}
	yes := false
	r, err := gov.CreateRequest(who["researcher"], governance.RequestSpec{Project: project, Title: "benchmark", Purpose: "benchmark",
		LaySummary: "benchmark", Datasets: []string{dataset}, Epsilon: eps, LegalBasis: "anonymised",
		NationalOptOutApplies: &yes, DurationDays: 1}, true)
	if err != nil {
		return "", err
	}
	for _, d := range []string{"dac-1", "dac-2"} {
		if _, err := gov.Approve(who[d], r.ID, governance.Grant{Reason: "benchmark"}, nil); err != nil {
			return "", err
		}
	}
	return tok, nil
}
