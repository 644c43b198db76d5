//go:build chdb

package main

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/governance"
)

// hub serve --engine clickhouse answers a project's query from ClickHouse:
// the server (this test binary as hub, with libchdb.so) loads the version
// into STATE/engines/clickhouse, and hub query's answer counts everyone
// within its interval.
func TestChdbServeEngine(t *testing.T) {
	dir := t.TempDir()
	extract, lake, state := filepath.Join(dir, "x"), filepath.Join(dir, "lake"), filepath.Join(dir, "state")
	if _, err := runHub(t, "synth", "--patients", "3000", "--seed", "4", "--out", extract); err != nil {
		t.Fatal(err)
	}
	if out, err := runHub(t, "ingest", "--extract", extract, "--optouts", filepath.Join(extract, "optouts.txt"),
		"--dataset", "demo", "--lake", lake, "--key-file", testKeyFile(t), "--state", state); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := runHub(t, "catalog", "show", "--lake", lake, "--json", "demo")
	if err != nil {
		t.Fatal(err)
	}
	gov, err := governance.Open(state, governance.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := approvedProject(gov, "ch", "demo", 10)
	gov.Close()
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	self, _ := os.Executable()
	cmd := exec.Command(self, "serve", "--engine", "clickhouse", "--lake", lake, "--state", state, "--addr", addr,
		"--preload", "demo", "--checkpoint-every", "0")
	cmd.Env = append(os.Environ(), "HUB_TEST_AS_MAIN=1")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	loaded := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var log strings.Builder
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if strings.Contains(sc.Text(), "loading demo") {
				loaded <- log.String()
			}
		}
		loaded <- log.String()
	}()
	select {
	case l := <-loaded:
		if !strings.Contains(l, "loading demo") {
			t.Fatalf("hub serve --engine clickhouse stopped:\n%s", l)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("hub serve did not load the dataset in 2 minutes")
	}
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 2*time.Minute {
			t.Fatal("hub serve is not listening")
		}
	}
	if dbs, _ := filepath.Glob(filepath.Join(state, "engines", "clickhouse", "*")); len(dbs) == 0 {
		t.Fatal("nothing in STATE/engines/clickhouse")
	}
	if ducks, _ := filepath.Glob(filepath.Join(state, "engines", "*.duckdb")); len(ducks) > 0 {
		t.Fatalf("a DuckDB engine file was loaded: %v", ducks)
	}
	t.Setenv("HUB_SERVER", "http://"+addr)
	t.Setenv("HUB_PROJECT", "ch")
	q := filepath.Join(dir, "q.json")
	os.WriteFile(q, []byte(`{"dataset": "demo", "measures": [{"kind": "count"}], "epsilon": 1}`), 0o600)
	ans, err := runHub(t, "query", "--token-file", tokFile, "--json", "--file", q)
	if err != nil {
		t.Fatalf("query: %v\n%s", err, ans)
	}
	var m catalog.Manifest
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	rows := m.Tables["patients"].Rows
	var a struct {
		Measures []struct {
			Value  float64 `json:"value"`
			CILow  float64 `json:"ci_low"`
			CIHigh float64 `json:"ci_high"`
		} `json:"measures"`
	}
	if err := json.Unmarshal([]byte(ans), &a); err != nil || len(a.Measures) != 1 {
		t.Fatalf("answer: %v\n%s", err, ans)
	}
	value, lo, hi := a.Measures[0].Value, a.Measures[0].CILow, a.Measures[0].CIHigh
	t.Logf("ClickHouse's count of everyone: %g [%g, %g]; the version has %d patients", value, lo, hi, rows)
	if float64(rows) < lo-50 || float64(rows) > hi+50 || value < float64(rows)*0.9 {
		t.Errorf("ClickHouse's answer %g [%g, %g], the version has %d patients", value, lo, hi, rows)
	}
}
