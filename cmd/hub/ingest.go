package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/urfave/cli/v2"
)

func ingestCommand() *cli.Command {
	return &cli.Command{
		Name:  "ingest",
		Usage: "ingest an extract, apply the opt-out, de-identify and publish a dataset version",
		Description: "Reads a CSV or FHIR R4 bulk NDJSON extract folder (gzip files too), quarantines bad rows\n" +
			"by file, line and reason, drops every row of patients who opted out (National Data\n" +
			"Opt-out list, type 1 dissent), de-identifies the rest in memory and publishes a new\n" +
			"version of --dataset to --lake. With --check it stops after ingest and prints the report.\n" +
			"The report and the quarantine list hold counts, line numbers and reasons, never a value.\n\n" +
			"Publishing refuses (exit 4, nothing written) when the opt-out list is missing, unreadable,\n" +
			"empty or older than --optouts-max-age, when more than --max-quarantine percent of a table\n" +
			"is quarantined, or when no patient, or none of a table the previous version had, is kept.\n" +
			"--override CHECK passes one check by; the manifest and the audit log record it.\n\n" +
			"Example:\n  hub ingest --extract ./extract --optouts ndop.txt --dataset gp --key-file key",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "extract", Required: true, EnvVars: []string{"HUB_EXTRACT"}, Usage: "extract folder, s3://bucket/prefix landing area, or a FHIR server's base URL (https://HOST/fhir, or .../Group/ID) to pull a Bulk Data export from"},
			&cli.StringFlag{Name: "landing", EnvVars: []string{"HUB_LANDING"}, Usage: "with an --extract URL: the folder, or s3://bucket/prefix landing area, to keep the pulled export in (the same folder resumes a pull)"},
			&cli.StringFlag{Name: "landing-cache", EnvVars: []string{"HUB_LANDING_CACHE"}, Usage: "with --landing s3://…: the local folder the pull downloads into (and resumes from) before its files are copied to S3"},
			&cli.StringFlag{Name: "since", Usage: "with an --extract URL: pull only what changed since an instant, or since the --dataset's last pull (last), merged into that pull's export"},
			&cli.IntFlag{Name: "fhir-ahead", Usage: "with an --extract URL: files to download ahead, in parallel, of the one ingest reads (up to 3): only for a slow link, where one connection leaves ingest waiting; on a fast one they are written and read back for nothing"},
			&cli.StringFlag{Name: "fhir-client-id", EnvVars: []string{"HUB_FHIR_CLIENT_ID"}, Usage: "with an --extract URL: the hub's client id at the server (SMART Backend Services)"},
			&cli.StringFlag{Name: "fhir-key-file", EnvVars: []string{"HUB_FHIR_KEY_FILE"}, Usage: "with an --extract URL: the private key that `hub fhir keygen` wrote"},
			&cli.StringFlag{Name: "optouts", Required: true, EnvVars: []string{"HUB_OPTOUTS"}, Usage: "National Data Opt-out list, one NHS number a line (an empty file if none)"},
			&cli.BoolFlag{Name: "check", Usage: "run ingest alone and print the report"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
			&cli.StringFlag{Name: "report", Usage: "also write the JSON report to this file"},
			&cli.StringFlag{Name: "quarantine", Usage: "write the quarantine list (JSON lines: table, file, line, reason) to this file"},
			&cli.IntFlag{Name: "workers", Usage: "parsing workers (default: one per core)"},
			&cli.StringFlag{Name: "dataset", EnvVars: []string{"HUB_DATASET"}, Usage: "name of the dataset to publish a version of"},
			&cli.StringFlag{Name: "lake", Value: "./lake", EnvVars: []string{"HUB_LAKE"}, Usage: "the lake: a local folder or s3://bucket/prefix"},
			&cli.StringFlag{Name: "key-file", EnvVars: []string{"HUB_PSEUDONYM_KEY_FILE"}, Usage: "file holding the pseudonymisation key (at least 32 random bytes, raw or hex)"},
			&cli.StringFlag{Name: "policy", EnvVars: []string{"HUB_DEID_POLICY"}, Usage: "de-identification policy (JSON; default: the safe defaults in docs/deid-policy.md)"},
			&cli.StringFlag{Name: "optouts-date", EnvVars: []string{"HUB_OPTOUTS_DATE"}, Usage: "date of the opt-out list, YYYY-MM-DD (default: the file's modification date)"},
			&cli.StringFlag{Name: "optouts-max-age", Value: "31d", EnvVars: []string{"HUB_OPTOUTS_MAX_AGE"}, Usage: "refuse to publish with an opt-out list older than this (days as 31d, or a Go duration)"},
			&cli.BoolFlag{Name: "engine-tables", Value: true, EnvVars: []string{"HUB_ENGINE_TABLES"}, Usage: "write the cohort engine's tables beside the version's (engine/: an integer patient key, events sorted by code, also as Iceberg tables), so engines read them as they are and hub serve loads them without a join or a sort; --engine-tables=false publishes without them (hub serve then derives them when it loads the version)"},
			&cli.Float64Flag{Name: "max-quarantine", Value: 100 * pipeline.DefaultMaxQuarantine, EnvVars: []string{"HUB_MAX_QUARANTINE"}, Usage: "refuse to publish when more than this percentage of any table is quarantined"},
			&cli.StringSliceFlag{Name: "override", Usage: "publish despite a failed safety check, recorded in the manifest and the audit log: " + checkNames()},
			&cli.StringFlag{Name: "state", EnvVars: []string{"HUB_STATE"}, Usage: "record the publish in the audit log of this server state folder"},
		}, s3Flags()...),
		Action: func(c *cli.Context) error {
			if !c.Bool("check") {
				return publish(c)
			}
			rep, err := runIngest(c, func(ctx context.Context, t ingest.Table, rec arrow.RecordBatch) error {
				rec.Release()
				return nil
			})
			if err != nil {
				return err
			}
			if path := c.String("report"); path != "" {
				if err := writeFileWith(path, rep.WriteJSON); err != nil {
					return err
				}
			}
			if c.Bool("json") {
				return rep.WriteJSON(c.App.Writer)
			}
			return rep.WriteText(c.App.Writer)
		},
	}
}

