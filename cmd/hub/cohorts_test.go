package main

import (
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/cohorts"
)

// TestServeQueryBudget: the README's path from a published dataset to a
// DP answer and the budget, through the CLI and a live server.
func TestServeQueryBudget(t *testing.T) {
	dir := t.TempDir()
	extract, lake, state := filepath.Join(dir, "x"), filepath.Join(dir, "lake"), filepath.Join(dir, "state")
	if _, err := runHub(t, "synth", "--patients", "2000", "--seed", "3", "--out", extract); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte(strings.Repeat("k", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runHub(t, "ingest", "--extract", extract, "--optouts", filepath.Join(extract, "optouts.txt"),
		"--dataset", "demo", "--lake", lake, "--key-file", key); err != nil {
		t.Fatal(err)
	}
	tok, err := runHub(t, "project", "create", "--state", state, "--epsilon", "2", "--datasets", "demo", "study")
	if err != nil {
		t.Fatal(err)
	}
	// The server runs in-process (two cli.Apps at once would race on
	// urfave/cli's global help flag); it is what `hub serve` runs.
	store, err := file.Open(lake)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := cohorts.New(cohorts.Config{Lake: catalog.NewLake(store), State: state})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	t.Setenv("HUB_TOKEN", strings.TrimSpace(tok))
	t.Setenv("HUB_SERVER", "http://"+addr)
	t.Setenv("HUB_PROJECT", "study")
	out, err := runHub(t, "query", "--wait", "30s", "--file", filepath.Join("..", "..", "docs", "examples", "t2d-by-age.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"demo@1", "ε 1 charged", "age_band", "95% interval", "suppressed", "mean age"} {
		if !strings.Contains(out, want) {
			t.Errorf("query output lacks %q:\n%s", want, out)
		}
	}
	out, err = runHub(t, "query", "--json", "--file", filepath.Join("..", "..", "docs", "examples", "count-everyone.json"))
	if err != nil {
		t.Fatal(err)
	}
	var a struct {
		Measures []map[string]any `json:"measures"`
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil || len(a.Measures) != 1 || a.Measures[0]["value"] == nil {
		t.Fatalf("--json answer %s (%v)", out, err)
	}
	if _, err := runHub(t, "query", "--file", filepath.Join("..", "..", "docs", "examples", "count-everyone.json"), "--project", "study"); err != nil {
		t.Fatal(err) // a repeat: free
	}
	out, err = runHub(t, "budget", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatal(err)
	}
	if b["epsilon_spent"] != 1.5 || b["epsilon_remaining"] != 0.5 || b["queries"] != 2.0 {
		t.Errorf("budget %v", b)
	}
	_, err = runHub(t, "query", "--file", filepath.Join("..", "..", "docs", "examples", "t2d-by-age.json"), "--project", "other")
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("another project's name: %v", err)
	}
}
