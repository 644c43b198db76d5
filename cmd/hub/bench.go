package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/bench"
	"github.com/nhs-hub/hub/internal/miniotest"
	"github.com/nhs-hub/hub/internal/synth"
	"github.com/urfave/cli/v2"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure ingest against a DuckDB baseline on a synthetic extract",
		Description: "Synthesises an extract (cached under --cache), then runs `hub ingest --check` and a\n" +
			"DuckDB baseline (read_csv of every table anti-joined against the opt-out list) as child\n" +
			"processes, and reports rows/s and peak RSS for each, with their ratio. Absolute times on a\n" +
			"shared machine are noisy: read the ratio.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "patients", Value: 1_000_000, Usage: "patients in the benchmark extract (about 20 events each)"},
			&cli.Uint64Flag{Name: "seed", Value: 1},
			&cli.StringFlag{Name: "cache", Value: ".cache/bench", Usage: "where benchmark extracts are kept between runs"},
			&cli.IntFlag{Name: "runs", Value: 1, Usage: "runs of each side; the fastest counts"},
			&cli.BoolFlag{Name: "pipeline", Usage: "measure ingest → deid → publish (local lake, and MinIO when bin/minio exists) against a DuckDB pipeline"},
			&cli.StringFlag{Name: "format", Value: "csv", Usage: "the extract's format, csv or fhir (fhir: with --pipeline, against DuckDB read_ndjson)"},
			&cli.BoolFlag{Name: "cohorts", Usage: "measure cohort query latency through the service against the same SQL run directly by DuckDB"},
			&cli.IntFlag{Name: "clients", Value: 16, Usage: "concurrent clients (with --cohorts)"},
			&cli.IntFlag{Name: "requests", Value: 10, Usage: "requests per client and query (with --cohorts)"},
			&cli.StringFlag{Name: "memory-limit", Value: "auto", Usage: "with --cohorts: the version is a DuckDB file in the state folder with this memory_limit, as hub serve's default; \"\" loads it into memory"},
			engineFlag(),
			&cli.BoolFlag{Name: "in-place", Usage: "with --cohorts: the service queries the version's engine tables in place (hub serve --in-place)"},
			&cli.BoolFlag{Name: "no-rate", Usage: "with --cohorts: leave out the monthly rate (a minute and more)"},
			&cli.BoolFlag{Name: "pull", Usage: "issue 16's target: ingest of a FHIR export pulled from a Bulk Data server over loopback against the same files from a folder (implies --format fhir)"},
			&cli.BoolFlag{Name: "load", Usage: "issue 17's load test: --clients good clients for --duration while --flooders send bad tokens; errors, RSS growth, state growth"},
			&cli.IntFlag{Name: "flooders", Value: 20, Usage: "clients sending bad tokens, each from its own loopback address (with --load)"},
			&cli.DurationFlag{Name: "duration", Value: time.Minute, Usage: "how long the measured load runs (with --load)"},
			&cli.DurationFlag{Name: "warmup", Value: 10 * time.Second, Usage: "load before measuring, without the flood (with --load)"},
		},
		Subcommands: []*cli.Command{bulkServerCommand(), {
			Name: "duckdb-fhir-pipeline", Hidden: true, Usage: "run the DuckDB FHIR pipeline baseline (used by hub bench --pipeline --format fhir)",
			Flags: []cli.Flag{&cli.StringFlag{Name: "extract", Required: true}, &cli.StringFlag{Name: "out", Required: true}},
			Action: func(c *cli.Context) error {
				return bench.DuckDBFHIRPipeline(c.Context, c.String("extract"), c.String("out"), "bench-key-0123456789abcdef0123456789")
			},
		}, {
			Name: "duckdb-pipeline", Hidden: true, Usage: "run the DuckDB pipeline baseline (used by hub bench --pipeline)",
			Flags: []cli.Flag{&cli.StringFlag{Name: "extract", Required: true}, &cli.StringFlag{Name: "out", Required: true}},
			Action: func(c *cli.Context) error {
				read, err := bench.DuckDBPipeline(c.Context, c.String("extract"), c.String("out"), "bench-key-0123456789abcdef0123456789")
				if err != nil {
					return err
				}
				return json.NewEncoder(c.App.Writer).Encode(map[string]int64{"read": read})
			},
		}, {
			Name: "duckdb-baseline", Hidden: true, Usage: "run the DuckDB baseline on --extract (used by hub bench)",
			Flags: []cli.Flag{&cli.StringFlag{Name: "extract", Required: true}},
			Action: func(c *cli.Context) error {
				read, kept, err := bench.DuckDBIngest(c.Context, c.String("extract"))
				if err != nil {
					return err
				}
				return json.NewEncoder(c.App.Writer).Encode(map[string]int64{"read": read, "kept": kept})
			},
		}},
		Action: runBench,
	}
}

