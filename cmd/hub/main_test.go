package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/synth"
	"github.com/nhs-hub/hub/internal/testkey"
)

func runHub(t *testing.T, args ...string) (string, error) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	err := app.RunContext(t.Context(), append([]string{"hub"}, args...))
	return out.String(), err
}

// The "done when": synth then ingest --check reports the
// generator's ground truth.
func TestSynthThenIngestMatchesTruth(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "10000", "--seed", "1", "--out", dir); err != nil {
		t.Fatal(err)
	}
	out, err := runHub(t, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--check", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rep ingest.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "truth.json"))
	if err != nil {
		t.Fatal(err)
	}
	var truth synth.Truth
	if err := json.Unmarshal(raw, &truth); err != nil {
		t.Fatal(err)
	}
	for name, want := range truth.Tables {
		got := rep.Tables[name]
		if got.Read != want.Read || got.Kept != want.Kept || got.OptedOut != want.OptedOut ||
			got.Quarantined != want.Quarantined || got.Excluded != want.Excluded {
			t.Errorf("%s: got %+v, want %+v", name, got, want)
		}
	}
	if rep.Patients != truth.Patients {
		t.Errorf("patients = %+v, want %+v", rep.Patients, truth.Patients)
	}
	if rep.Patients.OptedOutNDOP == 0 || rep.Patients.OptedOutType1 == 0 {
		t.Error("no opt-outs in a 10,000-patient extract")
	}
	// The human summary names the same figures.
	text, err := runHub(t, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--check")
	if err != nil || !strings.Contains(text, "opted out") {
		t.Fatalf("summary: %v\n%s", err, text)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"ingest", "--extract", dir, "--optouts", filepath.Join(dir, "none.txt"), "--check"}, "open opt-out list"},
		{[]string{"ingest", "--extract", filepath.Join(dir, "missing"), "--optouts", os.DevNull, "--check"}, "extract folder"},
		{[]string{"ingest", "--extract", dir, "--optouts", os.DevNull, "--check"}, "no extract found"},

		{[]string{"synth", "--out", dir, "--format", "xml"}, "unknown format"},
	}
	for _, tt := range tests {
		_, err := runHub(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("hub %v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}

func TestHelp(t *testing.T) {
	for _, cmd := range []string{"synth", "ingest", "bench"} {
		out, err := runHub(t, cmd, "--help")
		if err != nil || !strings.Contains(out, "USAGE") {
			t.Errorf("hub %s --help: %v\n%s", cmd, err, out)
		}
	}
}

func TestPublishErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "50", "--out", dir); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(t.TempDir(), "short.key")
	os.WriteFile(short, []byte("too short"), 0o600)
	lake := filepath.Join(t.TempDir(), "lake")
	base := []string{"ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--lake", lake}
	tests := []struct {
		args []string
		want string
	}{
		{append(base, "--dataset", "d"), "no pseudonymisation key"},
		{append(base, "--dataset", "d", "--key-file", short), "shorter than 32 bytes"},
		{append(base, "--dataset", "d", "--key-file", filepath.Join(dir, "missing")), "read key file"},
		{append(base, "--key-file", short), "--dataset"},
		{append(base, "--dataset", "Bad Name", "--key-file", filepath.Join(dir, "optouts.txt")), "invalid dataset name"},
	}
	for _, tt := range tests {
		_, err := runHub(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args[len(base):], err, tt.want)
		}
	}
	if out, _ := runHub(t, "catalog", "list", "--lake", lake); !strings.Contains(out, "no datasets") {
		t.Errorf("a failed publish left something listed: %s", out)
	}
}

