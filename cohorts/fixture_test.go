package cohorts

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/nhs-hub/hub/catalog"
	lakefile "github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/nhs-hub/hub/internal/synth"
)

// testLake is one synthetic dataset, "gp", published once for the
// package's tests.
var testLake struct {
	once sync.Once
	lake *catalog.Lake
	root string
	err  error
}

func lake(t testing.TB) *catalog.Lake {
	t.Helper()
	testLake.once.Do(func() {
		testLake.lake, testLake.root, testLake.err = publish(context.Background(), 3000)
	})
	if testLake.err != nil {
		t.Fatal(testLake.err)
	}
	return testLake.lake
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testLake.root != "" {
		os.RemoveAll(filepath.Dir(testLake.root))
	}
	os.Exit(code)
}

// publish synthesises an extract of n patients and publishes it as "gp".
func publish(ctx context.Context, n int) (*catalog.Lake, string, error) {
	dir, err := os.MkdirTemp("", "cohorts-test-")
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
	k, err := deid.NewKey(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		return nil, "", err
	}
	policy := deid.DefaultPolicy()
	policy.ReferenceDate = "2025-01-01"
	l := catalog.NewLake(store)
	_, err = pipeline.Run(ctx, pipeline.Config{Dataset: "gp", Source: ingest.Dir(extract), SourceName: "test",
		Ingest: ingest.Options{OptOuts: optouts}, Policy: policy, Key: k, Lake: l})
	return l, root, err
}

// newService is a service over the test lake with a fresh state folder.
func newService(t *testing.T) *Service {
	t.Helper()
	s, err := New(Config{Lake: lake(t), State: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// rows reads a published table as maps of column to Go value (string,
// int64, float64, time.Time, []byte or nil): the oracle's view, which
// shares nothing with the engine.
func tableRows(t *testing.T, l *catalog.Lake, m *catalog.Manifest, table string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, part := range m.Tables[table].Parts {
		r, err := l.Store().Open(t.Context(), part.Path)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		buf.ReadFrom(r)
		r.Close()
		pf, err := file.NewParquetReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1 << 16}, memory.DefaultAllocator)
		if err != nil {
			t.Fatal(err)
		}
		tbl, err := fr.ReadTable(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		tr := array.NewTableReader(tbl, 1<<16)
		for tr.Next() {
			rec := tr.RecordBatch()
			for i := 0; i < int(rec.NumRows()); i++ {
				row := map[string]any{}
				for c := 0; c < int(rec.NumCols()); c++ {
					row[rec.ColumnName(c)] = value(rec.Column(c), i)
				}
				out = append(out, row)
			}
		}
		tr.Release()
		tbl.Release()
	}
	return out
}

func value(a arrow.Array, i int) any {
	if a.IsNull(i) {
		return nil
	}
	switch c := a.(type) {
	case *array.String:
		return c.Value(i)
	case *array.Dictionary:
		return value(c.Dictionary(), c.GetValueIndex(i))
	case *array.Int8:
		return int64(c.Value(i))
	case *array.Int16:
		return int64(c.Value(i))
	case *array.Int32:
		return int64(c.Value(i))
	case *array.Int64:
		return c.Value(i)
	case *array.Float64:
		return c.Value(i)
	case *array.Date32:
		return c.Value(i).ToTime()
	case *array.FixedSizeBinary:
		return string(c.Value(i))
	case *array.Binary:
		return string(c.Value(i))
	}
	panic(fmt.Sprintf("unexpected column type %T", a))
}
