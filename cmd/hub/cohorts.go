package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/web"
)

func stateFlag() cli.Flag {
	return &cli.StringFlag{Name: "state", Value: "./state", EnvVars: []string{"HUB_STATE"},
		Usage: "the server's state folder: audit log (users, requests, decisions), budget ledgers, dataset cache"}
}

// codelistDir is where the state folder keeps the hub's code lists.
func codelistDir(c *cli.Context) string { return filepath.Join(c.String("state"), "codelists") }

// codelistCommand imports and lists the code lists queries may name.
func codelistCommand() *cli.Command {
	return &cli.Command{
		Name:  "codelist",
		Usage: "import and list the code lists cohort queries may name (\"codelist\": \"owner/name@version\")",
		Subcommands: []*cli.Command{{
			Name:      "import",
			Usage:     "store a code list from OpenCodelists' CSV download (a code column: code, or dmd_id for dm+d)",
			ArgsUsage: "FILE.csv",
			Description: "A version, once stored, never changes: importing other codes under it is refused, so a\n" +
				"query's hash covers the codes it used. The system is taken from the codes (SNOMED CT or\n" +
				"ICD-10) or the dmd_id column unless --system says. The server reads new lists at once.\n\n" +
				"Example: hub codelist import --state ./state --name opensafely/asthma-diagnosis --version 2020-04-15 asthma.csv",
			Flags: []cli.Flag{stateFlag(), auditKeyFlag(),
				&cli.StringFlag{Name: "name", Required: true, Usage: "owner/name, as OpenCodelists names it (e.g. nhsd-primary-care-domain-refsets/dmtype2_cod)"},
				&cli.StringFlag{Name: "version", Required: true, Usage: "the version (OpenCodelists' version id or date)"},
				&cli.StringFlag{Name: "system", Usage: "snomed, icd10 or dmd (default: from the file)"}},
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usageError{fmt.Errorf("give the CSV file to import")}
				}
				f, err := os.Open(c.Args().First())
				if err != nil {
					return err
				}
				defer f.Close()
				codes, system, err := cohorts.ParseOpenCodelistsCSV(f, c.String("system"))
				if err != nil {
					return fmt.Errorf("%s: %w", c.Args().First(), err)
				}
				lists, err := cohorts.OpenCodelists(codelistDir(c))
				if err != nil {
					return err
				}
				cl := &cohorts.Codelist{Name: c.String("name"), Version: c.String("version"), System: system, Codes: codes,
					Source: filepath.Base(c.Args().First()), Imported: time.Now().UTC()}
				_, err = lists.Get(cl.Ref())
				isNew := errors.Is(err, cohorts.ErrNoCodelist)
				if err := lists.Put(cl); err != nil {
					return err
				}
				if isNew {
					// A new version goes into the audit log: who brought
					// which codes in, with their hash.
					gov, err := openGovernance(c)
					if err != nil {
						return err
					}
					defer gov.Close()
					data, _ := json.Marshal(map[string]any{"codelist": cl.Ref(), "system": cl.System, "codes": len(cl.Codes), "sha256": cl.SHA256, "source": cl.Source})
					if _, err := gov.Record(hostPrincipal(), governance.Entry{Action: governance.ActCodelist, Data: data}); err != nil {
						return err
					}
				}
				fmt.Fprintf(c.App.Writer, "%s: %d %s codes (sha256 %s)\n", cl.Ref(), len(cl.Codes), cl.System, cl.SHA256)
				return nil
			},
		}, {
			Name:  "list",
			Usage: "list the stored code lists",
			Flags: []cli.Flag{stateFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
			Action: func(c *cli.Context) error {
				lists, err := cohorts.OpenCodelists(codelistDir(c))
				if err != nil {
					return err
				}
				all, err := lists.List()
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return json.NewEncoder(c.App.Writer).Encode(all)
				}
				for _, l := range all {
					fmt.Fprintf(c.App.Writer, "%-60s %-6s %6d codes  %s\n", l.Ref(), l.System, l.Count, l.SHA256[:12])
				}
				return nil
			},
		}},
	}
}

