package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"

	"github.com/urfave/cli/v2"
)

var profileStop func()

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "hub",
		EnableBashCompletion: true,
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{fmt.Errorf("%w (see hub %s --help)", err, c.Command.FullName())}
		},
		Usage: "a research data hub for NHS regional shared care records",
		Description: "hub ingests LHCRE extracts with the patient opt-out applied, de-identifies them into\n" +
			"versioned datasets and answers aggregate cohort questions with differential privacy.\n\n" +
			"Try: hub synth --out /tmp/x && hub ingest --extract /tmp/x --optouts /tmp/x/optouts.txt --check",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-level", Value: "warn", EnvVars: []string{"HUB_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "cpuprofile", Hidden: true, Usage: "write a CPU profile to this file"},
		},
		Before: func(c *cli.Context) error {
			if p := c.String("cpuprofile"); p != "" {
				f, err := os.Create(p)
				if err != nil {
					return err
				}
				profileStop = func() { pprof.StopCPUProfile(); f.Close() }
				return pprof.StartCPUProfile(f)
			}
			return nil
		},
		After: func(c *cli.Context) error {
			if profileStop != nil {
				profileStop()
			}
			return nil
		},
		Commands: []*cli.Command{synthCommand(), ingestCommand(), catalogCommand(), serveCommand(), userCommand(), requestCommand(), dacCommand(), queryCommand(), codelistCommand(), budgetCommand(), auditCommand(), keyCommand(), benchCommand(), fhirCommand(), completionCommand()},
	}
	usageErrors(app.Commands)
	return app
}

// usageErrors makes a bad flag on any command a usageError (exit code 2).
func usageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = func(ctx *cli.Context, err error, _ bool) error {
			return usageError{fmt.Errorf("%w (see %s --help)", err, ctx.Command.HelpName)}
		}
		usageErrors(c.Subcommands)
	}
}

// logger builds the logger from the global flags. Logs go to stderr and
// carry only counts, table names and durations.
func logger(c *cli.Context) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		level = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// isTerminal reports whether f is a terminal, where progress is shown.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