// startProcs is GOMAXPROCS as the process started.
var startProcs = runtime.GOMAXPROCS(0)

// ingestOptions loads the opt-out list and builds ingest's options from
// the command's flags. The caller closes the quarantine file via done.
func ingestOptions(c *cli.Context) (opts ingest.Options, done func(), err error) {
	f, err := os.Open(c.String("optouts"))
	if err != nil {
		return opts, nil, fmt.Errorf("open opt-out list: %w (ingest needs the current National Data Opt-out list; nothing was published)", err)
	}
	defer f.Close()
	optouts, err := ingest.LoadOptOuts(c.Context, f)
	if err != nil {
		return opts, nil, fmt.Errorf("%w (nothing was published)", err)
	}
	opts = ingest.Options{OptOuts: optouts, Workers: c.Int("workers"), Logger: logger(c)}
	if loc := c.String("extract"); opts.Workers == 0 && (strings.HasPrefix(loc, "http://") || strings.HasPrefix(loc, "https://")) {
		// A streamed pull's pump, writers and reader get a processor of
		// the scheduler's beside ingest's workers (one per core), which
		// otherwise keep them waiting for their time slices. Measured on
		// 2 cores, pulling the 1 M-patient export over loopback: 10.4-11.3
		// s against 11.8-12.7 s.
		opts.Workers = startProcs
		runtime.GOMAXPROCS(startProcs + 1)
	}
	done = func() {}
	if isTerminal(os.Stderr) {
		opts.Progress = os.Stderr
	}
	if path := c.String("quarantine"); path != "" {
		q, err := os.Create(path)
		if err != nil {
			return opts, nil, fmt.Errorf("create quarantine list: %w", err)
		}
		done = func() { q.Close() }
		opts.Quarantine = q
	}
	return opts, done, nil
}

// runIngest runs ingest alone with the command's flags.
func runIngest(c *cli.Context, emit ingest.Emit) (*ingest.Report, error) {
	opts, done, err := ingestOptions(c)
	if err != nil {
		return nil, err
	}
	defer done()
	src, pulled, err := extractSource(c)
	if err != nil {
		return nil, err
	}
	defer pulled.Close()
	rep, err := ingest.Run(c.Context, src, opts, emit)
	if err != nil {
		return nil, fmt.Errorf("ingest %s: %w", c.String("extract"), err)
	}
	return rep, nil
}

func writeFileWith(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// checkNames lists the safety checks that --override takes.
func checkNames() string {
	names := make([]string, len(pipeline.Checks))
	for i, c := range pipeline.Checks {
		names[i] = string(c)
	}
	return strings.Join(names, ", ")
}

// parseAge reads a maximum age: whole days as "31d", or a Go duration.
func parseAge(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n <= 0 {
			return 0, usageError{fmt.Errorf("--optouts-max-age %q: want whole days such as 31d", s)}
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, usageError{fmt.Errorf("--optouts-max-age %q: want days such as 31d or a duration such as 720h", s)}
	}
	return d, nil
}

// overrides reads --override, refusing a name that is not a check.
func overrides(c *cli.Context) ([]pipeline.Check, error) {
	var out []pipeline.Check
	for _, v := range c.StringSlice("override") {
		for _, name := range strings.Split(v, ",") {
			ch := pipeline.Check(strings.TrimSpace(name))
			if !slices.Contains(pipeline.Checks, ch) {
				return nil, usageError{fmt.Errorf("--override %q: not a check; the checks are %s", name, checkNames())}
			}
			out = append(out, ch)
		}
	}
	return out, nil
}