// serveHandler routes the API (/v1/ and /healthz) and the web app (the
// rest), which share one count of failed authentications.
func serveHandler(gov *governance.Store, svc *cohorts.Service, lake *catalog.Lake, log *slog.Logger, secure bool) (http.Handler, error) {
	failures := api.NewFailures(gov.Now)
	app, err := web.Handler(web.Config{Gov: gov, Svc: svc, Lake: lake, Log: log, Secure: secure, Failures: failures})
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	apiHandler := api.NewHandler(gov, svc, log, failures)
	mux.Handle("/v1/", apiHandler)
	mux.Handle("/healthz", apiHandler)
	mux.Handle("/", app)
	return mux, nil
}

// engineFlag chooses the engine that answers cohort queries.
func engineFlag() cli.Flag {
	return &cli.StringFlag{Name: "engine", Value: "duckdb", EnvVars: []string{"HUB_ENGINE"},
		Usage: "the engine that answers cohort queries: duckdb (embedded), or clickhouse (in process, chdb: a build with -tags chdb and libchdb.so, make hub-chdb; its tables live in STATE/engines/clickhouse)"}
}

func serveCommand() *cli.Command {
	flags := append([]cli.Flag{
		&cli.StringFlag{Name: "lake", Value: "./lake", EnvVars: []string{"HUB_LAKE"}, Usage: "the lake: a local folder or s3://bucket/prefix (read through a checksum-verified cache)"},
		stateFlag(),
		auditKeyFlag(),
		&cli.StringFlag{Name: "addr", Value: "127.0.0.1:8080", EnvVars: []string{"HUB_ADDR"}, Usage: "address to listen on"},
		quorumFlag(),
		&cli.DurationFlag{Name: "checkpoint-every", Value: 10 * time.Minute, Usage: "how often the audit log's head is written to the lake (audit-checkpoints/), write-once; the server refuses to start on a log that lacks one. They assume one state folder per lake: 0 turns both off"},
		&cli.StringSliceFlag{Name: "preload", Usage: "load these datasets' latest versions before listening (default: load on first query)"},
		&cli.StringFlag{Name: "memory-limit", Value: "auto", EnvVars: []string{"HUB_MEMORY_LIMIT"}, Usage: "DuckDB's memory_limit for each loaded version, which lives in a database file in STATE/engines (spilling to STATE/engines/tmp): a size (1500MB), or auto (300 MB a million patients, 256 MB to half the machine's memory); \"\" loads each version into memory instead, as before December 2026"},
		engineFlag(),
		&cli.BoolFlag{Name: "in-place", EnvVars: []string{"HUB_IN_PLACE"}, Usage: "with --engine duckdb: query the engine tables published with each version where they lie (views over their Parquet, within --memory-limit; a remote lake's are kept in STATE/cache), with no database file; a version published without them is loaded as before"},
		&cli.StringFlag{Name: "engine-files-max", Value: "20GB", Usage: "cap on the database files in STATE/engines (with --engine clickhouse, its databases): past it, the least recently opened files of versions not open are removed (0: no cap)"},
		&cli.IntFlag{Name: "max-open", Value: 2, Usage: "dataset versions kept open at once; past it the least recently used one not in use is closed (its database file stays)"},
		&cli.BoolFlag{Name: "secure-cookies", EnvVars: []string{"HUB_SECURE_COOKIES"}, Usage: "mark the web app's cookies Secure: set it when a proxy serves the hub over TLS"},
	}, s3Flags()...)
	return &cli.Command{
		Name:  "serve",
		Usage: "serve the web app and the API: data access requests, DAC decisions, the audit log, and DP cohort queries within each approved project's budget",
		Description: "The web app is at /, the public register at /register, the API at /v1/. Endpoints and\n" +
			"the roles that may call them: docs/governance.md. The state folder holds\n" +
			"the audit log (users, requests, decisions, queries), the budget ledgers and the dataset\n" +
			"cache. Add the first users on this host with `hub user add`.\n\n" +
			"Example: hub serve --lake ./lake --state ./state --addr 127.0.0.1:8080",
		Flags: flags,
		Action: func(c *cli.Context) error {
			lake, err := openLake(c)
			if err != nil {
				return err
			}
			log := logger(c)
			gov, err := openGovernance(c)
			if err != nil {
				return err
			}
			defer gov.Close()
			if c.Duration("checkpoint-every") > 0 {
				if err := checkCheckpoints(c, lake, gov); err != nil {
					return err
				}
			}
			lists, err := cohorts.OpenCodelists(codelistDir(c))
			if err != nil {
				return err
			}
			var engine cohorts.EngineOptions
			if limit := c.String("memory-limit"); limit != "" {
				capBytes, err := humanize.ParseBytes(c.String("engine-files-max"))
				if err != nil {
					return usageError{fmt.Errorf("--engine-files-max: %w (e.g. 20GB, or 0 for no cap)", err)}
				}
				engine = cohorts.EngineOptions{Dir: filepath.Join(c.String("state"), "engines"), MemoryLimit: limit, MaxBytes: int64(capBytes)}
			}
			if engine.Engine, err = cohorts.ParseEngine(c.String("engine")); err != nil {
				return usageError{fmt.Errorf("--engine: %w", err)}
			}
			engine.InPlace = c.Bool("in-place")
			svc, err := cohorts.New(cohorts.Config{Lake: lake, State: c.String("state"), Projects: gov, Codelists: lists, Logger: log,
				Engine: engine, MaxOpen: c.Int("max-open")})
			if err != nil {
				return err
			}
			defer svc.Close()
			for _, d := range c.StringSlice("preload") {
				start := time.Now()
				fmt.Fprintf(os.Stderr, "loading %s ... ", d)
				if _, err := svc.Engine(c.Context, d, 0); err != nil {
					return fmt.Errorf("preload %s: %w", d, err)
				}
				fmt.Fprintf(os.Stderr, "%.1fs\n", time.Since(start).Seconds())
			}
			ln, err := net.Listen("tcp", c.String("addr"))
			if err != nil {
				return fmt.Errorf("listen: %w (is another server on %s? choose --addr)", err, c.String("addr"))
			}
			// Bounded reads, writes and idle keep-alives: a stalled body or
			// an idle connection does not hold a slot for ever.
			handler, err := serveHandler(gov, svc, lake, log, c.Bool("secure-cookies"))
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
				ReadTimeout: 30 * time.Second, WriteTimeout: 5 * time.Minute, IdleTimeout: time.Minute}
			fmt.Fprintf(c.App.ErrWriter, "hub serving %s on http://%s (state %s, DAC quorum %d)\n", c.String("lake"), ln.Addr(), c.String("state"), gov.Quorum())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ln) }()
			// The head goes to the lake now, every --checkpoint-every and
			// at the end: a log later cut or replaced no longer verifies
			// against it (`hub audit verify --lake`).
			checkpoint := func() {
				if err := governance.WriteCheckpoint(context.Background(), lake.Store(), gov.Head()); err != nil {
					log.Error("audit checkpoint not written", "err", err)
				}
			}
			var tick <-chan time.Time
			if every := c.Duration("checkpoint-every"); every > 0 {
				checkpoint()
				defer checkpoint()
				t := time.NewTicker(every)
				defer t.Stop()
				tick = t.C
			}
			for {
				select {
				case err := <-done:
					return err
				case <-tick:
					checkpoint()
				case <-c.Context.Done():
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					return srv.Shutdown(ctx)
				}
			}
		},
	}
}

