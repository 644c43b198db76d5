package web

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/governance"
)

// Every page with an API twin is allowed to exactly the users the API
// allows (the role × action table of docs/governance.md), and the pages
// without one to the roles written here; a signed-out browser is sent to
// sign in.
func TestPagesObeyRoles(t *testing.T) {
	x := newHub(t)
	id := x.approved(t, "t2d")
	for _, c := range []struct {
		page string
		// api is the page's twin (method, path, body), "" for none.
		api, method, body string
		// allowed, for a page without a twin.
		allowed []string
	}{
		{page: "/projects/t2d", api: "/v1/projects/t2d/budget", method: "GET"},
		{page: "/projects/t2d/query", api: "/v1/projects/t2d/queries", method: "POST", body: `{"dataset": "gp", "measures": [{"kind": "count"}], "epsilon": 0.01}`},
		{page: "/requests", api: "/v1/requests", method: "GET"},
		{page: "/requests/" + id, api: "/v1/requests/" + id, method: "GET"},
		{page: "/admin/users", api: "/v1/users", method: "GET"},
		{page: "/requests/new", allowed: []string{"rosa", "sam"}},
		{page: "/projects", allowed: []string{"ada", "rosa", "sam", "dina", "dev", "ana"}},
	} {
		for who := range users {
			want := false
			if c.api != "" {
				want = x.api(t, who, c.method, c.api, c.body) == http.StatusOK
			} else {
				for _, a := range c.allowed {
					want = want || a == who
				}
			}
			code, _ := x.signedIn(t, who).get(c.page)
			if got := code == http.StatusOK; got != want || (!got && code != http.StatusForbidden) {
				t.Errorf("%s as %s: %d, the API allows: %v", c.page, who, code, want)
			}
		}
		if code, _ := x.browser(t).get(c.page); code != http.StatusSeeOther {
			t.Errorf("%s signed out: %d, want a redirect to sign in", c.page, code)
		}
	}
	for _, page := range []string{"/", "/register", "/sign-in", "/catalog", "/catalog/gp/1"} {
		if code, _ := x.browser(t).get(page); code != http.StatusOK {
			t.Errorf("%s signed out: %d", page, code)
		}
	}
	for _, page := range []string{"/catalog/gp/9", "/catalog/gp/x", "/catalog/..%2Fetc/1"} {
		if code, _ := x.browser(t).get(page); code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", page, code)
		}
	}
}

// Sign-in: a bad token is refused and counted, a form without its CSRF
// token is refused, the session cookie is HttpOnly and SameSite=Strict,
// sign-out ends the session on the server, a revoked token ends its
// sessions, and idle sessions expire.
func TestSessions(t *testing.T) {
	x := newHub(t)
	b := x.browser(t)
	if code, body := b.signIn("not-a-token"); code != http.StatusUnauthorized || !strings.Contains(body, "was not accepted") {
		t.Errorf("bad token: %d", code)
	}
	if code, _ := b.post("/sign-in", url.Values{"token": {x.tok["rosa"]}}); code != http.StatusForbidden {
		t.Errorf("sign-in without the CSRF token: %d", code)
	}
	_, page := b.get("/sign-in")
	code, _, resp := b.postResp("/sign-in", url.Values{"csrf": {csrf(page)}, "token": {x.tok["rosa"]}, "next": {"//evil.example/"}})
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Errorf("sign-in with an outside next: %d to %q", code, resp.Header.Get("Location"))
	}
	var session *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			session = c
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || strings.Contains(session.Value, x.tok["rosa"]) {
		t.Fatalf("session cookie: %+v", session)
	}
	for _, h := range []string{"Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("no %s header", h)
		}
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("CSP: %s", resp.Header.Get("Content-Security-Policy"))
	}
	_, home := b.get("/")
	// A POST without the session's CSRF token changes nothing.
	if code, _ := b.post("/sign-out", url.Values{}); code != http.StatusForbidden {
		t.Errorf("sign-out without CSRF: %d", code)
	}
	if code, _ := b.get("/projects"); code != http.StatusOK {
		t.Errorf("after a refused sign-out: %d", code)
	}
	// Signing out deletes the session: the old cookie no longer works.
	if code, _ := b.post("/sign-out", url.Values{"csrf": {csrf(home)}}); code != http.StatusSeeOther {
		t.Errorf("sign-out: %d", code)
	}
	old := x.browser(t)
	u, _ := url.Parse(x.srv.URL)
	old.c.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: session.Value}})
	if code, _ := old.get("/projects"); code != http.StatusSeeOther {
		t.Errorf("the signed-out session still works: %d", code)
	}

	// A revoked token ends its sessions.
	s := x.signedIn(t, "sam")
	ada, _ := x.gov.Authenticate(x.tok["ada"])
	if _, err := x.gov.RevokeTokens(ada, "sam", nil); err != nil {
		t.Fatal(err)
	}
	if code, _ := s.get("/projects"); code != http.StatusSeeOther {
		t.Errorf("a revoked token's session: %d", code)
	}
	// An idle session expires.
	d := x.signedIn(t, "dina")
	x.clock.Add(idleTimeout + time.Minute)
	if code, _ := d.get("/requests"); code != http.StatusSeeOther {
		t.Errorf("an idle session: %d", code)
	}
}

