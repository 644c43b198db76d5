package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/bulktest"
	"github.com/urfave/cli/v2"
)

// bulkServerCommand serves a folder as a Bulk Data export (the strict
// test server) until stdin closes: hub bench --pull runs it as a child.
func bulkServerCommand() *cli.Command {
	return &cli.Command{
		Name: "bulk-server", Hidden: true, Usage: "serve --dir as a FHIR Bulk Data export until stdin closes (used by hub bench --pull)",
		Flags: []cli.Flag{&cli.StringFlag{Name: "dir", Required: true}},
		Action: func(c *cli.Context) error {
			tb := &serverTB{}
			srv := bulktest.New(tb, c.String("dir"))
			fmt.Fprintln(c.App.Writer, srv.Base())
			stop := make(chan os.Signal, 1)
			signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
			go func() { io.Copy(io.Discard, os.Stdin); stop <- syscall.SIGTERM }()
			<-stop
			tb.cleanup()
			if tb.failed {
				return fmt.Errorf("the bulk data server met an error")
			}
			return nil
		},
	}
}

// serverTB runs a bulktest.Server outside a test.
type serverTB struct {
	cleanups []func()
	failed   bool
}

func (t *serverTB) Error(args ...any) {
	t.failed = true
	fmt.Fprintln(os.Stderr, append([]any{"bulk data server:"}, args...)...)
}
func (t *serverTB) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }
func (t *serverTB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// benchPull measures issue 16's target: `hub ingest --check` of an export
// pulled from a Bulk Data server over loopback (streamed through ingest,
// landing in a folder) against the same files ingested from a folder, in
// alternating runs.
func benchPull(c *cli.Context, dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	server := exec.CommandContext(c.Context, self, "bench", "bulk-server", "--dir", dir)
	stdin, err := server.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := server.StdoutPipe()
	if err != nil {
		return err
	}
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		return err
	}
	defer func() {
		stdin.Close()
		server.Wait()
	}()
	base, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("the bulk data server did not start: %w", err)
	}
	base = strings.TrimSpace(base)
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "pull-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	optouts := filepath.Join(dir, "optouts.txt")
	type side struct {
		name string
		m    measure
		rep  ingest.Report
	}
	var folder, pull side
	folder.name, pull.name = "hub ingest --check, from the folder", "hub ingest --check, pulled over loopback"
	for i := range max(1, c.Int("runs")) {
		fmt.Fprintf(c.App.ErrWriter, "bench: run %d: from the folder\n", i+1)
		m, err := child(c, nil, "ingest", "--extract", dir, "--optouts", optouts, "--check", "--json")
		if err != nil {
			return err
		}
		if i == 0 || m.seconds < folder.m.seconds {
			folder.m = m
		}
		fmt.Fprintf(c.App.ErrWriter, "bench: run %d: pulled from %s\n", i+1, base)
		landing := filepath.Join(tmp, fmt.Sprint(i))
		m, err = child(c, nil, "ingest", "--extract", base, "--landing", landing, "--optouts", optouts, "--check", "--json")
		os.RemoveAll(landing)
		if err != nil {
			return err
		}
		if i == 0 || m.seconds < pull.m.seconds {
			pull.m = m
		}
	}
	for _, s := range []*side{&folder, &pull} {
		if err := json.Unmarshal(s.m.out, &s.rep); err != nil {
			return fmt.Errorf("read the ingest report: %w", err)
		}
	}
	var rows int64
	for name, t := range folder.rep.Tables {
		rows += t.Read
		if p := pull.rep.Tables[name]; p == nil || p.Read != t.Read || p.Kept != t.Kept {
			return fmt.Errorf("%s: the pull's report differs from the folder's", name)
		}
	}
	if folder.rep.Identity() != pull.rep.Identity() {
		return fmt.Errorf("the pulled files differ from the folder's (extract identity %s, folder %s)", pull.rep.Identity(), folder.rep.Identity())
	}
	w := c.App.Writer
	fmt.Fprintf(w, "export: %d rows\n\n", rows)
	fmt.Fprintf(w, "%-44s %9s %12s %12s\n", "", "seconds", "rows/s", "peak RSS MB")
	for _, s := range []side{folder, pull} {
		fmt.Fprintf(w, "%-44s %9.2f %12.0f %12.0f\n", s.name, s.m.seconds, float64(rows)/s.m.seconds, s.m.rssMB)
	}
	fmt.Fprintf(w, "\npull / folder: %.2fx the speed, %.2fx the peak RSS (issue 16's target: >= 0.8x the speed, <= 1x the RSS)\n",
		folder.m.seconds/pull.m.seconds, pull.m.rssMB/folder.m.rssMB)
	return nil
}