// checkCheckpoints refuses to serve a log that does not contain every
// head the server wrote to the lake: one cut or replaced since.
func checkCheckpoints(c *cli.Context, lake *catalog.Lake, gov *governance.Store) error {
	cps, err := governance.Checkpoints(c.Context, lake.Store())
	if err != nil {
		return err
	}
	if err := gov.CheckHeads(cps); err != nil {
		return fmt.Errorf("the audit log does not contain the lake's checkpoints: %w; see `hub audit verify --state %s --lake %s` (a second state folder serving the same lake needs --checkpoint-every 0)",
			err, c.String("state"), c.String("lake"))
	}
	return nil
}

func quorumFlag() cli.Flag {
	return &cli.IntFlag{Name: "quorum", Value: governance.DefaultQuorum, EnvVars: []string{"HUB_DAC_QUORUM"}, Usage: "distinct DAC members whose approval a request needs"}
}

// serverFlags say how to reach the API and as whom.
func serverFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Value: "http://127.0.0.1:8080", EnvVars: []string{"HUB_SERVER"}, Usage: "the hub server's URL"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"HUB_TOKEN_FILE"}, Usage: "file holding your token (or set HUB_TOKEN)"},
		&cli.DurationFlag{Name: "wait", Usage: "wait this long for the server to come up"},
		jsonFlag(),
	}
}