// Failed sign-ins are limited per address, as the API's tokens are.
func TestSignInLimited(t *testing.T) {
	x := newHub(t)
	b := x.browser(t)
	for range 20 {
		b.signIn("wrong")
	}
	if code, _ := b.signIn(x.tok["rosa"]); code != http.StatusTooManyRequests {
		t.Errorf("after 20 failures: %d", code)
	}
	if code := x.api(t, "rosa", "GET", "/v1/whoami", ""); code != http.StatusTooManyRequests {
		t.Errorf("the API after 20 failed sign-ins from the address: %d", code)
	}
}

// The builder: checking the cost spends nothing and shows the JSON and
// the expected interval; running spends once and shows the answer as a
// chart and a table; the CSV holds the same figures; a query over the
// project's cap is refused at no cost.
func TestBuilder(t *testing.T) {
	x := newHub(t)
	x.approved(t, "t2d")
	b := x.signedIn(t, "rosa")
	code, page := b.get("/projects/t2d/query")
	if code != http.StatusOK {
		t.Fatalf("builder: %d", code)
	}
	form := url.Values{"csrf": {csrf(page)}, "action": {"preview"}, "dataset": {"gp"}, "index_date": {"2024-01-01"}, "sex": {"female"},
		"age_min": {"40"}, "age_max": {"80"}, "snomed": {"44054006"}, "by": {"age_band"}, "epsilon": {"0.5"}}
	code, preview := b.post("/projects/t2d/query", form)
	if code != http.StatusOK || !strings.Contains(preview, "ε 0.5") || !strings.Contains(preview, "&#34;age_band&#34;") || !strings.Contains(preview, "± 6") {
		t.Fatalf("preview: %d\n%s", code, preview)
	}
	if bud, _ := x.svc.Budget("t2d"); bud.Queries != 0 {
		t.Fatalf("the preview spent: %+v", bud)
	}
	var jsonField string
	if i := strings.Index(preview, `name="json" value="`); i >= 0 {
		rest := preview[i+len(`name="json" value="`):]
		jsonField = rest[:strings.Index(rest, `"`)]
	}
	jsonText := strings.NewReplacer("&#34;", `"`, "&#43;", "+", "&#39;", "'", "&amp;", "&", "&lt;", "<", "&gt;", ">", "&#10;", "\n").Replace(jsonField)
	code, _, resp := b.postResp("/projects/t2d/query", url.Values{"csrf": {csrf(page)}, "action": {"run"}, "json": {jsonText}})
	if code != http.StatusSeeOther {
		t.Fatalf("run: %d", code)
	}
	where := resp.Header.Get("Location")
	code, answer := b.get(where)
	if code != http.StatusOK || !strings.Contains(answer, "<svg") || !strings.Contains(answer, "95% interval") || !strings.Contains(answer, "40-44") {
		t.Fatalf("answer %s: %d\n%s", where, code, answer)
	}
	if bud, _ := x.svc.Budget("t2d"); bud.Queries != 1 || bud.EpsilonSpent != 0.5 {
		t.Errorf("after a run: %+v", bud)
	}
	code, csvText := b.get(where + "/csv")
	if code != http.StatusOK || !strings.HasPrefix(csvText, "measure,kind,cell,value,ci_low,ci_high,suppressed,epsilon\n") || strings.Count(csvText, "\n") < 10 {
		t.Errorf("CSV: %d\n%s", code, csvText)
	}
	// Over the cap: refused, nothing spent.
	form.Set("epsilon", "3")
	form.Set("action", "preview")
	if _, over := b.post("/projects/t2d/query", form); !strings.Contains(over, "more than this project can spend") {
		t.Errorf("the preview of an over-cap query does not say so")
	}
	form.Set("action", "run")
	if code, _ := b.post("/projects/t2d/query", form); code != http.StatusBadRequest {
		t.Errorf("an over-cap run: %d", code)
	}
	if bud, _ := x.svc.Budget("t2d"); bud.Queries != 1 {
		t.Errorf("the refused run spent: %+v", bud)
	}
	// A bad field is shown beside the field, with an error summary.
	form.Set("action", "preview")
	form.Set("age_min", "forty")
	if code, bad := b.post("/projects/t2d/query", form); code != http.StatusBadRequest || !strings.Contains(bad, "There is a problem") || !strings.Contains(bad, `href="#age_min"`) {
		t.Errorf("a bad age: %d", code)
	}
}

