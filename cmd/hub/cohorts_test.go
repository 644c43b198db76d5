package main

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/internal/testkey"
)

// TestGovernedQuery: the README's path through the CLI and a live server.
// Publish a dataset (recorded in the audit log), add users, submit a
// request, approve it by two DAC members, query within the grant, show the
// budget, list and verify the audit log.
func TestGovernedQuery(t *testing.T) {
	dir := t.TempDir()
	extract, lake, state := filepath.Join(dir, "x"), filepath.Join(dir, "lake"), filepath.Join(dir, "state")
	if _, err := runHub(t, "synth", "--patients", "2000", "--seed", "3", "--out", extract); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, testkey.Bytes(11), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runHub(t, "ingest", "--extract", extract, "--optouts", filepath.Join(extract, "optouts.txt"),
		"--dataset", "demo", "--lake", lake, "--key-file", key, "--state", state); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]string{}
	for _, u := range [][2]string{{"rosa", "researcher"}, {"dina", "dac"}, {"dev", "dac"}, {"ada", "admin"}} {
		tok, err := runHub(t, "user", "add", "--state", state, "--role", u[1], u[0])
		if err != nil {
			t.Fatal(err)
		}
		tokens[u[0]] = filepath.Join(dir, u[0]+".token")
		if err := os.WriteFile(tokens[u[0]], []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := runHub(t, "user", "add", "--state", state, "--role", "researcher", "--token-days", "1", "rosa"); err == nil {
		t.Fatal("a user added twice")
	}
	// The server runs in-process (two cli.Apps at once would race on
	// urfave/cli's global help flag); it is what `hub serve` runs, and it
	// shares the state folder with the commands above and below.
	gov, err := governance.Open(state, governance.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer gov.Close()
	store, err := file.Open(lake)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := cohorts.New(cohorts.Config{Lake: catalog.NewLake(store), State: state, Projects: gov})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	srv := httptest.NewServer(api.Handler(gov, svc, nil))
	defer srv.Close()
	t.Setenv("HUB_SERVER", srv.URL)
	as := func(who string, args ...string) (string, error) {
		t.Helper()
		n := 2 // after the command and subcommand
		if args[0] == "query" || args[0] == "budget" {
			n = 1
		}
		return runHub(t, append(append(append([]string{}, args[:n]...), "--token-file", tokens[who]), args[n:]...)...)
	}

	out, err := as("rosa", "request", "submit", "--wait", "30s", "--file", filepath.Join("..", "..", "docs", "examples", "request.json"))
	if err != nil || !strings.Contains(out, "req-1") || !strings.Contains(out, "[submitted]") {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	if _, err := as("rosa", "dac", "approve", "--reason", "mine", "req-1"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a researcher approves: %v", err)
	}
	if out, err = as("dina", "dac", "list"); err != nil || !strings.Contains(out, "req-1") {
		t.Fatalf("dac list: %v\n%s", err, out)
	}
	if _, err := as("dina", "dac", "review", "req-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := as("dina", "dac", "approve", "--reason", "proportionate", "--epsilon", "2", "--min-cohort", "20", "req-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := as("dina", "dac", "approve", "--reason", "again", "req-1"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("approving twice: %v", err)
	}
	out, err = as("dev", "dac", "approve", "--reason", "agreed", "--conditions", "share the code", "req-1")
	if err != nil || !strings.Contains(out, "approved_with_conditions") || !strings.Contains(out, "ε 2 (per query 2)") {
		t.Fatalf("second approval: %v\n%s", err, out)
	}

	t.Setenv("HUB_PROJECT", "t2d-audit")
	out, err = as("rosa", "query", "--file", filepath.Join("..", "..", "docs", "examples", "t2d-by-age.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"demo@1", "ε 1 charged", "age_band", "95% interval", "suppressed", "mean age"} {
		if !strings.Contains(out, want) {
			t.Errorf("query output lacks %q:\n%s", want, out)
		}
	}
	out, err = as("rosa", "query", "--json", "--file", filepath.Join("..", "..", "docs", "examples", "count-everyone.json"))
	if err != nil {
		t.Fatal(err)
	}
	var a struct {
		Measures []map[string]any `json:"measures"`
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil || len(a.Measures) != 1 || a.Measures[0]["value"] == nil {
		t.Fatalf("--json answer %s (%v)", out, err)
	}
	if _, err := as("rosa", "query", "--file", filepath.Join("..", "..", "docs", "examples", "count-everyone.json")); err != nil {
		t.Fatal(err) // a repeat: free
	}
	out, err = as("dina", "budget", "--json")
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
	// The strictest of the two approvals' release rules, defaults filling
	// what neither set.
	if r, _ := b["release_rules"].(map[string]any); r["suppress_below"] != 10.0 || r["round_to"] != 5.0 || r["min_cohort"] != 20.0 {
		t.Errorf("release rules %v", b["release_rules"])
	}
	if _, err := as("rosa", "query", "--project", "other", "--file", filepath.Join("..", "..", "docs", "examples", "t2d-by-age.json")); err == nil ||
		!strings.Contains(err.Error(), "404") {
		t.Errorf("an unknown project: %v", err)
	}
	bySex := filepath.Join(dir, "by-sex.json")
	os.WriteFile(bySex, []byte(`{"dataset": "demo", "measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 1}`), 0o600)
	if _, err := as("rosa", "query", "--file", bySex); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("over the budget: %v", err)
	}

	// The audit log: the publish, the decisions, the queries; intact.
	out, err = as("ada", "audit", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"dataset.publish", "demo@1", "request.approve", "query", "refused", "ε 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit list lacks %q:\n%s", want, out)
		}
	}
	if _, err := as("rosa", "audit", "list"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("a researcher lists the audit log: %v", err)
	}
	out, err = runHub(t, "audit", "verify", "--state", state)
	if err != nil || !strings.Contains(out, "audit log intact") {
		t.Fatalf("verify: %v %s", err, out)
	}
	first, _, _ := strings.Cut(out, "\n")
	head := strings.Fields(first)[len(strings.Fields(first))-1]
	if _, err := runHub(t, "audit", "verify", "--state", state, "--expect-head", head); err != nil {
		t.Fatal(err)
	}
	// The budget ledgers are checked against the chain: a charge the
	// chain lacks, and charges the ledger lost, are named.
	if !strings.Contains(out, "budget ledgers agree with it: 1 ledgers, 2 charges") {
		t.Errorf("verify did not cross-check the ledger: %s", out)
	}
	ledger := filepath.Join(state, "ledger", "t2d-audit.jsonl")
	orig, err := os.ReadFile(ledger)
	if err != nil {
		t.Fatal(err)
	}
	extra := strings.Replace(string(orig[:bytes.IndexByte(orig, '\n')+1]), `"query_sha256":"`, `"query_sha256":"f00d`, 1)
	os.WriteFile(ledger, append(append([]byte(nil), orig...), extra...), 0o600)
	if _, err := runHub(t, "audit", "verify", "--state", state); err == nil || !strings.Contains(err.Error(), "1 charges are not in the audit log") {
		t.Errorf("a ledger charge missing from the chain: %v", err)
	}
	os.WriteFile(ledger, nil, 0o600)
	if _, err := runHub(t, "audit", "verify", "--state", state); err == nil || !strings.Contains(err.Error(), "2 of the audit log's charges are not in the ledger") {
		t.Errorf("an emptied ledger: %v", err)
	}
	os.WriteFile(ledger, orig, 0o600)
	// The head that `hub serve` writes to the lake is checked by
	// `audit verify --lake`; cutting the log's last entry then fails.
	lakeStore, err := file.Open(lake)
	if err != nil {
		t.Fatal(err)
	}
	res, err := governance.Verify(state, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := governance.WriteCheckpoint(t.Context(), lakeStore, res.Head); err != nil {
		t.Fatal(err)
	}
	if out, err := runHub(t, "audit", "verify", "--state", state, "--lake", lake); err != nil || !strings.Contains(out, "all 1 checkpoints") {
		t.Fatalf("verify against the lake: %v %s", err, out)
	}
	auditLog, _ := os.ReadFile(filepath.Join(state, "audit.jsonl"))
	cut := auditLog[:bytes.LastIndexByte(auditLog[:len(auditLog)-1], '\n')+1]
	os.WriteFile(filepath.Join(state, "audit.jsonl"), cut, 0o600)
	os.Remove(filepath.Join(state, "audit.head"))
	if _, err := runHub(t, "audit", "verify", "--state", state); err != nil {
		t.Fatalf("a cut log with no head file passes the chain alone: %v", err)
	}
	if _, err := runHub(t, "audit", "verify", "--state", state, "--lake", lake); err == nil || !strings.Contains(err.Error(), "does not contain the expected head") {
		t.Fatalf("a cut log against the lake's checkpoint: %v", err)
	}
	os.WriteFile(filepath.Join(state, "audit.jsonl"), auditLog, 0o600)
	log := filepath.Join(state, "audit.jsonl")
	data, _ := os.ReadFile(log)
	os.WriteFile(log, []byte(strings.Replace(string(data), `"actor":"dev"`, `"actor":"eve"`, 1)), 0o600)
	if out, err := runHub(t, "audit", "verify", "--state", state); err == nil || !strings.Contains(err.Error(), "tampered") {
		t.Fatalf("an edited entry verifies: %v %s", err, out)
	}
}

// hub codelist import stores an OpenCodelists download once per version
// and hub codelist list shows it; a changed version and a CTV3 list are
// refused.
func TestCodelistCommands(t *testing.T) {
	state := t.TempDir()
	fixture := filepath.Join("..", "..", "cohorts", "testdata", "codelists", "nhsd-primary-care-domain-refsets-dmtype2_cod.csv")
	for range 2 { // the same codes again: accepted
		out, err := runHub(t, "codelist", "import", "--state", state, "--name", "nhsd-primary-care-domain-refsets/dmtype2_cod", "--version", "20250912", fixture)
		if err != nil || !strings.Contains(out, "nhsd-primary-care-domain-refsets/dmtype2_cod@20250912: 23 snomed codes") {
			t.Fatalf("import: %v\n%s", err, out)
		}
	}
	changed := filepath.Join(t.TempDir(), "changed.csv")
	os.WriteFile(changed, []byte("code,term\n44054006,Diabetes mellitus type 2\n"), 0o600)
	if _, err := runHub(t, "codelist", "import", "--state", state, "--name", "nhsd-primary-care-domain-refsets/dmtype2_cod", "--version", "20250912", changed); err == nil || !strings.Contains(err.Error(), "new version") {
		t.Errorf("a changed version: %v", err)
	}
	ctv3 := filepath.Join(t.TempDir(), "ctv3.csv")
	os.WriteFile(ctv3, []byte("code,term\nH33..,Asthma\n"), 0o600)
	if _, err := runHub(t, "codelist", "import", "--state", state, "--name", "opensafely/asthma-diagnosis", "--version", "1", ctv3); err == nil || !strings.Contains(err.Error(), "--system") {
		t.Errorf("a CTV3 list: %v", err)
	}
	out, err := runHub(t, "codelist", "list", "--state", state, "--json")
	var lists []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &lists) != nil || len(lists) != 1 || lists[0]["count"] != 23.0 || lists[0]["codes"] != nil {
		t.Errorf("list: %v\n%s", err, out)
	}
	// The catalog shows the code lists beside the datasets.
	out, err = runHub(t, "catalog", "list", "--lake", t.TempDir(), "--state", state)
	if err != nil || !strings.Contains(out, "no datasets") || !strings.Contains(out, "nhsd-primary-care-domain-refsets/dmtype2_cod@20250912  snomed  23") {
		t.Errorf("catalog list: %v\n%s", err, out)
	}
	var listed struct{ Codelists []map[string]any }
	if out, err = runHub(t, "catalog", "list", "--lake", t.TempDir(), "--state", state, "--json"); err != nil || json.Unmarshal([]byte(out), &listed) != nil || len(listed.Codelists) != 1 {
		t.Errorf("catalog list --json: %v\n%s", err, out)
	}
	// One audit entry: the version's first import, not the second.
	out, err = runHub(t, "audit", "verify", "--state", state)
	if err != nil || !strings.Contains(out, "intact: 1 entries") {
		t.Errorf("audit: %v\n%s", err, out)
	}
}

// A rate prints a row an interval and cell, suppressed cells marked; the
// unknown counts follow the measures.
func TestPrintRate(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	a := &cohorts.Answer{Dataset: "demo", Version: 1, QuerySHA256: "0123456789abcdef", Epsilon: 1, Measures: []cohorts.Result{{
		Kind: "rate", Name: "HbA1c", Epsilon: 1, By: []string{"sex"}, Intervals: []cohorts.RateInterval{
			{From: "2023-01-01", To: "2023-03-31", Cells: []cohorts.RateCell{
				{Key: map[string]string{"sex": "female"}, Numerator: f(45), Denominator: f(90), Value: f(0.5), CILow: f(0.41), CIHigh: f(0.59)},
				{Key: map[string]string{"sex": "other"}, Suppressed: true}}}}}},
		Unknowns: []cohorts.UnknownCount{{Attribute: "region", Criteria: []string{"criteria.not"}, Epsilon: 0.5, Value: f(120), CILow: f(110), CIHigh: f(130)}}}
	var b strings.Builder
	printAnswer(&b, a)
	for _, want := range []string{"2023-01-01", "female", "45", "90", "0.500", "0.410 – 0.590", "other", "suppressed", "region", "120", "criteria.not"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}