// TestExitCodes: usage mistakes exit 2, refusals by the hub 3, failures 1.
func TestExitCodes(t *testing.T) {
	_, flagErr := runHub(t, "query", "--bogus")
	_, requiredErr := runHub(t, "user", "add", "--state", t.TempDir())
	_, argsErr := runHub(t, "catalog", "show")
	_, shellErr := runHub(t, "completion", "fish")
	_, ioErr := runHub(t, "audit", "verify", "--state", t.TempDir())
	for _, c := range []struct {
		name string
		err  error
		want int
	}{
		{"unknown flag", flagErr, 2}, {"missing required flag", requiredErr, 2}, {"missing argument", argsErr, 2},
		{"unknown shell", shellErr, 2}, {"no audit log", ioErr, 1},
		{"forbidden", fmt.Errorf("approve: %w", &api.APIError{Status: 403, Msg: "forbidden"}), 3},
		{"budget exhausted", &api.APIError{Status: 409, Msg: "exhausted"}, 3},
		{"server error", &api.APIError{Status: 503, Msg: "ledger"}, 1},
	} {
		if c.err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if got := exitCode(c.err); got != c.want {
			t.Errorf("%s (%v): exit %d, want %d", c.name, c.err, got, c.want)
		}
	}
	out, err := runHub(t, "completion", "bash")
	if err != nil || !strings.Contains(out, "complete -o bashdefault") || !strings.Contains(out, "--generate-bash-completion") {
		t.Fatalf("bash completion: %v\n%s", err, out)
	}
}

// A full disk under the local lake (a 64 KiB tmpfs; mounting needs root)
// is named as such, with what to do next.
func TestFullDiskMessage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "300", "--out", dir); err != nil {
		t.Fatal(err)
	}
	lake := t.TempDir()
	if err := syscall.Mount("tmpfs", lake, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("cannot mount a small tmpfs (%v): the test needs root", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(lake, 0); err != nil {
			t.Errorf("unmount: %v (a file of the failed run left open?)", err)
		}
	})
	keyFile := testKeyFile(t)
	_, err := runHub(t, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--dataset", "d", "--lake", lake, "--key-file", keyFile)
	if err == nil || !strings.Contains(err.Error(), "disk is full") || !strings.Contains(err.Error(), "hub catalog gc d") {
		t.Fatalf("err = %v, want the disk named full and gc suggested", err)
	}
	if out, _ := runHub(t, "catalog", "list", "--lake", lake); !strings.Contains(out, "no datasets") {
		t.Errorf("a publish to a full disk left something listed: %s", out)
	}
}