func projectFlag() cli.Flag {
	return &cli.StringFlag{Name: "project", Required: true, EnvVars: []string{"HUB_PROJECT"}, Usage: "the approved project to act for"}
}

func client(c *cli.Context) (*api.Client, error) {
	tok := os.Getenv("HUB_TOKEN")
	if f := c.String("token-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("token file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return nil, usageError{errors.New("no token: give --token-file or set HUB_TOKEN (an admin prints one with `hub user add` or `hub user token`)")}
	}
	cl := &api.Client{Base: c.String("server"), Token: tok, HTTP: &http.Client{Timeout: 10 * time.Minute}}
	if d := c.Duration("wait"); d > 0 {
		if err := cl.Wait(c.Context, d); err != nil {
			return nil, err
		}
	}
	return cl, nil
}

func queryCommand() *cli.Command {
	return &cli.Command{
		Name:  "query",
		Usage: "ask a cohort question (JSON, see docs/cohort-language.md) and print the DP answer",
		Description: "Reads the query from --file (or stdin with --file -), sends it to the server and prints\n" +
			"each measure with its 95% interval. The budget is charged before the answer is released;\n" +
			"asking the same query again returns the same answer at no cost.\n\n" +
			"Example: hub query --token-file rosa.token --project t2d-audit --file docs/examples/t2d-by-age.json",
		Flags: append(serverFlags(), projectFlag(), &cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "the query file, - for stdin"}),
		Action: func(c *cli.Context) error {
			var body []byte
			var err error
			if f := c.String("file"); f == "-" {
				body, err = io.ReadAll(io.LimitReader(os.Stdin, cohorts.MaxQueryBytes+1))
			} else {
				body, err = os.ReadFile(f)
			}
			if err != nil {
				return fmt.Errorf("read query: %w", err)
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			a, raw, err := cl.Query(c.Context, c.String("project"), body)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				_, err := c.App.Writer.Write(raw)
				return err
			}
			printAnswer(c.App.Writer, a)
			return nil
		},
	}
}

func budgetCommand() *cli.Command {
	return &cli.Command{
		Name:        "budget",
		Usage:       "show a project's privacy budget: total, spent and remaining",
		Description: "Example: hub budget --token-file rosa.token --project t2d-audit",
		Flags:       append(serverFlags(), projectFlag()),
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			b, err := cl.Budget(c.Context, c.String("project"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(b)
			}
			fmt.Fprintf(c.App.Writer, "project %s: ε %.6g of %.6g spent, %.6g remaining (per-query cap %.6g); δ %.3g of %.3g spent; %d queries answered\n",
				b.Project, b.EpsilonSpent, b.EpsilonTotal, b.EpsilonRemaining, b.MaxQueryEpsilon, b.DeltaSpent, b.DeltaTotal, b.Queries)
			if r := b.Rules; r != nil {
				fmt.Fprintf(c.App.Writer, "release rules: counts under %d suppressed, rounded to %d; sums, means and quantiles of under %d patients suppressed\n",
					r.SuppressBelow, r.RoundTo, r.MinCohort)
			}
			return nil
		},
	}
}