// A researcher's request goes through the web app to two committee
// members' approvals with conditions, and the register then shows it with
// the dataset's opt-out figures rounded to 5.
func TestRequestToRegister(t *testing.T) {
	x := newHub(t)
	r := x.signedIn(t, "rosa")
	_, page := r.get("/requests/new")
	code, _, resp := r.postResp("/requests/new", url.Values{"csrf": {csrf(page)}, "title": {"Asthma in young adults"}, "project": {"asthma"},
		"purpose": {"Count asthma reviews."}, "lay_summary": {"How many young adults with asthma have a yearly review?"}, "datasets": {"gp"},
		"epsilon": {"2"}, "max_query_epsilon": {"0.5"}, "delta": {"0.00001"}, "legal_basis": {"s251"}, "duration_days": {"180"}, "national_opt_out": {"yes"}})
	if code != http.StatusSeeOther {
		t.Fatalf("new request: %d", code)
	}
	where := resp.Header.Get("Location")
	for i, who := range []string{"dina", "dev"} {
		d := x.signedIn(t, who)
		code, page := d.get(where)
		if code != http.StatusOK || !strings.Contains(page, "What ε 2 means") || !strings.Contains(page, "Approve") {
			t.Fatalf("%s's view of the request: %d", who, code)
		}
		code, body := d.post(where+"/approve", url.Values{"csrf": {csrf(page)}, "epsilon": {"1.5"}, "conditions": {"Publish only rates, not counts under 50."},
			"suppress_below": {"20"}, "round_to": {"10"}, "min_cohort": {"25"}, "reason": {"sound design"}, "expires": {x.clock.Now().AddDate(0, 5, 0).Format(time.DateOnly)}})
		if code != http.StatusSeeOther {
			t.Fatalf("%s's approval: %d\n%s", who, code, body)
		}
		if i == 0 {
			if _, after := d.get(where); !strings.Contains(after, "You have voted") {
				t.Errorf("after one vote the page still offers a vote")
			}
		}
	}
	p, err := x.gov.Project("asthma")
	if err != nil || p.EpsilonU != governance.Units(1.5, governance.EpsilonUnit) || p.Rules == nil || p.Rules.SuppressBelow != 20 || len(p.Conditions) != 1 {
		t.Fatalf("the project: %+v %v", p, err)
	}
	code, reg := x.browser(t).get("/register")
	if code != http.StatusOK || !strings.Contains(reg, "How many young adults with asthma") || !strings.Contains(reg, "Approved with conditions") ||
		!strings.Contains(reg, "Publish only rates") || !strings.Contains(reg, "National Data Opt-out") {
		t.Fatalf("register: %d\n%s", code, reg)
	}
	nd, ds := withheld(mustManifestReport(t, x))
	if nd%5 != 0 || ds%5 != 0 || nd == 0 {
		t.Errorf("opt-out figures %d and %d are not rounded to 5", nd, ds)
	}
}

// The embedded nhsuk-frontend is the version web/package-lock.json pins,
// byte for byte when the package is installed (make web-deps).
func TestAssetsPinned(t *testing.T) {
	lock, err := os.ReadFile("package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		Packages map[string]struct{ Version string } `json:"packages"`
	}
	if err := json.Unmarshal(lock, &l); err != nil {
		t.Fatal(err)
	}
	v := l.Packages["node_modules/nhsuk-frontend"].Version
	css, err := staticFS.ReadFile("static/nhsuk/nhsuk-frontend.min.css")
	if err != nil || v == "" || !strings.Contains(string(css), `--nhsuk-frontend-version:"`+v+`"`) {
		t.Fatalf("the embedded CSS is not nhsuk-frontend %q (make web-assets): %v", v, err)
	}
	for _, f := range []string{"nhsuk-frontend.min.css", "nhsuk-frontend.min.js"} {
		installed, err := os.ReadFile(filepath.Join("node_modules", "nhsuk-frontend", "dist", "nhsuk", f))
		if err != nil {
			t.Fatalf("%v (make web-deps)", err)
		}
		embedded, _ := staticFS.ReadFile("static/nhsuk/" + f)
		if !bytes.Equal(installed, embedded) {
			t.Errorf("static/nhsuk/%s differs from the installed package: make web-assets", f)
		}
	}
}

