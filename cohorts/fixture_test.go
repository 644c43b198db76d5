package cohorts

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/internal/testlake"
)

// lake is the package's synthetic dataset, "gp", published once.
var lake = testlake.Lake

func TestMain(m *testing.M) { testlake.Main(m) }

// grants is the projects a test grants, as the governance store would.
type grants struct {
	mu sync.Mutex
	m  map[string]*governance.Project
}

func (g *grants) Project(name string) (*governance.Project, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.m[name]
	if p == nil {
		return nil, fmt.Errorf("%w: no approved project %q", governance.ErrNotFound, name)
	}
	c := *p
	return &c, nil
}

// testEngine is the engine the package's services run on: DuckDB, or
// ClickHouse with HUB_TEST_ENGINE=clickhouse in a build with it (-tags
// chdb; make test runs the cohort tests so).
func testEngine(t *testing.T) EngineOptions {
	switch e := os.Getenv("HUB_TEST_ENGINE"); e {
	case "", "duckdb":
		return EngineOptions{}
	case "clickhouse":
		if clickHouse == nil {
			t.Fatal("HUB_TEST_ENGINE=clickhouse needs -tags chdb")
		}
		return EngineOptions{Engine: ClickHouse}
	default:
		t.Fatalf("HUB_TEST_ENGINE=%s: duckdb or clickhouse", e)
	}
	return EngineOptions{}
}

// newService is a service over the test lake with a fresh state folder
// and no projects, on the test engine.
func newService(t *testing.T) *Service {
	t.Helper()
	s, err := New(Config{Lake: lake(t), State: t.TempDir(), Projects: &grants{m: map[string]*governance.Project{}}, Engine: testEngine(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// project grants a project ε eps (δ 1e-5) on "gp" for a year.
func project(t *testing.T, s *Service, name string, eps, delta float64) {
	t.Helper()
	g := s.projects.(*grants)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.m[name] = &governance.Project{Name: name, Members: []string{"rosa"}, Datasets: []string{"gp"},
		EpsilonU: units(eps, EpsilonUnit), DeltaU: units(delta, DeltaUnit), MaxQueryU: units(eps, EpsilonUnit),
		Expires: time.Now().AddDate(1, 0, 0)}
}

// rows reads a published table as maps of column to Go value (string,
// int64, float64, time.Time, []byte or nil): the oracle's view, which
// shares nothing with the engine.
func tableRows(t *testing.T, l *catalog.Lake, m *catalog.Manifest, table string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, rec := range testlake.ReadTable(t, l, m, table) {
		for i := 0; i < int(rec.NumRows()); i++ {
			row := map[string]any{}
			for c := 0; c < int(rec.NumCols()); c++ {
				row[rec.ColumnName(c)] = value(rec.Column(c), i)
			}
			out = append(out, row)
		}
		rec.Release()
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
