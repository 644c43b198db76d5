package cohorts

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nhs-hub/hub/catalog"
)

func project(t *testing.T, s *Service, name string, eps float64) string {
	t.Helper()
	tok, err := CreateProject(s.state, ProjectSpec{Name: name, Epsilon: eps, Delta: 1e-5, Datasets: []string{"gp"}})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestConcurrentBudget: 200 different queries at once against a budget
// that pays for exactly 20: exactly 20 are answered, the rest refused with
// ErrBudgetExhausted, and the ledger (reopened from disk) agrees.
func TestConcurrentBudget(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, refused := 0, 0
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := mustParse(t, fmt.Sprintf(`{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": %d}}, "measures": [{"kind": "count"}], "epsilon": 0.05}`, i%100))
			if i >= 100 {
				q.Measures[0].By = []string{"sex"}
			}
			_, err := s.Query(t.Context(), "study", q)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrBudgetExhausted):
				refused++
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok != 20 || refused != 180 {
		t.Fatalf("%d answered, %d refused; want 20 and 180", ok, refused)
	}
	b, _ := s.Budget("study")
	if b.EpsilonSpent != 1.0 || b.EpsilonRemaining != 0 || b.Queries != 20 {
		t.Fatalf("budget %+v", b)
	}
	l, err := OpenLedger(ledgerPath(s.state, "study"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if e, _, n := l.Spent(); e != 1_000_000 || n != 20 {
		t.Fatalf("ledger on disk: %d units in %d entries", e, n)
	}
}

// TestRepeatIsFree: the same query (reformatted) returns the same released
// answer and costs nothing; an exhausted budget refuses at no cost; a bad
// query costs nothing.
func TestRepeatIsFree(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0)
	q1 := mustParse(t, `{"dataset":"gp","measures":[{"kind":"count"}],"epsilon":0.6}`)
	q2 := mustParse(t, `{"epsilon": 0.6,  "measures": [ {"kind": "count"} ], "dataset": "gp", "version": 1}`)
	a1, err := s.Query(t.Context(), "study", q1)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := s.Query(t.Context(), "study", q2)
	if err != nil {
		t.Fatal(err)
	}
	if !a2.Repeat || a1.Repeat || *a1.Measures[0].Value != *a2.Measures[0].Value || a1.QuerySHA256 != a2.QuerySHA256 {
		t.Fatalf("repeat: %+v then %+v", a1, a2)
	}
	b, _ := s.Budget("study")
	if b.EpsilonSpent != 0.6 {
		t.Fatalf("spent %v after a query and its repeat, want 0.6", b.EpsilonSpent)
	}
	_, err = s.Query(t.Context(), "study", mustParse(t, `{"dataset":"gp","measures":[{"kind":"count", "by": ["sex"]}],"epsilon":0.5}`))
	if !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("over budget: %v", err)
	}
	if b, _ := s.Budget("study"); b.EpsilonSpent != 0.6 || b.Queries != 1 {
		t.Fatalf("a refused query changed the budget: %+v", b)
	}
	// The answer survives a restart: the repeat is still free.
	s2, err := New(Config{Lake: s.lake, State: s.state})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	a3, err := s2.Query(t.Context(), "study", q1)
	if err != nil || !a3.Repeat || *a3.Measures[0].Value != *a1.Measures[0].Value {
		t.Fatalf("after restart: %+v, %v", a3, err)
	}
}

