package main

import (
	"context"
	"encoding/json"
	"fmt"
	icebergio "github.com/apache/iceberg-go/io"
	"github.com/apache/iceberg-go/table"
	"github.com/nhs-hub/hub/catalog"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/nhs-hub/hub/catalog/s3"
	"github.com/nhs-hub/hub/internal/bulktest"
	"github.com/nhs-hub/hub/internal/miniotest"
	"github.com/nhs-hub/hub/internal/testkey"
)

// An extract dropped in an S3 landing area is published to an S3 lake.
func TestPublishS3ToS3(t *testing.T) {
	srv, bucket := startS3(t)
	t.Setenv("HUB_S3_ENDPOINT", srv.Endpoint)
	t.Setenv("HUB_S3_TLS", "false")

	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "300", "--out", dir, "--gzip"); err != nil {
		t.Fatal(err)
	}
	landing := openBucket(t, srv, bucket, "landing/2025-01")
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if _, err := copyToStore(t.Context(), landing, filepath.Join(dir, e.Name()), e.Name()); err != nil {
			t.Fatal(err)
		}
	}
	keyFile := testKeyFile(t)
	lake := "s3://" + bucket + "/lake"
	out, err := runHub(t, "ingest", "--extract", "s3://"+bucket+"/landing/2025-01", "--optouts", filepath.Join(dir, "optouts.txt"),
		"--dataset", "s3demo", "--lake", lake, "--key-file", keyFile)
	if err != nil || !strings.Contains(out, "published s3demo@1") {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	out, err = runHub(t, "catalog", "show", "--lake", lake, "--verify", "s3demo")
	if err != nil || !strings.Contains(out, "every part verified") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	// An outside reader reads every table from its Iceberg metadata in
	// MinIO, with the manifest's row counts; no credential is in it.
	out, err = runHub(t, "catalog", "show", "--lake", lake, "--json", "s3demo")
	if err != nil {
		t.Fatal(err)
	}
	var m catalog.Manifest
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	props := map[string]string{"s3.endpoint": "http://" + srv.Endpoint, "s3.region": "us-east-1",
		"s3.access-key-id": srv.AccessKey, "s3.secret-access-key": srv.SecretKey}
	lakeStore := openBucket(t, srv, bucket, "lake")
	for name, tm := range m.Tables {
		loc := lake + "/" + tm.Iceberg
		tbl, err := table.NewFromLocation(t.Context(), table.Identifier{"s3demo", name}, loc, icebergio.LoadFSFunc(props, loc), nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		at, err := tbl.Scan().ToArrowTable(t.Context())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if at.NumRows() != tm.Rows {
			t.Errorf("%s: Iceberg reads %d rows from S3, the manifest has %d", name, at.NumRows(), tm.Rows)
		}
		at.Release()
		meta, err := readAll(t.Context(), lakeStore, tm.Iceberg)
		if err != nil || !strings.Contains(string(meta), `"location": "s3://`+bucket+`/lake/`) && !strings.Contains(string(meta), `"location":"s3://`+bucket+`/lake/`) ||
			strings.Contains(string(meta), srv.SecretKey) || strings.Contains(string(meta), srv.AccessKey) {
			t.Errorf("%s: metadata %v:\n%.300s", name, err, meta)
		}
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	if _, err := runHub(t, "catalog", "list", "--lake", lake); err == nil || !strings.Contains(err.Error(), "check the access key") {
		t.Fatalf("wrong secret: %v", err)
	}
}

// A bulk FHIR export in numbered parts, dropped in an S3 landing area, is
// found there as in a folder; the endpoint is given as the aws cli spells
// it, the scheme saying TLS or not.
func TestPublishBulkExportFromS3(t *testing.T) {
	srv, bucket := startS3(t)
	t.Setenv("AWS_ENDPOINT_URL", "http://"+srv.Endpoint)

	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "400", "--format", "fhir", "--part-rows", "500", "--out", dir); err != nil {
		t.Fatal(err)
	}
	landing := openBucket(t, srv, bucket, "landing/bulk")
	entries, _ := os.ReadDir(dir)
	parts := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "Encounter.") {
			parts++
		}
		if _, err := copyToStore(t.Context(), landing, filepath.Join(dir, e.Name()), e.Name()); err != nil {
			t.Fatal(err)
		}
	}
	if parts < 2 {
		t.Fatalf("%d encounter parts; the test wants several", parts)
	}
	out, err := runHub(t, "ingest", "--extract", "s3://"+bucket+"/landing/bulk", "--optouts", filepath.Join(dir, "optouts.txt"), "--check", "--json")
	if err != nil {
		t.Fatalf("ingest: %v\n%s", err, out)
	}
	var rep struct {
		Format string
		Tables map[string]struct {
			Files []struct{ Name string }
			Kept  int64
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Format != "fhir" || len(rep.Tables["encounters"].Files) != parts || rep.Tables["encounters"].Kept == 0 || rep.Tables["registrations"].Kept == 0 {
		t.Errorf("report: format %s, encounters %+v, registrations kept %d", rep.Format, rep.Tables["encounters"], rep.Tables["registrations"].Kept)
	}
	// The explicit flag, scheme and all, does the same; a TLS flag that
	// contradicts the scheme is refused.
	if _, err := runHub(t, "ingest", "--extract", "s3://"+bucket+"/landing/bulk", "--optouts", filepath.Join(dir, "optouts.txt"), "--check",
		"--s3-endpoint", "http://"+srv.Endpoint); err != nil {
		t.Fatal(err)
	}
	if _, err := runHub(t, "ingest", "--extract", "s3://"+bucket+"/landing/bulk", "--optouts", filepath.Join(dir, "optouts.txt"), "--check",
		"--s3-endpoint", "http://"+srv.Endpoint, "--s3-tls"); err == nil || exitCode(err) != 2 {
		t.Fatalf("a TLS flag against an http endpoint: %v", err)
	}
}

// hub ingest --extract URL pulls a Bulk Data export from a FHIR server (a
// strict test server: no real one can be installed here) into --landing
// and publishes the same version as ingesting the same files from a
// folder: the same rows and the same Parquet bytes, pseudonyms included.
func TestPublishPulledExport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "300", "--format", "fhir", "--part-rows", "500", "--out", dir); err != nil {
		t.Fatal(err)
	}
	srv := bulktest.New(t, dir)
	keyFile := testKeyFile(t)
	lake := filepath.Join(t.TempDir(), "lake")
	landing := filepath.Join(t.TempDir(), "landing")
	base := []string{"ingest", "--optouts", filepath.Join(dir, "optouts.txt"), "--lake", lake, "--key-file", keyFile, "--json"}
	if _, err := runHub(t, append(base, "--extract", srv.Base(), "--dataset", "pulled")...); err == nil || exitCode(err) != 2 {
		t.Fatalf("a pull without --landing: %v", err)
	}
	if _, err := runHub(t, append(base, "--extract", srv.Base(), "--landing", "s3://bucket/landing", "--dataset", "pulled")...); err == nil || exitCode(err) != 2 {
		t.Fatalf("a pull landing in S3: %v", err)
	}
	if out, err := runHub(t, append(base, "--extract", srv.Base(), "--landing", landing, "--dataset", "pulled")...); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	if out, err := runHub(t, append(base, "--extract", dir, "--dataset", "folder")...); err != nil {
		t.Fatalf("folder: %v\n%s", err, out)
	}
	show := func(name string) map[string]struct {
		Rows  int64
		Parts []struct{ SHA256 string }
	} {
		out, err := runHub(t, "catalog", "show", "--lake", lake, "--json", name)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Tables map[string]struct {
				Rows  int64
				Parts []struct{ SHA256 string }
			}
		}
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatal(err)
		}
		return m.Tables
	}
	pulled, folder := show("pulled"), show("folder")
	if len(pulled) != len(folder) || len(pulled) < 8 {
		t.Fatalf("%d tables pulled, %d from the folder", len(pulled), len(folder))
	}
	for name, f := range folder {
		p := pulled[name]
		if p.Rows != f.Rows || fmt.Sprint(p.Parts) != fmt.Sprint(f.Parts) {
			t.Errorf("%s: pulled %d rows %v, folder %d rows %v", name, p.Rows, p.Parts, f.Rows, f.Parts)
		}
	}
	if _, err := os.Stat(filepath.Join(landing, "pull.json")); err != nil {
		t.Errorf("the landing folder keeps no pull state: %v", err)
	}

	// The same from a server that asks for SMART Backend Services, with a
	// key that `hub fhir keygen` made and whose JWKS the server registered.
	secure := bulktest.New(t, dir)
	keyPEM := filepath.Join(t.TempDir(), "fhir.pem")
	jwks, err := runHub(t, "fhir", "keygen", "--out", keyPEM, "--alg", "RS384")
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(jwks), &set); err != nil {
		t.Fatalf("keygen printed no JWKS: %v\n%s", err, jwks)
	}
	secure.Auth = &bulktest.Auth{ClientID: "hub", JWKS: set}
	if out, err := runHub(t, append(base, "--extract", secure.Base(), "--landing", t.TempDir(), "--dataset", "secure")...); err == nil {
		t.Fatalf("a pull without credentials from a server that asks for them: %s", out)
	}
	if out, err := runHub(t, append(base, "--extract", secure.Base(), "--landing", filepath.Join(t.TempDir(), "s"), "--dataset", "secure",
		"--fhir-client-id", "hub", "--fhir-key-file", keyPEM)...); err != nil {
		t.Fatalf("a pull with SMART Backend Services: %v\n%s", err, out)
	}
	for name, f := range show("secure") {
		if g := folder[name]; g.Rows != f.Rows || fmt.Sprint(g.Parts) != fmt.Sprint(f.Parts) {
			t.Errorf("%s: the authorised pull differs from the folder", name)
		}
	}
	if secure.Issued == 0 {
		t.Error("no token was issued")
	}
}

