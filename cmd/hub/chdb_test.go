//go:build chdb

// ClickHouse, in process (chdb-go with libchdb.so from npm: make chdb-deps;
// make test runs this with -tags chdb), reads the lake's Iceberg tables.
// The build tag keeps it out of other test runs: chdb-go loads its
// library when the package is loaded, and panics without it.

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chdb-io/chdb-go/chdb"
	"github.com/nhs-hub/hub/catalog"
)

// chdbCount runs a count query in chdb.
func chdbCount(t *testing.T, q string) int64 {
	t.Helper()
	r, err := chdb.Query(q, "CSV")
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	var n int64
	if _, err := fmt.Sscan(strings.TrimSpace(r.String()), &n); err != nil {
		t.Fatalf("%s: %q", q, r.String())
	}
	return n
}

// Every table of a version published to a local lake and to MinIO is read
// by ClickHouse's Iceberg table functions (icebergLocal, icebergS3), with
// the manifest's row counts.
func TestChdbReadsIceberg(t *testing.T) {
	srv, bucket := startS3(t)
	t.Setenv("HUB_S3_ENDPOINT", "http://"+srv.Endpoint)
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "500", "--out", dir); err != nil {
		t.Fatal(err)
	}
	keyFile := testKeyFile(t)
	local := filepath.Join(t.TempDir(), "lake")
	s3lake := "s3://" + bucket + "/lake"
	for _, lake := range []string{local, s3lake} {
		if out, err := runHub(t, "ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"),
			"--dataset", "ch", "--lake", lake, "--key-file", keyFile); err != nil {
			t.Fatalf("publish to %s: %v\n%s", lake, err, out)
		}
		out, err := runHub(t, "catalog", "show", "--lake", lake, "--json", "ch")
		if err != nil {
			t.Fatal(err)
		}
		var m catalog.Manifest
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatal(err)
		}
		// chdb reads local files under its working directory only.
		t.Chdir(local)
		for name, tm := range m.Tables {
			table := filepath.Dir(filepath.Dir(tm.Iceberg)) // .../iceberg/TABLE
			var q string
			if lake == local {
				q = fmt.Sprintf("SELECT count() FROM icebergLocal('%s')", table)
			} else {
				q = fmt.Sprintf("SELECT count() FROM icebergS3('http://%s/%s/lake/%s', '%s', '%s')", srv.Endpoint, bucket, table, srv.AccessKey, srv.SecretKey)
			}
			if n := chdbCount(t, q); n != tm.Rows {
				t.Errorf("%s %s: ClickHouse reads %d rows, the manifest has %d", lake, name, n, tm.Rows)
			}
		}
	}
	if os.Getenv("CHDB_LIB_PATH") == "" {
		t.Log("libchdb.so found without CHDB_LIB_PATH")
	}
}
