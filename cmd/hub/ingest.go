package main

import (
	"context"
	"errors"
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
		Usage: "validate an extract and apply the patient opt-out",
		Description: "Reads a CSV or FHIR R4 bulk NDJSON extract folder (gzip files too), quarantines bad rows\n" +
			"by file, line and reason, drops every row of patients who opted out (National Data\n" +
			"Opt-out list, type 1 dissent) and prints the ingest report. With --check nothing is\n" +
			"written but the report (and the quarantine list, if asked for). The report and the\n" +
			"quarantine list hold counts, line numbers and reasons, never a row's values.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "extract", Required: true, EnvVars: []string{"HUB_EXTRACT"}, Usage: "extract folder"},
			&cli.StringFlag{Name: "optouts", Required: true, EnvVars: []string{"HUB_OPTOUTS"}, Usage: "National Data Opt-out list, one NHS number a line (an empty file if none)"},
			&cli.BoolFlag{Name: "check", Usage: "run ingest alone and print the report"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
			&cli.StringFlag{Name: "report", Usage: "also write the JSON report to this file"},
			&cli.StringFlag{Name: "quarantine", Usage: "write the quarantine list (JSON lines: table, file, line, reason) to this file"},
			&cli.IntFlag{Name: "workers", Usage: "parsing workers (default: one per core)"},
		},
		Action: func(c *cli.Context) error {
			if !c.Bool("check") {
				return errors.New("publishing a dataset arrives with the de-identification stage; run with --check to validate the extract and print the report")
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

// runIngest loads the opt-out list and runs ingest with the command's flags.
func runIngest(c *cli.Context, emit ingest.Emit) (*ingest.Report, error) {
	f, err := os.Open(c.String("optouts"))
	if err != nil {
		return nil, fmt.Errorf("open opt-out list: %w", err)
	}
	defer f.Close()
	optouts, err := ingest.LoadOptOuts(c.Context, f)
	if err != nil {
		return nil, err
	}
	opts := ingest.Options{OptOuts: optouts, Workers: c.Int("workers"), Logger: logger(c)}
	if isTerminal(os.Stderr) {
		opts.Progress = os.Stderr
	}
	if path := c.String("quarantine"); path != "" {
		q, err := os.Create(path)
		if err != nil {
			return nil, fmt.Errorf("create quarantine list: %w", err)
		}
		defer q.Close()
		opts.Quarantine = q
	}
	if _, err := os.Stat(c.String("extract")); err != nil {
		return nil, fmt.Errorf("extract folder: %w", err)
	}
	rep, err := ingest.Run(c.Context, ingest.Dir(c.String("extract")), opts, emit)
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
