package api

import (
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
)

// TestWorkflowEndToEnd: a request submitted, reviewed and approved by two
// DAC members over HTTP becomes a project that answers queries within
// exactly the granted budget, until it is exhausted, amended, expired and
// withdrawn; the audit log records it all and verifies.
func TestWorkflowEndToEnd(t *testing.T) {
	x := newHub(t)
	req := request("t2d", 4)
	req["researchers"] = []string{"sam"}
	r := x.must(t, "rosa", "POST", "/v1/requests", req)
	if r["id"] != "req-1" || r["state"] != "submitted" {
		t.Fatalf("submitted: %v", r)
	}
	query := func(eps string, min int) string {
		return `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": ` + strconv.Itoa(min) +
			`}}, "measures": [{"kind": "count"}], "epsilon": ` + eps + `}`
	}
	if code, _ := x.call(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.5", 18)); code != 404 {
		t.Fatalf("query before approval: %d", code)
	}
	x.must(t, "dina", "POST", "/v1/requests/req-1/review", nil)
	r = x.must(t, "dina", "POST", "/v1/requests/req-1/approve", map[string]any{"reason": "sound", "epsilon": 2, "max_query_epsilon": 1})
	if r["state"] != "in_review" {
		t.Fatalf("after one approval: %v", r["state"])
	}
	if code, _ := x.call(t, "dina", "POST", "/v1/requests/req-1/approve", map[string]any{"reason": "again"}); code != 409 {
		t.Fatalf("approving twice: %d", code)
	}
	r = x.must(t, "dev", "POST", "/v1/requests/req-1/approve", map[string]any{"reason": "agreed", "conditions": "publish the code"})
	if r["state"] != "approved_with_conditions" {
		t.Fatalf("after two approvals: %v", r["state"])
	}
	b := x.must(t, "sam", "GET", "/v1/projects/t2d/budget", nil)
	if b["epsilon_total"] != 2.0 || b["max_query_epsilon"] != 1.0 || b["epsilon_spent"] != 0.0 {
		t.Fatalf("granted budget: %v", b)
	}
	// Spend exactly the grant: 0.5 + 1 + 0.5, then a refusal.
	a := x.must(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.5", 18))
	if v := a["measures"].([]any)[0].(map[string]any)["value"].(float64); v < 1500 || v > 3000 {
		t.Fatalf("count of adults = %v", v)
	}
	if code, _ := x.call(t, "rosa", "POST", "/v1/projects/t2d/queries", query("1.5", 19)); code != 400 {
		t.Fatalf("over the per-query cap: %d", code)
	}
	x.must(t, "sam", "POST", "/v1/projects/t2d/queries", query("1", 20))
	x.must(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.5", 21))
	if code, out := x.call(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.1", 22)); code != 409 {
		t.Fatalf("exhausted: %d %v", code, out)
	}
	if rep := x.must(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.5", 18)); rep["repeat"] != true {
		t.Fatalf("a repeat after exhaustion is not free: %v", rep)
	}
	if code, _ := x.call(t, "rosa", "POST", "/v1/projects/t2d/queries", `{"dataset": "hes", "measures": [{"kind": "count"}], "epsilon": 0.1}`); code != 403 {
		t.Fatalf("dataset not approved: %d", code)
	}
	b = x.must(t, "dina", "GET", "/v1/projects/t2d/budget", nil)
	if b["epsilon_spent"] != 2.0 || b["epsilon_remaining"] != 0.0 || b["queries"] != 3.0 {
		t.Fatalf("budget after exhaustion: %v", b)
	}

	// An amendment below the spend is refused; a larger one is granted.
	x.must(t, "rosa", "POST", "/v1/requests/req-1/amend", map[string]any{"epsilon": 3, "extend_days": 30, "reason": "a follow-up question"})
	if code, out := x.call(t, "dina", "POST", "/v1/requests/req-1/approve", map[string]any{"reason": "less", "epsilon": 1.5}); code != 400 ||
		!strings.Contains(out.(map[string]any)["error"].(string), "already spent") {
		t.Fatalf("amendment below the spend: %d %v", code, out)
	}
	x.must(t, "dina", "POST", "/v1/requests/req-1/approve", map[string]any{"reason": "fine"})
	x.must(t, "dev", "POST", "/v1/requests/req-1/approve", map[string]any{"reason": "fine"})
	x.must(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.5", 23))
	b = x.must(t, "rosa", "GET", "/v1/projects/t2d/budget", nil)
	if b["epsilon_total"] != 3.0 || b["epsilon_remaining"] != 0.5 {
		t.Fatalf("after the amendment: %v", b)
	}

	// Expiry: 90 days from the decision, plus 30.
	x.clock.Add(121 * 24 * time.Hour)
	for _, u := range []string{"rosa", "dina", "ada"} { // their tokens expired at 90 days
		var err error
		if x.tok[u], err = x.gov.IssueToken(governance.Host("test"), u, 0); err != nil {
			t.Fatal(err)
		}
	}
	if code, out := x.call(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.1", 24)); code != 403 ||
		!strings.Contains(out.(map[string]any)["error"].(string), "expired") {
		t.Fatalf("after expiry: %d %v", code, out)
	}
	// Withdrawal.
	x.must(t, "rosa", "POST", "/v1/requests/req-1/withdraw", nil)
	if code, _ := x.call(t, "rosa", "POST", "/v1/projects/t2d/queries", query("0.1", 25)); code != 403 {
		t.Fatalf("after withdrawal: %d", code)
	}

	// The audit log has every query with its cost, and verifies.
	es := x.must(t, "dina", "GET", "/v1/audit/verify", nil)
	if es["entries"].(float64) < 20 {
		t.Fatalf("verify: %v", es)
	}
	code, out := x.call(t, "ada", "GET", "/v1/audit?action=query&outcome=ok&project=t2d", nil)
	if code != 200 {
		t.Fatal(code)
	}
	var spent float64
	for _, e := range out.([]any) {
		m := e.(map[string]any)
		if m["query_sha256"] == "" || m["actor"] == "" {
			t.Fatalf("query entry %v", m)
		}
		if u, ok := m["epsilon_units"].(float64); ok {
			spent += u
		}
	}
	if len(out.([]any)) != 5 || spent != 2.5e6 {
		t.Fatalf("%d query entries charging %v units; want 5 and 2.5e6", len(out.([]any)), spent)
	}
	if _, err := governance.Verify(x.state, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestTokensOverHTTP: forged, malformed, expired and revoked tokens get
// 401 with a reason, and each is recorded.
func TestTokensOverHTTP(t *testing.T) {
	x := newHub(t)
	before, anonymous := x.refusals(t), x.gov.AnonymousRefusals()
	for name, tok := range map[string]string{
		"forged": "hub_" + strings.Repeat("0", 64), "malformed": "hub_xyz", "other scheme": "Basic cm9zYTp4",
	} {
		r := httptest.NewRequest("GET", "/v1/datasets", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		x.h.ServeHTTP(w, r)
		if w.Code != 401 || w.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: %d", name, w.Code)
		}
	}
	x.must(t, "ada", "POST", "/v1/users/rosa/revoke", map[string]any{})
	if code, _ := x.call(t, "rosa", "GET", "/v1/datasets", nil); code != 401 {
		t.Fatalf("revoked: %d", code)
	}
	tok := x.must(t, "ada", "POST", "/v1/users/rosa/tokens", map[string]any{"token_days": 1})["token"].(string)
	x.tok["rosa"] = tok
	x.must(t, "rosa", "GET", "/v1/whoami", nil)
	x.clock.Add(25 * time.Hour)
	if code, out := x.call(t, "rosa", "GET", "/v1/datasets", nil); code != 401 || !strings.Contains(out.(map[string]any)["error"].(string), "expired") {
		t.Fatalf("expired: %d %v", code, out)
	}
	// The three that name no user are counted, the first recorded at
	// once (the rest in a summary a minute later); the revoked and the
	// expired token are recorded each.
	if got, anon := x.refusals(t)-before, x.gov.AnonymousRefusals()-anonymous; got != 3 || anon != 3 {
		t.Fatalf("%d refusals recorded, %d anonymous counted; want 3 and 3", got, anon)
	}
	log, _ := os.ReadFile(filepath.Join(x.state, "audit.jsonl"))
	if strings.Contains(string(log), tok) {
		t.Fatal("a token is in the audit log")
	}
}

// TestBadQueries: hostile and malformed queries are refused with 400, run
// no SQL, spend nothing, and are recorded without their text.
func TestBadQueries(t *testing.T) {
	x := newHub(t)
	x.approved(t, "study", 1)
	inject := `x' OR 1=1; DROP TABLE patients; --`
	deep := strings.Repeat(`{"not": `, 40) + `{"sex": ["female"]}` + strings.Repeat(`}`, 40)
	cases := map[string]string{
		"not JSON":           `count everyone`,
		"unknown field":      `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5, "sql": "1"}`,
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
	before := x.refusals(t)
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			code, out := x.call(t, "rosa", "POST", "/v1/projects/study/queries", body)
			if code != 400 {
				t.Fatalf("status %d (%v), want 400", code, out)
			}
			msg, _ := out.(map[string]any)["error"].(string)
			if !strings.HasPrefix(msg, "bad query") || strings.Contains(msg, "DROP TABLE") {
				t.Fatalf("message %q", msg)
			}
		})
	}
	if b := x.must(t, "rosa", "GET", "/v1/projects/study/budget", nil); b["epsilon_spent"] != 0.0 || b["queries"] != 0.0 {
		t.Fatalf("bad queries spent budget: %v", b)
	}
	if got := x.refusals(t) - before; got != len(cases) {
		t.Fatalf("%d refusals recorded for %d bad queries", got, len(cases))
	}
	if log, _ := os.ReadFile(filepath.Join(x.state, "audit.jsonl")); strings.Contains(string(log), "DROP TABLE") {
		t.Fatal("a query's text reached the audit log")
	}
	// The smallest query answers with the documented fields.
	a := x.must(t, "rosa", "POST", "/v1/projects/study/queries", `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.5}`)
	m := a["measures"].([]any)[0].(map[string]any)
	for _, k := range []string{"value", "ci_low", "ci_high", "epsilon", "suppressed"} {
		if _, ok := m[k]; !ok {
			t.Errorf("answer lacks %s: %v", k, m)
		}
	}
	if code, _ := x.call(t, "rosa", "GET", "/v1/datasets/nope", nil); code != 404 {
		t.Fatalf("unknown dataset: %d", code)
	}
	// Row counts are rounded to 10 for everyone but admins.
	rows := func(who string) (float64, any) {
		d := x.must(t, who, "GET", "/v1/datasets/gp", nil)
		return d["tables"].(map[string]any)["patients"].(map[string]any)["rows"].(float64), d["rows_rounded"]
	}
	exact, flag := rows("ada")
	round, rflag := rows("rosa")
	if flag != nil || rflag != true || int64(round)%10 != 0 || math.Abs(round-exact) > 5 || (int64(exact)%10 != 0 && round == exact) {
		t.Errorf("patients rows: admin %v (%v), researcher %v (%v)", exact, flag, round, rflag)
	}
}

// The smaller faults of an outside review: each is refused now.
func TestBodyAndTokenEdges(t *testing.T) {
	x := newHub(t)
	// A second JSON value after the body.
	if code, _ := x.call(t, "ada", "POST", "/v1/users/rosa/tokens", `{"token_days":1} {"token_days":2}`); code != http.StatusBadRequest {
		t.Errorf("a second JSON value: %d", code)
	}
	// A null body on revoke must not revoke every token.
	if code, _ := x.call(t, "ada", "POST", "/v1/users/rosa/revoke", "null"); code != http.StatusBadRequest {
		t.Errorf("a null revoke body: %d", code)
	}
	if code, _ := x.call(t, "rosa", "GET", "/v1/whoami", nil); code != http.StatusOK {
		t.Error("a null revoke body revoked rosa's token")
	}
	// token_days past ten years (it overflowed a duration).
	for _, days := range []string{"100000000", "-1", "1e15"} {
		if code, _ := x.call(t, "ada", "POST", "/v1/users/rosa/tokens", `{"token_days":`+days+`}`); code != http.StatusBadRequest {
			t.Errorf("token_days %s: %d", days, code)
		}
	}
	// A body over the limit is 413, not 400.
	big := `{"token_days":1,"x":"` + strings.Repeat("a", 2<<20) + `"}`
	if code, _ := x.call(t, "ada", "POST", "/v1/users/rosa/tokens", big); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a 2 MiB body: %d", code)
	}
	// A bare token, without Bearer.
	r := httptest.NewRequest("GET", "/v1/whoami", nil)
	r.Header.Set("Authorization", x.tok["rosa"])
	w := httptest.NewRecorder()
	x.h.ServeHTTP(w, r)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("a bare token: %d", w.Code)
	}
	// An ε below the ledger's unit (it was released charged nothing).
	x.approved(t, "tiny-eps", 2)
	for _, eps := range []string{"1e-16", "2e-50", "0.0005"} {
		code, _ := x.call(t, "rosa", "POST", "/v1/projects/tiny-eps/queries", `{"dataset":"gp","measures":[{"kind":"count"}],"epsilon":`+eps+`}`)
		if code != http.StatusBadRequest {
			t.Errorf("epsilon %s: %d", eps, code)
		}
	}
}

// A change the state cannot take is 503 with Retry-After, not 500.
func TestUnavailableIs503(t *testing.T) {
	w := httptest.NewRecorder()
	s := &server{log: slog.New(slog.DiscardHandler)}
	s.reply(w, nil, fmt.Errorf("%w; nothing was changed (disk full)", governance.ErrUnavailable))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("%d, Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
}

// A client that keeps sending bad tokens is answered 429 after
// MaxAuthFailures in a minute, without an audit line or a look at the
// token; another client, and the same one a minute later, are served.
func TestAuthFailuresLimited(t *testing.T) {
	x := newHub(t)
	call := func(addr, tok string) int {
		r := httptest.NewRequest("GET", "/v1/whoami", nil)
		r.RemoteAddr = addr + ":4000"
		if tok != "" {
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		w := httptest.NewRecorder()
		x.h.ServeHTTP(w, r)
		return w.Code
	}
	for range MaxAuthFailures {
		if code := call("10.0.0.9", "hub_bad"); code != http.StatusUnauthorized {
			t.Fatalf("a bad token: %d", code)
		}
	}
	counted := x.gov.AnonymousRefusals()
	if code := call("10.0.0.9", x.tok["rosa"]); code != http.StatusTooManyRequests {
		t.Fatalf("past the limit: %d, want 429", code)
	}
	if x.gov.AnonymousRefusals() != counted {
		t.Fatal("a limited request reached the store")
	}
	if code := call("10.0.0.10", x.tok["rosa"]); code != http.StatusOK {
		t.Fatalf("another client: %d", code)
	}
	x.clock.Add(61 * time.Second)
	if code := call("10.0.0.9", x.tok["rosa"]); code != http.StatusOK {
		t.Fatalf("a minute later: %d", code)
	}
}

// A charge the ledger synced but whose audit entry was never written (the
// server killed in between) is written to the audit log when the ledger
// is next opened, once: every ε charged is in the verified chain.
func TestUnauditedChargeRecovered(t *testing.T) {
	x := newHub(t)
	x.approved(t, "t2d", 2)
	q := `{"dataset": "gp", "index_date": "2024-01-01", "criteria": {"age": {"min": 18}}, "measures": [{"kind": "count"}], "epsilon": 0.25}`
	x.must(t, "rosa", "POST", "/v1/projects/t2d/queries", q)
	// The crash: the service charges and syncs the ledger; the audit
	// entry that the handler would write next never is.
	lost, err := cohorts.ParseQuery(strings.NewReader(strings.Replace(q, "18", "40", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.svc.Query(t.Context(), "t2d", lost); err != nil {
		t.Fatal(err)
	}
	if e, _ := x.gov.AuditedSpend("t2d"); e != governance.Units(0.25, governance.EpsilonUnit) {
		t.Fatalf("before recovery the audit log holds %d units", e)
	}
	x.svc.Close()
	restart := func() {
		svc, err := cohorts.New(cohorts.Config{Lake: lake(t), State: x.state, Projects: x.gov, Now: x.clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		b, err := svc.Budget("t2d")
		if err != nil {
			t.Fatal(err)
		}
		if e, _ := x.gov.AuditedSpend("t2d"); e != b.EpsilonSpentU || e != governance.Units(0.5, governance.EpsilonUnit) {
			t.Fatalf("audit log %d units, ledger %d, want both ε 0.5", e, b.EpsilonSpentU)
		}
	}
	restart()
	restart() // a second start writes nothing more
	var recovered int
	entries, err := x.gov.Audit(governance.Host("test"), governance.AuditFilter{Action: governance.ActQuery})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Actor == "hub:recovery" {
			recovered++
			if e.EpsilonU != governance.Units(0.25, governance.EpsilonUnit) || !strings.Contains(e.Reason, "not released") {
				t.Errorf("recovered entry: %+v", e)
			}
		}
	}
	if recovered != 1 {
		t.Fatalf("%d recovery entries, want 1", recovered)
	}
	if _, err := governance.Verify(x.state, nil, nil); err != nil {
		t.Fatal(err)
	}
}
