package web

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
	"github.com/nhs-hub/hub/internal/testclock"
	"github.com/nhs-hub/hub/internal/testlake"
)

func TestMain(m *testing.M) { testlake.Main(m) }

// hub is a running server (the API at /v1/, the web app at /) over a
// fresh state folder and the test lake's "gp" dataset, with users ada
// (admin), rosa and sam (researchers), dina and dev (DAC) and ana
// (analyst).
type hub struct {
	gov   *governance.Store
	svc   *cohorts.Service
	srv   *httptest.Server
	clock *testclock.Clock
	tok   map[string]string
}

var users = map[string][]governance.Role{
	"ada": {governance.Admin}, "rosa": {governance.Researcher}, "sam": {governance.Researcher},
	"dina": {governance.DAC}, "dev": {governance.DAC}, "ana": {governance.Analyst},
}

func newHub(t testing.TB) *hub {
	t.Helper()
	state := t.TempDir()
	x := &hub{clock: testclock.New(time.Now().UTC()), tok: map[string]string{}}
	var err error
	if x.gov, err = governance.Open(state, governance.Options{Now: x.clock.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.gov.Close() })
	l := testlake.Lake(t)
	if x.svc, err = cohorts.New(cohorts.Config{Lake: l, State: state, Projects: x.gov, Now: x.clock.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { x.svc.Close() })
	failures := api.NewFailures(x.clock.Now)
	app, err := Handler(Config{Gov: x.gov, Svc: x.svc, Lake: l, Failures: failures, Now: x.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", api.NewHandler(x.gov, x.svc, nil, failures))
	mux.Handle("/", app)
	x.srv = httptest.NewServer(mux)
	t.Cleanup(x.srv.Close)
	for name, roles := range users {
		if x.tok[name], err = x.gov.AddUser(governance.Host("test"), name, roles, 0); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// approved makes rosa's request for project and has dina and dev approve
// it; it returns the request's id.
func (x *hub) approved(t testing.TB, project string) string {
	t.Helper()
	rosa, _ := x.gov.Authenticate(x.tok["rosa"])
	yes := true
	req, err := x.gov.CreateRequest(rosa, governance.RequestSpec{Project: project, Title: "Diabetes care in the region",
		Purpose: "Measure HbA1c control.", LaySummary: "How well is type 2 diabetes controlled?", Datasets: []string{"gp"},
		Epsilon: 5, Delta: 1e-5, MaxQueryEpsilon: 1, LegalBasis: "anonymised", NationalOptOutApplies: &yes, DurationDays: 90}, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"dina", "dev"} {
		p, _ := x.gov.Authenticate(x.tok[m])
		if _, err := x.gov.Approve(p, req.ID, governance.Grant{Reason: "sound"}, x.svc.Spent); err != nil {
			t.Fatal(err)
		}
	}
	return req.ID
}

// A browser is an HTTP client with a cookie jar that does not follow
// redirects.
type browser struct {
	t  testing.TB
	x  *hub
	c  *http.Client
	in string // who signed in
}

func (x *hub) browser(t testing.TB) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, x: x, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// signedIn is a browser signed in as who.
func (x *hub) signedIn(t testing.TB, who string) *browser {
	b := x.browser(t)
	if code, _ := b.signIn(x.tok[who]); code != http.StatusSeeOther {
		t.Fatalf("%s could not sign in: %d", who, code)
	}
	b.in = who
	return b
}

var reCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf reads a form's CSRF token from a page.
func csrf(body string) string {
	if m := reCSRF.FindStringSubmatch(body); m != nil {
		return m[1]
	}
	return ""
}

func (b *browser) signIn(token string) (int, string) {
	_, page := b.get("/sign-in")
	return b.post("/sign-in", url.Values{"csrf": {csrf(page)}, "token": {token}, "next": {"/"}})
}

func (b *browser) do(r *http.Request) (int, string, *http.Response) {
	b.t.Helper()
	resp, err := b.c.Do(r)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp
}

func (b *browser) get(path string) (int, string) {
	b.t.Helper()
	r, _ := http.NewRequest("GET", b.x.srv.URL+path, nil)
	code, body, _ := b.do(r)
	return code, body
}

func (b *browser) post(path string, form url.Values) (int, string) {
	b.t.Helper()
	code, body, _ := b.postResp(path, form)
	return code, body
}

func (b *browser) postResp(path string, form url.Values) (int, string, *http.Response) {
	b.t.Helper()
	r, _ := http.NewRequest("POST", b.x.srv.URL+path, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(r)
}

// api calls the API as who; it returns the status.
func (x *hub) api(t testing.TB, who, method, path, body string) int {
	t.Helper()
	r, _ := http.NewRequest(method, x.srv.URL+path, strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer "+x.tok[who])
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// mustManifestReport is the ingest report of the test dataset's latest
// version.
func mustManifestReport(t testing.TB, x *hub) []byte {
	t.Helper()
	l := testlake.Lake(t)
	vs, err := l.Versions(t.Context(), "gp")
	if err != nil {
		t.Fatal(err)
	}
	m, err := l.Manifest(t.Context(), "gp", vs[len(vs)-1])
	if err != nil {
		t.Fatal(err)
	}
	return m.Reports["ingest"]
}