// --since last pulls only what changed since the dataset's last pull and
// merges it into that pull's export: a changed record replaces the old
// one, a deleted one goes, a new one comes, and a patient newly on the
// opt-out list loses their older records too. The version equals one
// ingested from the whole export as it now stands.
func TestIncrementalPull(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "300", "--format", "fhir", "--fault-rate", "0", "--part-rows", "700", "--out", dir); err != nil {
		t.Fatal(err)
	}
	srv := bulktest.New(t, dir)
	keyFile := testKeyFile(t)
	lake := filepath.Join(t.TempDir(), "lake")
	optouts := filepath.Join(dir, "optouts.txt")
	pub := func(args ...string) {
		t.Helper()
		if out, err := runHub(t, append([]string{"ingest", "--lake", lake, "--key-file", keyFile, "--json"}, args...)...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	pub("--extract", srv.Base(), "--landing", filepath.Join(t.TempDir(), "full"), "--dataset", "inc", "--optouts", optouts)

	// What changed: pat-0's first encounter cancelled, a new condition,
	// an observation deleted, and a patient newly opted out.
	read := func(name string) []string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	encounters := read("Encounter.000.ndjson")
	changed := strings.Replace(encounters[0], `"status":"finished"`, `"status":"cancelled"`, 1)
	added := `{"resourceType":"Condition","id":"con-new","subject":{"reference":"Patient/pat-0"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]},"onsetDateTime":"2024-01-01"}`
	deltaDir := t.TempDir()
	os.WriteFile(filepath.Join(deltaDir, "Encounter.000.ndjson"), []byte(changed+"\n"), 0o644)
	os.WriteFile(filepath.Join(deltaDir, "Condition.000.ndjson"), []byte(added+"\n"), 0o644)
	srv.Delta = &bulktest.Delta{Dir: deltaDir, Deleted: []string{"Observation/obs-1"}}
	oldList, _ := os.ReadFile(optouts)
	var newNumber string
	for _, line := range read("Patient.000.ndjson")[1:] {
		_, rest, _ := strings.Cut(line, `nhs-number","value":"`)
		number, _, _ := strings.Cut(rest, `"`)
		if number != "" && !strings.Contains(string(oldList), number) {
			newNumber = number
			break
		}
	}
	if newNumber == "" {
		t.Fatal("no patient to opt out")
	}
	newList := filepath.Join(t.TempDir(), "optouts.txt")
	os.WriteFile(newList, append(oldList, []byte(newNumber+"\n")...), 0o644)
	pub("--extract", srv.Base(), "--since", "last", "--landing", filepath.Join(t.TempDir(), "delta"), "--dataset", "inc", "--optouts", newList)

	// The same export, as it now stands, from a folder.
	now := t.TempDir()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		s := string(b)
		switch e.Name() {
		case "Encounter.000.ndjson":
			s = strings.Replace(s, encounters[0], changed, 1)
		case "Condition.000.ndjson":
			s += added + "\n"
		case "Observation.000.ndjson":
			s = strings.Replace(s, read("Observation.000.ndjson")[0]+"\n", "", 1)
			if !strings.Contains(read("Observation.000.ndjson")[0], `"id":"obs-1"`) {
				t.Fatal("the test expects obs-1 first")
			}
		}
		os.WriteFile(filepath.Join(now, e.Name()), []byte(s), 0o644)
	}
	pub("--extract", now, "--dataset", "now", "--optouts", newList)

	rows := func(name string, version string) map[string]int64 {
		out, err := runHub(t, "catalog", "show", "--lake", lake, "--json", name+version)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Tables map[string]struct{ Rows int64 }
		}
		json.Unmarshal([]byte(out), &m)
		r := map[string]int64{}
		for k, v := range m.Tables {
			r[k] = v.Rows
		}
		return r
	}
	v1, v2, want := rows("inc", "@1"), rows("inc", "@2"), rows("now", "")
	if fmt.Sprint(v2) != fmt.Sprint(want) {
		t.Errorf("the incremental version %v, the export as it stands %v", v2, want)
	}
	if v2["patients"] != v1["patients"]-1 || v2["encounters"] >= v1["encounters"] || v2["observations"] >= v1["observations"] {
		t.Errorf("v1 %v, v2 %v: the changes and the new opt-out did not take", v1, v2)
	}
}

