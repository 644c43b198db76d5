package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nhs-hub/hub/ingest"
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
			"The report and the quarantine list hold counts, line numbers and reasons, never a value.",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "extract", Required: true, EnvVars: []string{"HUB_EXTRACT"}, Usage: "extract folder, or s3://bucket/prefix landing area"},
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
			&cli.StringFlag{Name: "optouts-date", Usage: "date of the opt-out list (default: the file's modification date)"},
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

// ingestOptions loads the opt-out list and builds ingest's options from
// the command's flags. The caller closes the quarantine file via done.
func ingestOptions(c *cli.Context) (opts ingest.Options, done func(), err error) {
	f, err := os.Open(c.String("optouts"))
	if err != nil {
		return opts, nil, fmt.Errorf("open opt-out list: %w", err)
	}
	defer f.Close()
	optouts, err := ingest.LoadOptOuts(c.Context, f)
	if err != nil {
		return opts, nil, err
	}
	opts = ingest.Options{OptOuts: optouts, Workers: c.Int("workers"), Logger: logger(c)}
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
	src, err := extractSource(c)
	if err != nil {
		return nil, err
	}
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