// An approved request's submitter asks for more budget; two committee
// members approve the amendment from the request page; the submitter then
// withdraws the request, which ends the project.
func TestAmendAndWithdraw(t *testing.T) {
	x := newHub(t)
	id := x.approved(t, "t2d")
	r := x.signedIn(t, "rosa")
	_, page := r.get("/requests/" + id)
	if !strings.Contains(page, "Ask for an amendment") {
		t.Fatal("the submitter is not offered an amendment")
	}
	if code, _ := r.post("/requests/"+id+"/amend", url.Values{"csrf": {csrf(page)}, "epsilon": {"8"}, "extend_days": {"30"}, "reason": {"A second outcome."}}); code != http.StatusSeeOther {
		t.Fatalf("amend: %d", code)
	}
	if _, queue := x.signedIn(t, "dina").get("/requests"); !strings.Contains(queue[strings.Index(queue, "Waiting for the committee"):strings.Index(queue, "Decided")], id) {
		t.Errorf("the pending amendment is not in the committee's queue")
	}
	for _, who := range []string{"dina", "dev"} {
		d := x.signedIn(t, who)
		_, page := d.get("/requests/" + id)
		if !strings.Contains(page, "Approve amendment 1") {
			t.Fatalf("%s is not offered the amendment", who)
		}
		if code, body := d.post("/requests/"+id+"/approve", url.Values{"csrf": {csrf(page)}, "reason": {"fine"}}); code != http.StatusSeeOther {
			t.Fatalf("%s's approval of the amendment: %d %s", who, code, between(body, `nhsuk-body-l">`, "<"))
		}
	}
	if p, _ := x.gov.Project("t2d"); p.EpsilonU != governance.Units(8, governance.EpsilonUnit) {
		t.Errorf("after the amendment: ε units %d", p.EpsilonU)
	}
	_, page = r.get("/requests/" + id)
	if code, _ := r.post("/requests/"+id+"/withdraw", url.Values{"csrf": {csrf(page)}}); code != http.StatusSeeOther {
		t.Fatalf("withdraw: %d", code)
	}
	if code, _ := r.get("/projects/t2d/query"); code != http.StatusForbidden {
		t.Errorf("the builder of a withdrawn project: %d", code)
	}
	if _, reg := x.browser(t).get("/register"); !strings.Contains(reg, "Withdrawn") {
		t.Errorf("the register does not mark the withdrawn project")
	}
}

