package bench

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nhs-hub/hub/catalog"
	lakefile "github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/nhs-hub/hub/internal/synth"
	"github.com/nhs-hub/hub/internal/testkey"
)

// Published Parquet is readable unchanged by DuckDB, with the row counts
// of the manifest, and events join patients on the binary pseudonym.
func TestDuckDBReadsPublishedParquet(t *testing.T) {
	dir := t.TempDir()
	if _, err := synth.Generate(t.Context(), dir, synth.Options{Patients: 800, Seed: 4, FaultRate: 0.02}); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	store, _ := lakefile.Open(root)
	lake := catalog.NewLake(store)
	key, _ := deid.NewKey(testkey.Bytes(9))
	f, _ := os.Open(filepath.Join(dir, "optouts.txt"))
	optouts, _ := ingest.LoadOptOuts(t.Context(), f)
	f.Close()
	res, err := pipeline.Run(t.Context(), pipeline.Config{Dataset: "d", Source: ingest.Dir(dir),
		Ingest: ingest.Options{OptOuts: optouts}, OptOutDate: time.Now().Format(time.DateOnly), Policy: deid.DefaultPolicy(), Key: key, Lake: lake})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	glob := func(table string) string {
		return "'" + filepath.Join(root, "datasets/d/versions/1", table, "*.parquet") + "'"
	}
	for table, tm := range res.Manifest.Tables {
		var n int64
		if err := db.QueryRow("SELECT count(*) FROM read_parquet(" + glob(table) + ")").Scan(&n); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		if n != tm.Rows {
			t.Errorf("%s: DuckDB counts %d rows, manifest %d", table, n, tm.Rows)
		}
	}
	var orphans int64
	err = db.QueryRow("SELECT count(*) FROM read_parquet(" + glob("observations") + ") o ANTI JOIN read_parquet(" +
		glob("patients") + ") p ON o.patient_id = p.patient_id").Scan(&orphans)
	if err != nil || orphans != 0 {
		t.Errorf("observations without a patient: %d (%v)", orphans, err)
	}
}