// Publishing refuses an opt-out list that is missing, unreadable, empty or
// stale, exits 4 for a failed safety check, and leaves the lake empty;
// --override passes a check by and the manifest records it.
func TestPublishRefusesBadOptOuts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "60", "--out", dir); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, testkey.Bytes(3), 0o600)
	empty := filepath.Join(t.TempDir(), "empty.txt")
	os.WriteFile(empty, nil, 0o644)
	lake := filepath.Join(t.TempDir(), "lake")
	optouts := filepath.Join(dir, "optouts.txt")
	publish := func(list string, extra ...string) (string, error) {
		return runHub(t, append([]string{"ingest", "--extract", dir, "--optouts", list, "--dataset", "d", "--lake", lake, "--key-file", keyFile}, extra...)...)
	}
	for _, c := range []struct {
		name, list string
		extra      []string
		want       string
		code       int
	}{
		{"missing", filepath.Join(dir, "nope.txt"), nil, "open opt-out list", 1},
		{"unreadable", dir, nil, "read opt-out list", 1},
		{"empty", empty, nil, "--override optouts_empty", 4},
		{"stale", optouts, []string{"--optouts-date", "2019-03-01"}, "--override optouts_stale", 4},
		{"stale by a shorter maximum", optouts, []string{"--optouts-date", time.Now().AddDate(0, 0, -3).Format(time.DateOnly), "--optouts-max-age", "2d"}, "3 days old", 4},
		{"bad override", optouts, []string{"--override", "everything"}, "not a check", 2},
	} {
		_, err := publish(c.list, c.extra...)
		if err == nil || !strings.Contains(err.Error(), c.want) || exitCode(err) != c.code {
			t.Errorf("%s: err = %v (exit %d), want %q and exit %d", c.name, err, exitCode(err), c.want, c.code)
		}
		// The paths aside: a temporary folder's random digits may hold 999.
		if strings.Contains(regexp.MustCompile(`/[^\s:)]+`).ReplaceAllString(fmt.Sprint(err), "PATH"), "999") {
			t.Errorf("%s: the error names a number: %v", c.name, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(lake, "datasets")); len(entries) != 0 {
		t.Fatalf("a refused publish left %d datasets in the lake", len(entries))
	}
	if _, err := publish(optouts, "--optouts-date", "2019-03-01", "--override", "optouts_stale", "--json"); err != nil {
		t.Fatal(err)
	}
	out, err := runHub(t, "catalog", "show", "--lake", lake, "--json", "d")
	if err != nil || !strings.Contains(out, `"overrides"`) || !strings.Contains(out, "optouts_stale") {
		t.Errorf("the manifest does not record the override: %v\n%s", err, out)
	}
	if !strings.Contains(out, `"published_by": "`) {
		t.Errorf("the manifest does not record who published:\n%s", out)
	}
}

func TestS3Endpoint(t *testing.T) {
	for _, c := range []struct {
		in          string
		tls, tlsSet bool
		host        string
		secure, bad bool
	}{
		{"127.0.0.1:9000", true, false, "127.0.0.1:9000", true, false},
		{"127.0.0.1:9000", false, true, "127.0.0.1:9000", false, false},
		{"http://127.0.0.1:9000", true, false, "127.0.0.1:9000", false, false},
		{"https://s3.example.org", true, false, "s3.example.org", true, false},
		{"https://s3.example.org/", false, false, "s3.example.org", true, false},
		{"http://127.0.0.1:9000", true, true, "", false, true},
		{"ftp://x", true, false, "", false, true},
		{"http://127.0.0.1:9000/bucket", true, false, "", false, true},
	} {
		host, secure, err := s3Endpoint(c.in, c.tls, c.tlsSet)
		if (err != nil) != c.bad || host != c.host || secure != c.secure {
			t.Errorf("%s (tls %v set %v): %q %v %v; want %q %v, error %v", c.in, c.tls, c.tlsSet, host, secure, err, c.host, c.secure, c.bad)
		}
	}
}

// TestKeyedAuditCLI: a key made by `hub audit keygen` keys the chain of a
// new state folder; every command on the folder then needs it, by flag or
// by $HUB_AUDIT_KEY_FILE.
func TestKeyedAuditCLI(t *testing.T) {
	state, key := t.TempDir(), filepath.Join(t.TempDir(), "audit.key")
	if _, err := runHub(t, "audit", "keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	if _, err := runHub(t, "audit", "keygen", "--out", key); err == nil {
		t.Fatal("keygen overwrote a key")
	}
	t.Setenv(auditKeyEnv, key)
	if _, err := runHub(t, "user", "add", "--state", state, "--role", "admin", "ada"); err != nil {
		t.Fatal(err)
	}
	if out, err := runHub(t, "audit", "verify", "--state", state); err != nil || !strings.Contains(out, "intact: 1 entries") {
		t.Fatalf("verify with the key from the environment: %q, %v", out, err)
	}
	t.Setenv(auditKeyEnv, "")
	if out, err := runHub(t, "audit", "verify", "--state", state, "--audit-key-file", key); err != nil {
		t.Fatalf("verify with --audit-key-file: %q, %v", out, err)
	}
	if _, err := runHub(t, "audit", "verify", "--state", state); err == nil || !strings.Contains(err.Error(), "give the audit key") {
		t.Fatalf("verify without the key: %v", err)
	}
	if _, err := runHub(t, "user", "add", "--state", state, "--role", "dac", "dina"); err == nil {
		t.Fatal("a keyed state folder was written without its key")
	}
}

// hub catalog export takes its publisher and contact from the hub's
// configuration file, flags winning; a DCAT export without a base URL is
// a usage error that says what to give.
func TestCatalogExportConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "40", "--out", dir); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, testkey.Bytes(4), 0o600)
	lake := filepath.Join(t.TempDir(), "lake")
	if _, err := runHub(t, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--dataset", "d", "--lake", lake, "--key-file", keyFile); err != nil {
		t.Fatal(err)
	}
	if _, err := runHub(t, "catalog", "export", "--lake", lake, "--format", "dcat", "--config", filepath.Join(t.TempDir(), "none.json"), "d"); err == nil {
		t.Errorf("an export with a missing --config file")
	}
	if _, err := runHub(t, "catalog", "export", "--lake", lake, "--format", "dcat", "d"); err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "--base-url") {
		t.Errorf("a DCAT export without a base URL: %v (exit %d)", err, exitCode(err))
	}
	cfg := filepath.Join(t.TempDir(), "hub.json")
	os.WriteFile(cfg, []byte(`{"publisher": "Test Region Hub", "contact": "dpo@example.nhs.uk", "base_url": "https://hub.example.nhs.uk"}`), 0o600)
	out, err := runHub(t, "catalog", "export", "--lake", lake, "--format", "dcat", "--config", cfg, "--publisher", "Flag Hub", "d")
	if err != nil || !strings.Contains(out, `"@id": "https://hub.example.nhs.uk/catalog/d/1"`) || !strings.Contains(out, "mailto:dpo@example.nhs.uk") ||
		!strings.Contains(out, "Flag Hub") || strings.Contains(out, "Test Region Hub") || !strings.Contains(out, `"@id": "file:///`) {
		t.Errorf("export with a configuration file: %v\n%s", err, out)
	}
	os.WriteFile(cfg, []byte(`{"publisher": "x", "colour": "blue"}`), 0o600)
	if _, err := runHub(t, "catalog", "export", "--lake", lake, "--config", cfg, "d"); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("an unknown configuration field: %v", err)
	}
}