// printAnswer prints each measure as a table with its interval.
func printAnswer(w io.Writer, a *cohorts.Answer) {
	cost := fmt.Sprintf("ε %.6g charged", a.Epsilon)
	if a.Repeat {
		cost = "a repeat of an earlier release: nothing charged"
	}
	fmt.Fprintf(w, "%s@%d · %s · query %s\n", a.Dataset, a.Version, cost, a.QuerySHA256[:12])
	num := func(v *float64) string {
		if v == nil {
			return ""
		}
		if *v == float64(int64(*v)) {
			return fmt.Sprintf("%d", int64(*v))
		}
		return fmt.Sprintf("%.2f", *v)
	}
	for _, m := range a.Measures {
		title := m.Kind
		if m.Name != "" {
			title = m.Name + " (" + m.Kind + ")"
		}
		if m.Cohort != "" {
			title = m.Cohort + ": " + title
		}
		fmt.Fprintf(w, "\n%s, ε %.4g\n", title, m.Epsilon)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
		switch {
		case m.Intervals != nil:
			fmt.Fprintln(tw, "from\tto\t"+strings.Join(append(slices.Clone(m.By), ""), "\t")+"numerator\tdenominator\trate\t95% interval\t")
			for _, iv := range m.Intervals {
				for _, cell := range iv.Cells {
					var ks []string
					for _, k := range m.By {
						ks = append(ks, cell.Key[k]+"\t")
					}
					if cell.Suppressed {
						fmt.Fprintf(tw, "%s\t%s\t%ssuppressed\t\t\t\t\n", iv.From, iv.To, strings.Join(ks, ""))
						continue
					}
					fmt.Fprintf(tw, "%s\t%s\t%s%s\t%s\t%.3f\t%.3f – %.3f\t\n", iv.From, iv.To, strings.Join(ks, ""),
						num(cell.Numerator), num(cell.Denominator), *cell.Value, *cell.CILow, *cell.CIHigh)
				}
			}
		case len(m.Quantiles) > 0:
			fmt.Fprintln(tw, "rank\tvalue\t")
			for _, q := range m.Quantiles {
				fmt.Fprintf(tw, "%.2f\t%.2f\t\n", q.Rank, q.Value)
			}
		case m.By != nil || m.PartitionsReleased != nil:
			var keys []string
			if m.By != nil {
				keys = m.By
			} else {
				keys = []string{"code_system", "code"}
			}
			fmt.Fprintln(tw, strings.Join(keys, "\t")+"\tvalue\t95% interval\t")
			for _, cell := range m.Cells {
				var ks []string
				for _, k := range keys {
					ks = append(ks, cell.Key[k])
				}
				if cell.Suppressed {
					fmt.Fprintf(tw, "%s\tsuppressed\t\t\n", strings.Join(ks, "\t"))
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s – %s\t\n", strings.Join(ks, "\t"), num(cell.Value), num(cell.CILow), num(cell.CIHigh))
			}
			if m.PartitionsReleased != nil {
				fmt.Fprintf(tw, "(%d codes passed DP partition selection)\t\t\t\t\n", *m.PartitionsReleased)
			}
		case m.Suppressed:
			fmt.Fprintln(tw, "suppressed (below the threshold)\t")
		default:
			fmt.Fprintf(tw, "value\t%s\t\n95%% interval\t%s – %s\t\n", num(m.Value), num(m.CILow), num(m.CIHigh))
		}
		tw.Flush()
	}
	if len(a.Unknowns) > 0 {
		fmt.Fprintln(w, "\npatients of the population whose value is unknown")
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "attribute\tvalue\t95% interval\tε\ttested by\t")
		for _, u := range a.Unknowns {
			fmt.Fprintf(tw, "%s\t%s\t%s – %s\t%.4g\t%s\t\n", u.Attribute, num(u.Value), num(u.CILow), num(u.CIHigh), u.Epsilon, strings.Join(u.Criteria, ", "))
		}
		tw.Flush()
	}
}
