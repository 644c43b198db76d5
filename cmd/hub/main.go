// Command hub is the research data hub's single binary: it generates
// synthetic extracts, ingests them with the patient opt-out applied, and
// (as the later stages land) de-identifies, publishes and answers cohort
// queries. It wires packages together and holds no business logic.
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
		os.Exit(1)
	}
}