// Keys: hub key new writes a key that loads with the fingerprint it
// printed and is never overwritten; a rotation's new key gives the next
// key version, and a key used before keeps its number; the rotation is
// in the audit log with fingerprints only.
func TestKeyRotation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "40", "--out", dir); err != nil {
		t.Fatal(err)
	}
	tmp, lake, state := t.TempDir(), filepath.Join(t.TempDir(), "lake"), t.TempDir()
	k1, k2 := filepath.Join(tmp, "k1"), filepath.Join(tmp, "k2")
	out, err := runHub(t, "key", "new", "--out", k1)
	if err != nil {
		t.Fatal(err)
	}
	fp1 := out[strings.LastIndex(out, " ")+1 : len(out)-1]
	if show, err := runHub(t, "key", "show", "--key-file", k1); err != nil || show != "fingerprint "+fp1+"\n" {
		t.Fatalf("key show: %q %v, key new printed %s", show, err, fp1)
	}
	before, _ := os.ReadFile(k1)
	if _, err := runHub(t, "key", "new", "--out", k1); err == nil || !strings.Contains(err.Error(), "never overwritten") {
		t.Errorf("key new over a key: %v", err)
	}
	if after, _ := os.ReadFile(k1); string(after) != string(before) {
		t.Fatal("key new overwrote a key")
	}
	publish := func(key string) string {
		t.Helper()
		out, err := runHub(t, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"), "--dataset", "d", "--lake", lake, "--key-file", key)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if out := publish(k1); !strings.Contains(out, "key version 1, fingerprint "+fp1) {
		t.Errorf("first publish: %s", out)
	}
	out, err = runHub(t, "key", "rotate", "--key-file", k1, "--out", k2, "--lake", lake, "--dataset", "d", "--state", state)
	if err != nil || !strings.Contains(out, "key version 2") {
		t.Fatalf("rotate: %v\n%s", err, out)
	}
	if out := publish(k2); !strings.Contains(out, "key version 2") {
		t.Errorf("after the rotation: %s", out)
	}
	if out := publish(k1); !strings.Contains(out, "key version 1") {
		t.Errorf("the first key again: %s", out)
	}
	if show, _ := runHub(t, "catalog", "show", "--lake", lake, "d"); !strings.Contains(show, "key version 1, fingerprint "+fp1) {
		t.Errorf("catalog show: %s", show)
	}
	log, _ := os.ReadFile(filepath.Join(state, "audit.jsonl"))
	secret, _ := os.ReadFile(k2)
	if !strings.Contains(string(log), `"key.rotate"`) || !strings.Contains(string(log), fp1) || strings.Contains(string(log), strings.TrimSpace(string(secret))) {
		t.Errorf("audit log: %s", log)
	}
}
