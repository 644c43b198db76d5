package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/bench"
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
		},
		Subcommands: []*cli.Command{{
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
func child(c *cli.Context, args ...string) (measure, error) {
	self, err := os.Executable()
	if err != nil {
		return measure{}, err
	}
	cmd := exec.CommandContext(c.Context, self, args...)
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
	dir := filepath.Join(c.String("cache"), fmt.Sprintf("csv-%d-%d", n, c.Uint64("seed")))
	if _, err := os.Stat(filepath.Join(dir, "truth.json")); err != nil {
		fmt.Fprintf(c.App.ErrWriter, "bench: synthesising %d patients into %s (once; cached)\n", n, dir)
		// A clean extract, so that the baseline's read_csv accepts every file.
		if _, err := synth.Generate(c.Context, dir, synth.Options{Patients: n, Seed: c.Uint64("seed"), Format: ingest.CSV}); err != nil {
			return err
		}
	}
	var size int64
	for _, t := range ingest.Tables {
		if st, err := os.Stat(filepath.Join(dir, t.String()+".csv")); err == nil {
			size += st.Size()
		}
	}
	best := func(args ...string) (measure, error) {
		var b measure
		for i := 0; i < max(1, c.Int("runs")); i++ {
			m, err := child(c, args...)
			if err != nil {
				return m, err
			}
			if i == 0 || m.seconds < b.seconds {
				b = m
			}
		}
		return b, nil
	}
	fmt.Fprintln(c.App.ErrWriter, "bench: hub ingest --check")
	hub, err := best("ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--check", "--json")
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
	duck, err := best("bench", "duckdb-baseline", "--extract", dir)
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
