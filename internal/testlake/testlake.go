// Package testlake publishes a synthetic dataset into a temporary local
// lake for tests that need real Parquet (the cohort engine's and the
// API's), and reads published tables back.
package testlake

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/nhs-hub/hub/catalog"
	lakefile "github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/nhs-hub/hub/internal/synth"
	"github.com/nhs-hub/hub/internal/testkey"
)

// Publish synthesises an extract of n patients (seed 5) and publishes it
// as dataset "gp" under a new temporary folder, with a fixed key and the
// reference date 2025-01-01, its tables registered as Iceberg tables. root is the lake's folder; the caller
// removes filepath.Dir(root).
func Publish(ctx context.Context, n int) (l *catalog.Lake, root string, err error) {
	dir, err := os.MkdirTemp("", "hub-testlake-")
	if err != nil {
		return nil, "", err
	}
	extract, root := filepath.Join(dir, "extract"), filepath.Join(dir, "lake")
	if _, err := synth.Generate(ctx, extract, synth.Options{Patients: n, Seed: 5}); err != nil {
		return nil, "", err
	}
	o, err := os.Open(filepath.Join(extract, "optouts.txt"))
	if err != nil {
		return nil, "", err
	}
	defer o.Close()
	optouts, err := ingest.LoadOptOuts(ctx, o)
	if err != nil {
		return nil, "", err
	}
	store, err := lakefile.Open(root)
	if err != nil {
		return nil, "", err
	}
	k, err := deid.NewKey(testkey.Bytes(7))
	if err != nil {
		return nil, "", err
	}
	policy := deid.DefaultPolicy()
	policy.ReferenceDate = "2025-01-01"
	policy.KeepGPPractice = true // for the cohort language's practice criterion
	// A few thousand patients, and the tests need ages and practices:
	// k = 2 over sex, place, ethnicity and death (some deaths are
	// generalised to the year). The default policy, k = 5 over every
	// attribute, leaves 3,000 patients their age band alone and no
	// practice: k-anonymity over many attributes needs many patients.
	policy.K = 2
	policy.QuasiIdentifiers = []string{"birth", "sex", "place", "ethnicity", "death"}
	l = catalog.NewLake(store)
	_, err = pipeline.Run(ctx, pipeline.Config{Dataset: "gp", Source: ingest.Dir(extract), SourceName: "test",
		Ingest: ingest.Options{OptOuts: optouts}, OptOutDate: time.Now().Format(time.DateOnly), Policy: policy, Key: k, Lake: l,
		LakeLocation: root, EngineTables: true})
	return l, root, err
}

// shared is the dataset Shared publishes once per test binary.
var shared struct {
	once sync.Once
	lake *catalog.Lake
	root string
	err  error
}

// Shared returns a 3,000-patient "gp" dataset published once for the
// whole test binary, and its lake's folder. TestMain removes it with
// RemoveShared after the tests.
func Shared(tb testing.TB) (*catalog.Lake, string) {
	tb.Helper()
	shared.once.Do(func() {
		shared.lake, shared.root, shared.err = Publish(context.Background(), 3000)
	})
	if shared.err != nil {
		tb.Fatal(shared.err)
	}
	return shared.lake, shared.root
}

// RemoveShared deletes the dataset Shared published, if any.
func RemoveShared() {
	if shared.root != "" {
		os.RemoveAll(filepath.Dir(shared.root))
	}
}

// Lake returns the shared dataset's lake (see Shared).
func Lake(tb testing.TB) *catalog.Lake {
	tb.Helper()
	l, _ := Shared(tb)
	return l
}

// Main is a TestMain for packages that use Shared: it runs the tests,
// removes the shared dataset, and exits with the tests' code.
func Main(m *testing.M) {
	code := m.Run()
	RemoveShared()
	os.Exit(code)
}

// ReadTable reads every part of a published table into records, in the
// manifest's order; the caller releases them.
func ReadTable(tb testing.TB, l *catalog.Lake, m *catalog.Manifest, table string) []arrow.RecordBatch {
	tb.Helper()
	var out []arrow.RecordBatch
	for _, part := range m.Tables[table].Parts {
		r, err := l.Store().Open(tb.Context(), part.Path)
		if err != nil {
			tb.Fatal(err)
		}
		data, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			tb.Fatal(err)
		}
		pf, err := file.NewParquetReader(bytes.NewReader(data))
		if err != nil {
			tb.Fatal(err)
		}
		fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1 << 16}, memory.DefaultAllocator)
		if err != nil {
			tb.Fatal(err)
		}
		rr, err := fr.GetRecordReader(tb.Context(), nil, nil)
		if err != nil {
			tb.Fatal(err)
		}
		for rr.Next() {
			rec := rr.RecordBatch()
			rec.Retain()
			out = append(out, rec)
		}
		err = rr.Err()
		rr.Release()
		if err != nil {
			tb.Fatal(err)
		}
	}
	return out
}