// A pull landing in S3 downloads into --landing-cache, copies every file
// of the export (and manifest.json and pull.json last) to the landing
// area, byte for byte, before the version that cites it is published.
func TestPullLandsInS3(t *testing.T) {
	srv, bucket := startS3(t)
	t.Setenv("HUB_S3_ENDPOINT", "http://"+srv.Endpoint)

	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "300", "--format", "fhir", "--part-rows", "500", "--out", dir); err != nil {
		t.Fatal(err)
	}
	fhir := bulktest.New(t, dir)
	keyFile := testKeyFile(t)
	lake := filepath.Join(t.TempDir(), "lake")
	landing := "s3://" + bucket + "/raw/2026-12"
	args := []string{"ingest", "--extract", fhir.Base(), "--landing", landing, "--optouts", filepath.Join(dir, "optouts.txt"),
		"--lake", lake, "--key-file", keyFile, "--dataset", "pulled"}
	if _, err := runHub(t, args...); err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "--landing-cache") {
		t.Fatalf("an S3 landing without a cache folder: %v", err)
	}
	cache := filepath.Join(t.TempDir(), "cache")
	out, err := runHub(t, append(args, "--landing-cache", cache)...)
	if err != nil || !strings.Contains(out, "published pulled@1") {
		t.Fatalf("pull into S3: %v\n%s", err, out)
	}
	st := openBucket(t, srv, bucket, "raw/2026-12")
	b, err := readAll(t.Context(), st, "pull.json")
	if err != nil {
		t.Fatal(err)
	}
	var pull struct {
		Complete bool
		Files    []struct{ Name string }
	}
	if err := json.Unmarshal(b, &pull); err != nil || !pull.Complete || len(pull.Files) < 8 {
		t.Fatalf("pull.json in S3: %v %s", err, b)
	}
	for _, f := range append(pull.Files, struct{ Name string }{"manifest.json"}) {
		got, err := readAll(t.Context(), st, f.Name)
		want, _ := os.ReadFile(filepath.Join(cache, f.Name))
		if err != nil || len(got) == 0 || string(got) != string(want) {
			t.Errorf("%s in S3: %d bytes, the cache %d: %v", f.Name, len(got), len(want), err)
		}
	}
	out, err = runHub(t, "catalog", "show", "--lake", lake, "--json", "pulled")
	if err != nil || !strings.Contains(out, `"extract_folder": "`+landing+`"`) {
		t.Errorf("the version's provenance does not name the S3 landing area: %v\n%s", err, out)
	}
}

