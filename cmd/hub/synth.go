package main

import (
	"fmt"
	"io"
	"os"

	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/synth"
	"github.com/urfave/cli/v2"
)

func synthCommand() *cli.Command {
	return &cli.Command{
		Name:  "synth",
		Usage: "write a synthetic LHCRE extract, opt-out list and ground truth",
		Description: "Writes patients, encounters, conditions, medications, observations, procedures,\n" +
			"immunisations and GP registrations (CSV, or a FHIR R4 bulk export in numbered parts whose\n" +
			"events name their patient by reference), optouts.txt (the National Data Opt-out list) and\n" +
			"truth.json (what ingest must report) into --out. Deterministic for a seed. Every patient\n" +
			"is synthetic.\n\nExample:\n  hub synth --patients 10000 --format fhir --out ./extract",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "patients", Value: 1000, Usage: "number of patients"},
			&cli.Uint64Flag{Name: "seed", Value: 1, Usage: "random seed; the same seed gives the same extract"},
			&cli.StringFlag{Name: "format", Value: "csv", Usage: "csv or fhir"},
			&cli.StringFlag{Name: "out", Required: true, Usage: "folder to write the extract into"},
			&cli.Float64Flag{Name: "fault-rate", Value: 0.01, Usage: "share of rows given a realistic fault (0 for a clean extract)"},
			&cli.BoolFlag{Name: "gzip", Usage: "gzip-compress the table files"},
			&cli.IntFlag{Name: "part-rows", Usage: "resources a FHIR part file holds before the next (default 250000)"},
			jsonFlag(),
		},
		Action: func(c *cli.Context) error {
			format, err := parseFormat(c.String("format"))
			if err != nil {
				return err
			}
			var progress io.Writer
			if isTerminal(os.Stderr) {
				progress = os.Stderr
			}
			truth, err := synth.Generate(c.Context, c.String("out"), synth.Options{
				Patients: c.Int("patients"), Seed: c.Uint64("seed"), Format: format,
				FaultRate: c.Float64("fault-rate"), Gzip: c.Bool("gzip"), Progress: progress, PartRows: c.Int("part-rows"),
			})
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(c.App.Writer, truth)
			}
			var events int64
			for name, t := range truth.Tables {
				if name != "patients" {
					events += t.Read
				}
			}
			fmt.Fprintf(c.App.Writer, "wrote a %s extract of %d patient rows and %d event rows to %s (opt-out list: optouts.txt; ground truth: truth.json)\n",
				format, truth.Tables["patients"].Read, events, c.String("out"))
			return nil
		},
	}
}

func parseFormat(s string) (ingest.Format, error) {
	switch s {
	case "csv":
		return ingest.CSV, nil
	case "fhir":
		return ingest.FHIR, nil
	}
	return 0, fmt.Errorf("unknown format %q: use csv or fhir", s)
}