type measure struct {
	seconds float64
	rssMB   float64
	out     []byte
}

// child runs hub itself with args and measures wall time and peak RSS.
func child(c *cli.Context, env []string, args ...string) (measure, error) {
	self, err := os.Executable()
	if err != nil {
		return measure{}, err
	}
	cmd := exec.CommandContext(c.Context, self, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return measure{}, fmt.Errorf("hub %s: %w", args[0], err)
	}
	m := measure{seconds: time.Since(start).Seconds(), out: out.Bytes()}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.rssMB = float64(ru.Maxrss) / 1024 // kilobytes on Linux
	}
	return m, nil
}

func runBench(c *cli.Context) error {
	n := c.Int("patients")
	format, err := parseFormat(c.String("format"))
	if err != nil {
		return err
	}
	if c.Bool("pull") {
		format = ingest.FHIR
	}
	if format == ingest.FHIR && !c.Bool("pipeline") && !c.Bool("pull") {
		return usageError{fmt.Errorf("--format fhir is measured with --pipeline or --pull")}
	}
	dir := filepath.Join(c.String("cache"), fmt.Sprintf("%s-v%d-%d-%d", format, synth.Version, n, c.Uint64("seed")))
	if _, err := os.Stat(filepath.Join(dir, "truth.json")); err != nil {
		fmt.Fprintf(c.App.ErrWriter, "bench: synthesising %d patients into %s (once; cached)\n", n, dir)
		// A clean extract, so that the baseline's read_csv accepts every file.
		if _, err := synth.Generate(c.Context, dir, synth.Options{Patients: n, Seed: c.Uint64("seed"), Format: format}); err != nil {
			return err
		}
	}
	var size int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && (strings.HasSuffix(e.Name(), ".csv") || strings.HasSuffix(e.Name(), ".ndjson")) {
			size += info.Size()
		}
	}
	best := func(env []string, args ...string) (measure, error) {
		var b measure
		for i := 0; i < max(1, c.Int("runs")); i++ {
			m, err := child(c, env, args...)
			if err != nil {
				return m, err
			}
			if i == 0 || m.seconds < b.seconds {
				b = m
			}
		}
		return b, nil
	}
	if c.Bool("pipeline") {
		return benchPipeline(c, dir, format, size, best)
	}
	if c.Bool("cohorts") {
		return benchCohorts(c, dir)
	}
	if c.Bool("pull") {
		return benchPull(c, dir)
	}
	if c.Bool("load") {
		return benchLoad(c, dir)
	}
	fmt.Fprintln(c.App.ErrWriter, "bench: hub ingest --check")
	hub, err := best(nil, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--check", "--json")
	if err != nil {
		return err
	}
	var rep ingest.Report
	if err := json.Unmarshal(hub.out, &rep); err != nil {
		return fmt.Errorf("read ingest report: %w", err)
	}
	var read int64
	for _, t := range rep.Tables {
		read += t.Read
	}
	fmt.Fprintln(c.App.ErrWriter, "bench: DuckDB baseline")
	duck, err := best(nil, "bench", "duckdb-baseline", "--extract", dir)
	if err != nil {
		return err
	}
	var d struct{ Read, Kept int64 }
	if err := json.Unmarshal(duck.out, &d); err != nil {
		return fmt.Errorf("read baseline result: %w", err)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "extract: %d patients, %d rows, %.0f MB of CSV\n\n", n, read, float64(size)/1e6)
	fmt.Fprintf(w, "%-44s %9s %12s %12s\n", "", "seconds", "rows/s", "peak RSS MB")
	fmt.Fprintf(w, "%-44s %9.2f %12.0f %12.0f\n", "hub ingest (validate, opt-out, type 1, Arrow)", hub.seconds, float64(read)/hub.seconds, hub.rssMB)
	fmt.Fprintf(w, "%-44s %9.2f %12.0f %12.0f\n", "DuckDB read_csv + anti-join (baseline)", duck.seconds, float64(d.Read)/duck.seconds, duck.rssMB)
	fmt.Fprintf(w, "\nhub / baseline: %.2fx the rows/s, %.2fx the peak RSS\n",
		(float64(read)/hub.seconds)/(float64(d.Read)/duck.seconds), hub.rssMB/duck.rssMB)
	if d.Read != read {
		fmt.Fprintf(w, "note: the baseline read %d rows, hub %d\n", d.Read, read)
	}
	return nil
}