// An incremental pull into S3: the last pull's export is fetched from
// its S3 landing area, the changes merged into it, and the changes and
// the merged export copied to the new landing area (merged/), which the
// version's provenance names and the next --since last reads.
func TestIncrementalPullLandsInS3(t *testing.T) {
	srv, bucket := startS3(t)
	t.Setenv("HUB_S3_ENDPOINT", "http://"+srv.Endpoint)
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "200", "--format", "fhir", "--fault-rate", "0", "--part-rows", "500", "--out", dir); err != nil {
		t.Fatal(err)
	}
	fhir := bulktest.New(t, dir)
	keyFile := testKeyFile(t)
	lake := filepath.Join(t.TempDir(), "lake")
	pull := func(landing string, extra ...string) string {
		t.Helper()
		out, err := runHub(t, append([]string{"ingest", "--extract", fhir.Base(), "--landing", "s3://" + bucket + "/" + landing,
			"--landing-cache", filepath.Join(t.TempDir(), "cache"), "--optouts", filepath.Join(dir, "optouts.txt"),
			"--lake", lake, "--key-file", keyFile, "--dataset", "inc", "--json"}, extra...)...)
		if err != nil {
			t.Fatalf("pull into %s: %v\n%s", landing, err, out)
		}
		return out
	}
	rows := func(version string) map[string]int64 {
		out, err := runHub(t, "catalog", "show", "--lake", lake, "--json", "inc@"+version)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Tables     map[string]struct{ Rows int64 }
			Provenance struct {
				ExtractFolder string `json:"extract_folder"`
			}
		}
		json.Unmarshal([]byte(out), &m)
		r := map[string]int64{}
		for k, v := range m.Tables {
			r[k] = v.Rows
		}
		r["folder:"+m.Provenance.ExtractFolder] = 1
		return r
	}
	pull("raw/full")
	added := `{"resourceType":"Condition","id":"con-new","subject":{"reference":"Patient/pat-0"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]},"onsetDateTime":"2024-01-01"}`
	deltaDir := t.TempDir()
	os.WriteFile(filepath.Join(deltaDir, "Condition.000.ndjson"), []byte(added+"\n"), 0o644)
	fhir.Delta = &bulktest.Delta{Dir: deltaDir, Deleted: []string{"Observation/obs-1"}}
	pull("raw/delta-1", "--since", "last")
	v1, v2 := rows("1"), rows("2")
	if v2["conditions"] != v1["conditions"]+1 || v2["observations"] != v1["observations"]-1 || v2["patients"] != v1["patients"] {
		t.Errorf("v1 %v, v2 %v: the changes did not take", v1, v2)
	}
	if v2["folder:s3://"+bucket+"/raw/delta-1/merged"] != 1 {
		t.Errorf("v2's provenance: %v", v2)
	}
	st := openBucket(t, srv, bucket, "raw/delta-1")
	names, err := st.List(t.Context(), "")
	if err != nil || !slices.Contains(names, "pull.json") || !slices.Contains(names, "merged/Condition.000.ndjson") {
		t.Errorf("the S3 landing area holds %v (%v)", names, err)
	}
	// The next --since last reads the merged export from S3.
	fhir.Delta = &bulktest.Delta{Dir: t.TempDir(), Deleted: []string{"Observation/obs-2"}}
	pull("raw/delta-2", "--since", "last")
	if v3 := rows("3"); v3["observations"] != v2["observations"]-1 || v3["conditions"] != v2["conditions"] {
		t.Errorf("v2 %v, v3 %v", v2, v3)
	}
}

// startS3 starts MinIO with a bucket for a test and puts its credentials
// in the environment, where the hub reads them.
func startS3(t *testing.T) (*miniotest.Server, string) {
	t.Helper()
	srv := miniotest.Start(t)
	bucket := srv.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	return srv, bucket
}

// openBucket opens bucket/prefix of a test's MinIO as a store.
func openBucket(t *testing.T, srv *miniotest.Server, bucket, prefix string) *s3.Store {
	t.Helper()
	st, err := s3.Open(t.Context(), s3.Config{Endpoint: srv.Endpoint, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, Bucket: bucket, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// testKeyFile writes a 32-byte pseudonymisation key for a test.
func testKeyFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, testkey.Bytes(11), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// readAll reads an object of a store.
func readAll(ctx context.Context, st *s3.Store, name string) ([]byte, error) {
	rc, err := st.Open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