// An admin adds a user and sees the token once; a new token signs in;
// revoking a user's tokens ends their sessions.
func TestAdminTokens(t *testing.T) {
	x := newHub(t)
	a := x.signedIn(t, "ada")
	_, page := a.get("/admin/users")
	code, added := a.post("/admin/users", url.Values{"csrf": {csrf(page)}, "name": {"nia"}, "roles": {"researcher"}, "token_days": {"30"}})
	if code != http.StatusOK || !strings.Contains(added, "nia's new token, shown this once") {
		t.Fatalf("add user: %d", code)
	}
	token := between(added, `<pre class="hub-json" tabindex="0">`, "</pre>")
	n := x.browser(t)
	if code, _ := n.signIn(token); code != http.StatusSeeOther {
		t.Fatalf("the new user's token: %d", code)
	}
	// One token revoked by its id (the sessions of another stay).
	other := x.browser(t)
	ada, _ := x.gov.Authenticate(x.tok["ada"])
	second, err := x.gov.IssueToken(ada, "nia", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := other.signIn(second); code != http.StatusSeeOther {
		t.Fatalf("nia's second token: %d", code)
	}
	us, _ := x.gov.Users(ada)
	var secondID string
	for _, u := range us {
		if u.Name == "nia" {
			secondID = u.Tokens[len(u.Tokens)-1].ID
		}
	}
	if code, listed := a.get("/admin/users"); code != http.StatusOK || !strings.Contains(listed, `name="token" value="`+secondID+`"`) {
		t.Fatalf("the token %s is not listed with a revoke button", secondID)
	}
	if code, _ := a.post("/admin/users/nia/revoke", url.Values{"csrf": {csrf(page)}, "token": {secondID}}); code != http.StatusOK {
		t.Fatalf("revoke one token: %d", code)
	}
	if code, _ := other.get("/projects"); code != http.StatusSeeOther {
		t.Errorf("the revoked token's session: %d", code)
	}
	if code, _ := n.get("/projects"); code != http.StatusOK {
		t.Errorf("the other token's session ended too: %d", code)
	}
	if code, _ := a.post("/admin/users/nia/revoke", url.Values{"csrf": {csrf(page)}}); code != http.StatusOK {
		t.Fatalf("revoke: %d", code)
	}
	if code, _ := n.get("/projects"); code != http.StatusSeeOther {
		t.Errorf("a revoked user's session: %d", code)
	}
	code, issued := a.post("/admin/users/nia/tokens", url.Values{"csrf": {csrf(page)}})
	if code != http.StatusOK {
		t.Fatalf("new token: %d", code)
	}
	if code, _ := x.browser(t).signIn(between(issued, `<pre class="hub-json" tabindex="0">`, "</pre>")); code != http.StatusSeeOther {
		t.Errorf("the reissued token: %d", code)
	}
	rosa := x.signedIn(t, "rosa")
	_, home := rosa.get("/")
	if code, _ := rosa.post("/admin/users/nia/tokens", url.Values{"csrf": {csrf(home)}}); code != http.StatusForbidden {
		t.Errorf("a researcher issuing a token: %d", code)
	}
}

func between(s, from, to string) string {
	i := strings.Index(s, from)
	if i < 0 {
		return ""
	}
	s = s[i+len(from):]
	return s[:max(strings.Index(s, to), 0)]
}

// The builder writes means, quantiles and exclusions the API takes, and
// the answer shows each with its interval.
func TestBuilderMeasures(t *testing.T) {
	x := newHub(t)
	x.approved(t, "t2d")
	b := x.signedIn(t, "rosa")
	_, page := b.get("/projects/t2d/query")
	for _, c := range []struct {
		measure, want string
	}{{"mean_age", `"kind": "mean"`}, {"quantiles_age", `"ranks"`}, {"mean_obs", `"pick": "last"`}} {
		form := url.Values{"csrf": {csrf(page)}, "action": {"preview"}, "dataset": {"gp"}, "index_date": {"2024-01-01"}, "sex": {"any"},
			"not_snomed": {"46635009"}, "obs_code": {"999791000000106"}, "measure": {c.measure}, "by": {"none"}, "epsilon": {"0.5"}}
		code, preview := b.post("/projects/t2d/query", form)
		text := strings.ReplaceAll(preview, "&#34;", `"`)
		if code != http.StatusOK || !strings.Contains(text, c.want) || !strings.Contains(text, `"not"`) {
			t.Fatalf("%s: %d", c.measure, code)
		}
		form.Set("action", "run")
		code, _, resp := b.postResp("/projects/t2d/query", form)
		if code != http.StatusSeeOther {
			t.Fatalf("%s run: %d", c.measure, code)
		}
		if code, answer := b.get(resp.Header.Get("Location")); code != http.StatusOK || !strings.Contains(answer, " to ") {
			t.Errorf("%s answer: %d", c.measure, code)
		}
	}
	form := url.Values{"csrf": {csrf(page)}, "action": {"preview"}, "dataset": {"gp"}, "measure": {"mean_age"}, "by": {"sex"}, "epsilon": {"0.5"}}
	if code, bad := b.post("/projects/t2d/query", form); code != http.StatusBadRequest || !strings.Contains(bad, "Break down a count") {
		t.Errorf("a mean by sex: %d", code)
	}
}

// A version's catalog page, where the DCAT export's dataset IRI leads,
// shows its data dictionary with rounded row counts, and the catalog lists
// the code lists queries may name.
func TestCatalogPages(t *testing.T) {
	x := newHub(t)
	b := x.browser(t)
	code, page := b.get("/catalog/gp/1")
	if code != http.StatusOK || !strings.Contains(page, "<code>patient_id</code>") || !strings.Contains(page, "year_of_birth") {
		t.Fatalf("dataset page: %d", code)
	}
	if !strings.Contains(page, "key version 1") && !strings.Contains(page, "version 1, fingerprint") ||
		!strings.Contains(page, "is shared by at least 2 patients") || !strings.Contains(page, "birth, sex, place, ethnicity, death") {
		t.Errorf("dataset page: no key version or k-anonymity:\n%s", between(page, "<dl", "</dl>"))
	}
	rows := between(page, "patients: about ", " rows")
	if n, err := strconv.Atoi(rows); err != nil || n%10 != 0 || n == 0 {
		t.Errorf("patients rows %q are not rounded to 10", rows)
	}
	if code, cat := b.get("/catalog"); code != http.StatusOK || !strings.Contains(cat, `href="/catalog/gp/1"`) || !strings.Contains(cat, "No code list") {
		t.Errorf("catalog: %d", code)
	}
}