// benchPipeline measures ingest → deid → publish to the local lake and to
// MinIO against the DuckDB pipeline baseline, in one run.
func benchPipeline(c *cli.Context, dir string, format ingest.Format, size int64, best func([]string, ...string) (measure, error)) error {
	raw, err := os.ReadFile(filepath.Join(dir, "truth.json"))
	if err != nil {
		return err
	}
	var truth synth.Truth
	if err := json.Unmarshal(raw, &truth); err != nil {
		return err
	}
	var rows int64
	for _, t := range truth.Tables {
		rows += t.Read
	}
	tmp, err := os.MkdirTemp("", "hub-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	key := filepath.Join(tmp, "key")
	if err := os.WriteFile(key, []byte("bench-key-0123456789abcdef0123456789"), 0o600); err != nil {
		return err
	}
	// Like for like with the baseline: without the engine tables, whose
	// cost the row "with engine tables" shows (publish's default).
	args := func(lake string, engineTables ...bool) []string {
		return []string{"ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--dataset", "bench", "--lake", lake, "--key-file", key,
			fmt.Sprintf("--engine-tables=%t", len(engineTables) > 0 && engineTables[0])}
	}
	type result struct {
		name string
		m    measure
	}
	var results []result
	fmt.Fprintln(c.App.ErrWriter, "bench: hub ingest → deid → publish, local lake")
	m, err := best(nil, args(filepath.Join(tmp, "lake"))...)
	if err != nil {
		return err
	}
	results = append(results, result{"hub → local lake", m})
	fmt.Fprintln(c.App.ErrWriter, "bench: the same, with the engine tables (publish's default)")
	if m, err = best(nil, args(filepath.Join(tmp, "lake-engine"), true)...); err != nil {
		return err
	}
	results = append(results, result{"hub → local lake, with engine tables", m})
	if bin := miniotest.Binary(); bin != "" {
		srv, stop, err := miniotest.Launch(bin, filepath.Join(tmp, "minio"))
		if err != nil {
			return err
		}
		defer stop()
		bucket, err := srv.MakeBucket(c.Context)
		if err != nil {
			return err
		}
		env := []string{"AWS_ACCESS_KEY_ID=" + srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + srv.SecretKey, "HUB_S3_ENDPOINT=" + srv.Endpoint, "HUB_S3_TLS=false"}
		fmt.Fprintln(c.App.ErrWriter, "bench: hub ingest → deid → publish, MinIO")
		m, err := best(env, args("s3://"+bucket+"/lake")...)
		if err != nil {
			return err
		}
		results = append(results, result{"hub → MinIO (same machine)", m})
	} else {
		fmt.Fprintln(c.App.ErrWriter, "bench: no bin/minio (make minio): skipping the MinIO run")
	}
	fmt.Fprintln(c.App.ErrWriter, "bench: DuckDB pipeline baseline")
	out := filepath.Join(tmp, "duck")
	os.MkdirAll(out, 0o755)
	baseline, baseName := "duckdb-pipeline", "DuckDB read_csv, anti-join, sha256, COPY"
	if format == ingest.FHIR {
		baseline, baseName = "duckdb-fhir-pipeline", "DuckDB read_ndjson, joins, sha256, COPY"
	}
	duck, err := best(nil, "bench", baseline, "--extract", dir, "--out", out)
	if err != nil {
		return err
	}
	w := c.App.Writer
	fmt.Fprintf(w, "extract: %d rows, %.0f MB of %s\n\n", rows, float64(size)/1e6, map[ingest.Format]string{ingest.CSV: "CSV", ingest.FHIR: "NDJSON"}[format])
	fmt.Fprintf(w, "%-42s %9s %12s %12s %10s\n", "", "seconds", "rows/s", "peak RSS MB", "vs DuckDB")
	base := float64(rows) / duck.seconds
	for _, r := range results {
		fmt.Fprintf(w, "%-42s %9.2f %12.0f %12.0f %9.2fx\n", r.name, r.m.seconds, float64(rows)/r.m.seconds, r.m.rssMB, float64(rows)/r.m.seconds/base)
	}
	fmt.Fprintf(w, "%-42s %9.2f %12.0f %12.0f %9.2fx\n", baseName, duck.seconds, base, duck.rssMB, 1.0)
	return nil
}