// TestTornLedgerLine: a crash mid-append leaves a line without its newline;
// it was never synced nor answered, so reopening drops it.
func TestTornLedgerLine(t *testing.T) {
	s := newService(t)
	project(t, s, "study", 1.0)
	if _, err := s.Query(t.Context(), "study", mustParse(t, `{"dataset":"gp","measures":[{"kind":"count"}],"epsilon":0.25}`)); err != nil {
		t.Fatal(err)
	}
	path := ledgerPath(s.state, "study")
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":2,"epsilon_units":500000,"ans`)
	f.Close()
	l, err := OpenLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if e, _, n := l.Spent(); e != 250000 || n != 1 {
		t.Fatalf("after a torn line: %d units, %d entries", e, n)
	}
}

func do(t *testing.T, h http.Handler, method, path, token, body string) (int, map[string]any) {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var out map[string]any
	if w.Body.Len() > 0 && w.Body.Bytes()[0] == '{' {
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
	}
	return w.Code, out
}

// TestHTTP walks the API: statuses, error bodies and the smallest query.
func TestHTTP(t *testing.T) {
	s := newService(t)
	tok := project(t, s, "study", 1.0)
	other := project(t, s, "other", 1.0)
	h := s.Handler()
	smallest := `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5}`
	cases := []struct {
		name, method, path, token, body string
		want                            int
	}{
		{"health", "GET", "/healthz", "", "", 200},
		{"datasets without token", "GET", "/v1/datasets", "", "", 401},
		{"datasets", "GET", "/v1/datasets/gp", tok, "", 200},
		{"unknown dataset info", "GET", "/v1/datasets/nope", tok, "", 404},
		{"forged token", "POST", "/v1/projects/study/queries", "hub_" + strings.Repeat("0", 64), smallest, 401},
		{"other project's token", "POST", "/v1/projects/study/queries", other, smallest, 403},
		{"unknown project", "GET", "/v1/projects/nobody/budget", tok, "", 403},
		{"not JSON", "POST", "/v1/projects/study/queries", tok, `count everyone`, 400},
		{"unknown field", "POST", "/v1/projects/study/queries", tok, `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5, "sql": "1"}`, 400},
		{"unknown dataset", "POST", "/v1/projects/study/queries", tok, `{"dataset": "nope", "measures": [{"kind": "count"}], "epsilon": 0.5}`, 403},
		{"over the cap", "POST", "/v1/projects/study/queries", tok, `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 2}`, 400},
		{"smallest query", "POST", "/v1/projects/study/queries", tok, smallest, 200},
		{"over budget", "POST", "/v1/projects/study/queries", tok, `{"dataset": "gp", "measures": [{"kind": "count", "by": ["sex"]}], "epsilon": 0.6}`, 409},
		{"budget", "GET", "/v1/projects/study/budget", tok, "", 200},
		{"history", "GET", "/v1/projects/study/queries", tok, "", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, h, c.method, c.path, c.token, c.body)
			if code != c.want {
				t.Fatalf("status %d (%v), want %d", code, body, c.want)
			}
			if code >= 400 && (body["error"] == nil || body["error"] == "") {
				t.Fatalf("error without a message: %v", body)
			}
			switch c.name {
			case "smallest query":
				m := body["measures"].([]any)[0].(map[string]any)
				for _, k := range []string{"value", "ci_low", "ci_high", "epsilon", "suppressed"} {
					if _, ok := m[k]; !ok {
						t.Errorf("answer lacks %s: %v", k, m)
					}
				}
				if v := m["value"].(float64); v < 2500 || v > 3000 {
					t.Errorf("count of everyone = %v", v)
				}
			case "budget":
				if body["epsilon_total"] != 1.0 || body["epsilon_spent"] != 0.5 || body["epsilon_remaining"] != 0.5 {
					t.Errorf("budget %v", body)
				}
			}
		})
	}
}

// TestBadQueries: hostile and malformed queries are refused with 400, run
// no SQL and spend nothing.
func TestBadQueries(t *testing.T) {
	s := newService(t)
	tok := project(t, s, "study", 1.0)
	h := s.Handler()
	inject := `x' OR 1=1; DROP TABLE patients; --`
	deep := strings.Repeat(`{"not": `, 40) + `{"sex": ["female"]}` + strings.Repeat(`}`, 40)
	cases := map[string]string{
		"unknown column":     `{"dataset": "gp", "measures": [{"kind": "count", "by": ["nhs_number"]}], "epsilon": 0.5}`,
		"unknown code":       `{"dataset": "gp", "criteria": {"condition": {"codes": {"snomed": ["44054007"]}}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"inverted range":     `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": 80, "max": 40}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"inverted window":    `{"dataset": "gp", "criteria": {"encounter": {"window": {"from": "2024-01-01", "to": "2023-01-01"}}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"absurd bounds":      `{"dataset": "gp", "measures": [{"kind": "sum", "of": {"kind": "events", "table": "encounters"}, "lower": 0, "upper": 1e300}], "epsilon": 0.5}`,
		"huge query":         `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5, "x": "` + strings.Repeat("a", 10<<20) + `"}`,
		"deep nesting":       `{"dataset": "gp", "criteria": ` + deep + `, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"zero epsilon":       `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0}`,
		"no measures":        `{"dataset": "gp", "measures": [], "epsilon": 0.5}`,
		"sql in dataset":     `{"dataset": "` + inject + `", "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in sex":         `{"dataset": "gp", "criteria": {"sex": ["` + inject + `"]}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in region":      `{"dataset": "gp", "criteria": {"region": ["` + inject + `"]}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in district":    `{"dataset": "gp", "criteria": {"district": ["` + inject + `"]}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in code":        `{"dataset": "gp", "criteria": {"condition": {"codes": {"icd10": ["` + inject + `"]}}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in unit":        `{"dataset": "gp", "criteria": {"observation": {"codes": {"snomed": ["999791000000106"]}, "unit": "` + inject + `"}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in id":          `{"dataset": "gp", "criteria": {"condition": {"id": "` + inject + `", "codes": {"snomed": ["44054006"]}}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in date":        `{"dataset": "gp", "index_date": "` + inject + `", "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in name":        `{"dataset": "gp", "measures": [{"kind": "count", "name": "` + inject + `"}], "epsilon": 0.5}`,
		"sql in kind":        `{"dataset": "gp", "measures": [{"kind": "` + inject + `"}], "epsilon": 0.5}`,
		"sql in by_code":     `{"dataset": "gp", "measures": [{"kind": "count", "by_code": "` + inject + `"}], "epsilon": 0.5, "delta": 1e-6}`,
		"sql in relative_to": `{"dataset": "gp", "criteria": {"condition": {"codes": {"snomed": ["44054006"]}, "window": {"relative_to": "` + inject + `", "days_before": 3}}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"sql in table":       `{"dataset": "gp", "measures": [{"kind": "sum", "of": {"kind": "events", "table": "` + inject + `"}, "lower": 0, "upper": 5}], "epsilon": 0.5}`,
		"relative cycle":     `{"dataset": "gp", "criteria": {"all": [{"condition": {"id": "a", "codes": {"snomed": ["44054006"]}, "window": {"relative_to": "b", "days_before": 3}}}, {"condition": {"id": "b", "codes": {"snomed": ["44054006"]}, "window": {"relative_to": "a", "days_before": 3}}}]}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"age without index":  `{"dataset": "gp", "criteria": {"age": {"min": 3}}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"two tests in one":   `{"dataset": "gp", "criteria": {"sex": ["female"], "region": ["LS"]}, "measures": [{"kind": "count"}], "epsilon": 0.5}`,
		"trailing data":      `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5} {}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			code, out := do(t, h, "POST", "/v1/projects/study/queries", tok, body)
			if code != 400 {
				t.Fatalf("status %d (%v), want 400", code, out)
			}
			msg, _ := out["error"].(string)
			if !strings.HasPrefix(msg, "bad query") || strings.Contains(msg, "DROP TABLE") {
				t.Fatalf("message %q", msg)
			}
		})
	}
	if b, _ := s.Budget("study"); b.EpsilonSpent != 0 || b.Queries != 0 {
		t.Fatalf("bad queries spent budget: %+v", b)
	}
}

// TestEngineReachesNoOtherFile: the engine's DuckDB refuses to read any
// file but the dataset's parts, and its configuration cannot be unlocked.
func TestEngineReachesNoOtherFile(t *testing.T) {
	s := newService(t)
	eng, err := s.Engine(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"SELECT * FROM read_csv('/etc/passwd')",
		"SELECT * FROM read_parquet('" + testLake.root + "/datasets/gp/versions/1/manifest.json')",
		"SET enable_external_access = true",
		"COPY patients TO '/tmp/leak.csv'",
		"INSTALL httpfs",
	} {
		if _, err := eng.DB().ExecContext(t.Context(), q); err == nil {
			t.Errorf("%s: allowed", q)
		}
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(eng.Manifest.Tables["patients"].Rows); err != nil || buf.Len() == 0 {
		t.Fatal("manifest missing")
	}
}

// TestEveryGoldenQueryAnswers runs every golden query through the service.
func TestEveryGoldenQueryAnswers(t *testing.T) {
	s := newService(t)
	if _, err := CreateProject(s.state, ProjectSpec{Name: "big", Epsilon: 100, Delta: 1e-3, Datasets: []string{"gp"}}); err != nil {
		t.Fatal(err)
	}
	for name, text := range goldenQueries {
		a, err := s.Query(t.Context(), "big", mustParse(t, text))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(a.Measures) == 0 {
			t.Fatalf("%s: no measures", name)
		}
	}
}

// remoteStore hides the local folder's LocalPath, as an S3 store would.
type remoteStore struct{ catalog.Store }

// TestRemoteLakeCache: a lake that is not a local folder is read through
// the state's cache; a corrupted cached part is fetched again, not trusted.
func TestRemoteLakeCache(t *testing.T) {
	remote := catalog.NewLake(remoteStore{lake(t).Store()})
	state := t.TempDir()
	s, err := New(Config{Lake: remote, State: state})
	if err != nil {
		t.Fatal(err)
	}
	m, err := remote.Manifest(t.Context(), "gp", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Engine(t.Context(), "gp", 0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	cached := filepath.Join(state, "cache", filepath.FromSlash(m.Tables["patients"].Parts[0].Path))
	if err := os.WriteFile(cached, []byte("not parquet"), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err := remote.Local(t.Context(), m, filepath.Join(state, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	if files["patients"][0] != cached {
		t.Fatalf("patients read from %s, want the cache", files["patients"][0])
	}
	if st, _ := os.Stat(cached); st.Size() != m.Tables["patients"].Parts[0].Size {
		t.Fatalf("corrupted cache kept: %d bytes", st.Size())
	}
}
