package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/internal/testclock"
	"github.com/nhs-hub/hub/internal/testlake"
)

// lake is the package's synthetic dataset, "gp", published once.
var lake = testlake.Lake

func TestMain(m *testing.M) { testlake.Main(m) }

// hub is a running API over a fresh state folder, with users:
// ada (admin), rosa and sam (researchers), dina and dev (DAC), ana
// (analyst) and zed (a researcher no test acts as).
type hub struct {
	gov   *governance.Store
	svc   *cohorts.Service
	h     http.Handler
	state string
	clock *testclock.Clock
	tok   map[string]string
}

func newHub(t *testing.T) *hub {
	t.Helper()
	x := &hub{state: t.TempDir(), clock: testclock.New(time.Now().UTC()), tok: map[string]string{}}
	var err error
	if x.gov, err = governance.Open(x.state, governance.Options{Now: x.clock.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.gov.Close() })
	if x.svc, err = cohorts.New(cohorts.Config{Lake: lake(t), State: x.state, Projects: x.gov, Now: x.clock.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.svc.Close() })
	x.h = Handler(x.gov, x.svc, nil)
	for name, roles := range map[string][]governance.Role{
		"ada": {governance.Admin}, "rosa": {governance.Researcher}, "sam": {governance.Researcher},
		"dina": {governance.DAC}, "dev": {governance.DAC}, "ana": {governance.Analyst}, "zed": {governance.Researcher},
	} {
		if x.tok[name], err = x.gov.AddUser(governance.Host("test"), name, roles, 0); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// request is a valid request body for project (empty: the request's ID).
func request(project string, eps float64) map[string]any {
	return map[string]any{"project": project, "title": "T2D care", "purpose": "Measure HbA1c control.",
		"lay_summary": "How well is diabetes controlled?", "datasets": []string{"gp"}, "epsilon": eps,
		"delta": 1e-5, "max_query_epsilon": 1.0, "legal_basis": "anonymised", "national_opt_out_applies": true,
		"duration_days": 90}
}

// call sends a request as a user ("" for anonymous) and returns the
// status and the decoded JSON body.
func (x *hub) call(t *testing.T, who, method, path string, body any) (int, any) {
	t.Helper()
	var text string
	switch b := body.(type) {
	case nil:
	case string:
		text = b
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		text = string(data)
	}
	r := httptest.NewRequest(method, path, strings.NewReader(text))
	if who != "" {
		r.Header.Set("Authorization", "Bearer "+x.tok[who])
	}
	w := httptest.NewRecorder()
	x.h.ServeHTTP(w, r)
	var out any
	if w.Body.Len() > 0 {
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
			t.Fatalf("%s %s: body is not JSON: %s", method, path, w.Body.String())
		}
	}
	return w.Code, out
}

// must calls and requires 200.
func (x *hub) must(t *testing.T, who, method, path string, body any) map[string]any {
	t.Helper()
	code, out := x.call(t, who, method, path, body)
	if code != http.StatusOK {
		t.Fatalf("%s %s as %s: %d %v", method, path, who, code, out)
	}
	m, _ := out.(map[string]any)
	return m
}

// approved makes rosa's request for project (req-N) and has dina and dev
// approve it.
func (x *hub) approved(t *testing.T, project string, eps float64) string {
	t.Helper()
	id := x.must(t, "rosa", "POST", "/v1/requests", request(project, eps))["id"].(string)
	x.must(t, "dina", "POST", "/v1/requests/"+id+"/approve", map[string]any{"reason": "sound"})
	r := x.must(t, "dev", "POST", "/v1/requests/"+id+"/approve", map[string]any{"reason": "agreed"})
	if r["state"] != "approved" {
		t.Fatalf("after two approvals: %v", r["state"])
	}
	return id
}

// refusals counts the audit log's refused entries.
func (x *hub) refusals(t *testing.T) int {
	t.Helper()
	es, err := x.gov.Audit(governance.Host("test"), governance.AuditFilter{Outcome: governance.Refused})
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}
