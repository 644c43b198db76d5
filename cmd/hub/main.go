// Command hub is the research data hub's single binary: it generates
// synthetic extracts, ingests them with the patient opt-out applied,
// de-identifies and publishes them, serves the governed cohort API, and is
// that API's command-line client. It wires packages together and holds no
// business logic. Exit codes: 0 done, 1 failed, 2 usage, 3 refused, 4 not
// published (a safety check failed).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newApp().RunContext(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "hub:", err)
		os.Exit(exitCode(err))
	}
}
