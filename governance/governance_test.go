package governance

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nhs-hub/hub/internal/testclock"
)

type world struct {
	s     *Store
	dir   string
	clock *testclock.Clock
	tok   map[string]string
	who   map[string]*Principal
}

// newWorld opens a store with an admin, two researchers, three DAC members
// (one of whom is also a researcher) and an analyst.
func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{dir: t.TempDir(), clock: testclock.New(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)),
		tok: map[string]string{}, who: map[string]*Principal{}}
	w.open(t)
	for name, roles := range map[string][]Role{
		"ada": {Admin}, "rosa": {Researcher}, "sam": {Researcher}, "dina": {DAC}, "dev": {DAC},
		"dual": {DAC, Researcher}, "ana": {Analyst},
	} {
		tok, err := w.s.AddUser(Host("ops"), name, roles, 0)
		if err != nil {
			t.Fatal(err)
		}
		w.tok[name] = tok
		if w.who[name], err = w.s.Authenticate(tok); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

func (w *world) open(t *testing.T) {
	t.Helper()
	s, err := Open(w.dir, Options{Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	w.s = s
}

func spec() RequestSpec {
	no := false
	return RequestSpec{Project: "t2d-audit", Title: "Type 2 diabetes care", Purpose: "Measure HbA1c control.",
		LaySummary: "How well is diabetes controlled in the region?", Datasets: []string{"gp"}, Epsilon: 4,
		Delta: 1e-6, MaxQueryEpsilon: 1, LegalBasis: "anonymised", NationalOptOutApplies: &no, DurationDays: 365,
		Researchers: []string{"sam"}}
}

// TestWorkflow: submit, review, a quorum of two distinct DAC members, the
// project that results, an amendment, withdrawal; each wrong step refused,
// recorded, and changing nothing.
func TestWorkflow(t *testing.T) {
	w := newWorld(t)
	s := w.s
	r, err := s.CreateRequest(w.who["rosa"], spec(), true)
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "req-1" || r.State != Submitted || r.Submitter != "rosa" {
		t.Fatalf("submitted %+v", r)
	}
	refusals := []struct {
		name string
		do   func() error
		want error
	}{
		{"researcher approves", func() error { _, err := s.Approve(w.who["sam"], "req-1", Grant{Reason: "x"}, nil); return err }, ErrForbidden},
		{"analyst reviews", func() error { _, err := s.Review(w.who["ana"], "req-1"); return err }, ErrForbidden},
		{"other researcher withdraws", func() error { _, err := s.Withdraw(w.who["sam"], "req-1"); return err }, ErrForbidden},
		{"other researcher reads", func() error {
			_, err := s.CreateRequest(w.who["sam"], func() RequestSpec { r := spec(); r.Project = "t2d-audit"; return r }(), true)
			return err
		}, ErrConflict},
		{"approve without reason", func() error { _, err := s.Approve(w.who["dina"], "req-1", Grant{}, nil); return err }, ErrInvalid},
		{"grant more than asked", func() error {
			_, err := s.Approve(w.who["dina"], "req-1", Grant{Epsilon: 5, Reason: "x"}, nil)
			return err
		}, ErrInvalid},
		{"no such request", func() error { _, err := s.Approve(w.who["dina"], "req-9", Grant{Reason: "x"}, nil); return err }, ErrNotFound},
		{"dac submits", func() error { _, err := s.CreateRequest(w.who["dina"], spec(), true); return err }, ErrForbidden},
	}
	for _, c := range refusals {
		before := snapshot(t, w)
		if err := c.do(); !errors.Is(err, c.want) {
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
		if after := snapshot(t, w); !reflect.DeepEqual(before, after) {
			t.Fatalf("%s changed the state", c.name)
		}
	}
	if _, err := s.Review(w.who["dina"], "req-1"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []ReleaseRules{{SuppressBelow: 5}, {RoundTo: 3}, {MinCohort: -1}} {
		if _, err := s.Approve(w.who["dina"], "req-1", Grant{Reason: "lax", Rules: &bad}, nil); !errors.Is(err, ErrInvalid) {
			t.Fatalf("rules %+v: %v", bad, err)
		}
	}
	r, err = s.Approve(w.who["dina"], "req-1", Grant{Epsilon: 3, Reason: "sound design", Conditions: "report yearly",
		Rules: &ReleaseRules{SuppressBelow: 20, RoundTo: 1}}, nil)
	if err != nil || r.State != InReview || r.Decision != nil {
		t.Fatalf("one approval: %+v, %v", r, err)
	}
	if _, err := s.Project("t2d-audit"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("project before quorum: %v", err)
	}
	if _, err := s.Approve(w.who["dina"], "req-1", Grant{Reason: "again"}, nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("approving twice: %v", err)
	}
	w.clock.Add(time.Hour)
	r, err = s.Approve(w.who["dev"], "req-1", Grant{Reason: "fine", MaxQueryEpsilon: 0.5, Rules: &ReleaseRules{RoundTo: 10}}, nil)
	if err != nil || r.State != ApprovedWithConditions {
		t.Fatalf("second approval: %+v, %v", r, err)
	}
	p, err := s.Project("t2d-audit")
	if err != nil {
		t.Fatal(err)
	}
	want := &Project{Name: "t2d-audit", Request: "req-1", Members: []string{"rosa", "sam"}, Datasets: []string{"gp"},
		EpsilonU: 3_000_000, DeltaU: 1_000_000_000, MaxQueryU: 500_000,
		Expires: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC).AddDate(0, 0, 365), Conditions: []string{"report yearly"},
		// The strictest of the two members' rules, the defaults filling
		// what neither set.
		Rules: &ReleaseRules{SuppressBelow: 20, RoundTo: 10, MinCohort: DefaultRules.MinCohort}}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("project\n%+v, want\n%+v", p, want)
	}
	if _, err := s.Approve(w.who["dual"], "req-1", Grant{Reason: "late"}, nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("approving a decided request: %v", err)
	}
	// Authorisation to use the project.
	for _, c := range []struct {
		who   string
		scope Scope
		want  error
	}{
		{"rosa", ScopeQuery, nil}, {"sam", ScopeQuery, nil}, {"dina", ScopeQuery, ErrForbidden},
		{"dina", ScopeView, nil}, {"ada", ScopeView, nil}, {"ana", ScopeView, ErrForbidden}, {"dual", ScopeQuery, ErrForbidden},
	} {
		if _, err := s.Authorize(w.who[c.who], "t2d-audit", c.scope); !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
			t.Errorf("%s scope %d: %v, want %v", c.who, c.scope, err, c.want)
		}
	}
	if err := p.Allows("hes", w.clock.Now()); !errors.Is(err, ErrDatasetNotAllowed) {
		t.Fatalf("dataset not approved: %v", err)
	}
	if err := p.Allows("gp", p.Expires); !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v", err)
	}

	// An amendment: below what was spent is refused, then one is granted.
	if _, err := s.Amend(w.who["sam"], "req-1", AmendmentSpec{Epsilon: 6, Reason: "more"}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("amend by a named researcher who did not submit: %v", err)
	}
	if _, err := s.Amend(w.who["rosa"], "req-1", AmendmentSpec{Epsilon: 2, ExtendDays: 30, Reason: "less, but longer"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Approve(w.who["dina"], "req-1", Grant{Reason: "ok"}, spent(2_500_000)); !errors.Is(err, ErrInvalid) ||
		!strings.Contains(err.Error(), "already spent") {
		t.Fatalf("amendment below the spend: %v", err)
	}
	if _, err := s.Approve(w.who["dina"], "req-1", Grant{Reason: "ok"}, spent(1_000_000)); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Project("t2d-audit"); p.EpsilonU != 3_000_000 {
		t.Fatalf("amendment applied before quorum: %+v", p)
	}
	if _, err := s.Approve(w.who["dual"], "req-1", Grant{Reason: "ok"}, spent(1_000_000)); err != nil {
		t.Fatal(err)
	}
	p, _ = s.Project("t2d-audit")
	if p.EpsilonU != 2_000_000 || p.MaxQueryU != 500_000 || !p.Expires.Equal(want.Expires.AddDate(0, 0, 30)) {
		t.Fatalf("after the amendment: %+v", p)
	}
	// Withdrawal stops the project; the state survives a reopen exactly.
	if _, err := s.Withdraw(w.who["rosa"], "req-1"); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Project("t2d-audit"); p.Allows("gp", w.clock.Now()) == nil || !p.Withdrawn {
		t.Fatalf("withdrawn project still allows queries: %+v", p)
	}
	before := snapshot(t, w)
	w.s.Close()
	w.open(t)
	if after := snapshot(t, w); !reflect.DeepEqual(before, after) {
		t.Fatalf("state after reopening differs")
	}
	// Every refusal above is in the log.
	es, err := w.s.Audit(w.who["dina"], AuditFilter{Outcome: Refused})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) < len(refusals)+6 {
		t.Fatalf("%d refusals recorded", len(es))
	}
	if _, err := w.s.Audit(w.who["rosa"], AuditFilter{}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a researcher reads the audit log: %v", err)
	}
}

// snapshot is everything the DAC can see.
func snapshot(t *testing.T, w *world) []*Request {
	t.Helper()
	rs, err := w.s.Requests(w.who["dina"], RequestFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestRejectAndSelfReview: a member named on a request cannot review it;
// one rejection rejects; a rejected request cannot be approved.
func TestRejectAndSelfReview(t *testing.T) {
	w := newWorld(t)
	sp := spec()
	sp.Researchers = []string{"dual"}
	if _, err := w.s.CreateRequest(w.who["rosa"], sp, true); err != nil {
		t.Fatal(err)
	}
	if _, err := w.s.Approve(w.who["dual"], "req-1", Grant{Reason: "mine"}, nil); !errors.Is(err, ErrForbidden) {
		t.Fatalf("named researcher approves: %v", err)
	}
	sp2 := spec()
	sp2.Project, sp2.Researchers = "own", nil
	if _, err := w.s.CreateRequest(w.who["dual"], sp2, true); err != nil {
		t.Fatal(err)
	}
	if _, err := w.s.Approve(w.who["dual"], "req-2", Grant{Reason: "mine"}, nil); !errors.Is(err, ErrForbidden) {
		t.Fatalf("submitter approves: %v", err)
	}
	if _, err := w.s.Reject(w.who["dina"], "req-1", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reject without reason: %v", err)
	}
	r, err := w.s.Reject(w.who["dina"], "req-1", "no ethics approval")
	if err != nil || r.State != Rejected || r.Decision.Reasons[0] != "no ethics approval" {
		t.Fatalf("reject: %+v %v", r, err)
	}
	if _, err := w.s.Approve(w.who["dev"], "req-1", Grant{Reason: "x"}, nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("approve a rejected request: %v", err)
	}
	rs, _ := w.s.Requests(w.who["sam"], RequestFilter{})
	if len(rs) != 0 {
		t.Fatalf("sam sees %d requests that are not his", len(rs))
	}
	rs, _ = w.s.Requests(w.who["dina"], RequestFilter{Open: true})
	if len(rs) != 1 || rs[0].ID != "req-2" {
		t.Fatalf("open requests: %v", rs)
	}
}

// TestBadRequests: each invalid field is refused with a message naming it.
func TestBadRequests(t *testing.T) {
	w := newWorld(t)
	for name, mut := range map[string]func(*RequestSpec){
		"no title":            func(r *RequestSpec) { r.Title = " " },
		"bad project":         func(r *RequestSpec) { r.Project = "Bad Name" },
		"no datasets":         func(r *RequestSpec) { r.Datasets = nil },
		"zero epsilon":        func(r *RequestSpec) { r.Epsilon = 0 },
		"huge epsilon":        func(r *RequestSpec) { r.Epsilon = 1e9 },
		"cap above total":     func(r *RequestSpec) { r.MaxQueryEpsilon = 10 },
		"delta":               func(r *RequestSpec) { r.Delta = 0.5 },
		"legal basis":         func(r *RequestSpec) { r.LegalBasis = "because" },
		"opt-out unsaid":      func(r *RequestSpec) { r.NationalOptOutApplies = nil },
		"duration":            func(r *RequestSpec) { r.DurationDays = 0 },
		"unknown researcher":  func(r *RequestSpec) { r.Researchers = []string{"nobody"} },
		"DAC-only researcher": func(r *RequestSpec) { r.Researchers = []string{"dina"} },
	} {
		sp := spec()
		mut(&sp)
		if _, err := w.s.CreateRequest(w.who["rosa"], sp, true); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if rs, _ := w.s.Requests(w.who["dina"], RequestFilter{}); len(rs) != 0 {
		t.Fatalf("bad requests were stored: %d", len(rs))
	}
}

// TestTokens: malformed, forged, expired and revoked tokens are refused,
// and each refusal is in the audit log without the token.
func TestTokens(t *testing.T) {
	w := newWorld(t)
	s := w.s
	second, err := s.IssueToken(Host("ops"), "rosa", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.IssueToken(w.who["rosa"], "rosa", 0); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a researcher issues a token: %v", err)
	}
	if p, err := s.Authenticate(second); err != nil || p.Name != "rosa" {
		t.Fatalf("second token: %v %v", p, err)
	}
	forged := "hub_" + strings.Repeat("ab", 32)
	cases := map[string]string{"": "no token", "Bearer x": "malformed", forged: "unknown token"}
	for tok, reason := range cases {
		if _, err := s.Authenticate(tok); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), reason) {
			t.Errorf("%q: %v", tok, err)
		}
	}
	w.clock.Add(2 * time.Hour)
	if _, err := s.Authenticate(second); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired: %v", err)
	}
	if _, err := s.Authenticate(w.tok["rosa"]); err != nil {
		t.Fatalf("first token after the second expired: %v", err)
	}
	ids, err := s.RevokeTokens(Host("ops"), "rosa", nil)
	if err != nil || len(ids) != 2 { // the expired token is revoked too
		t.Fatalf("revoke: %v %v", ids, err)
	}
	if _, err := s.RevokeTokens(Host("ops"), "rosa", nil); !errors.Is(err, ErrConflict) {
		t.Fatalf("revoking twice: %v", err)
	}
	if _, err := s.Authenticate(w.tok["rosa"]); !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked: %v", err)
	}
	// Refusals that name no user are aggregated: the first of a minute is
	// recorded, the rest counted, and their summary recorded when the
	// minute has passed. Expired and revoked tokens name their user and
	// are recorded one by one.
	es, _ := s.Audit(w.who["ada"], AuditFilter{Action: ActAuth})
	if len(es) != 3 || s.AnonymousRefusals() != 3 {
		t.Fatalf("%d refused tokens recorded, %d anonymous counted; want 3 and 3", len(es), s.AnonymousRefusals())
	}
	w.clock.Add(2 * time.Minute)
	s.Authenticate("")
	es, _ = s.Audit(w.who["ada"], AuditFilter{Action: ActAuth})
	if len(es) != 5 || !strings.Contains(es[3].Reason, "2 more refused") {
		t.Fatalf("after the window: %d entries, summary %q", len(es), es[len(es)-2].Reason)
	}
	log, _ := os.ReadFile(filepath.Join(w.dir, logName))
	for _, tok := range []string{w.tok["rosa"], second, forged} {
		if bytes.Contains(log, []byte(tok)) {
			t.Fatal("a token is in the audit log")
		}
	}
	all, _ := s.Audit(w.who["ada"], AuditFilter{})
	listed, _ := json.Marshal(all)
	if bytes.Contains(listed, []byte(tokenHash(second))) {
		t.Fatal("a token hash is listed")
	}
}

// TestTamperDetected edits, removes and swaps every entry of a log in turn
// (and removes its last entry): Verify and Open both refuse it.
func TestTamperDetected(t *testing.T) {
	w := newWorld(t)
	if _, err := w.s.CreateRequest(w.who["rosa"], spec(), true); err != nil {
		t.Fatal(err)
	}
	if _, err := w.s.Approve(w.who["dina"], "req-1", Grant{Reason: "ok"}, nil); err != nil {
		t.Fatal(err)
	}
	w.s.Close()
	res, err := Verify(w.dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(filepath.Join(w.dir, logName))
	lines := bytes.SplitAfter(orig, []byte("\n"))
	lines = lines[:len(lines)-1]
	if int64(len(lines)) != res.Entries {
		t.Fatalf("%d lines, %d entries", len(lines), res.Entries)
	}
	check := func(name string, data []byte) {
		t.Helper()
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, logName), data, 0o600)
		head, _ := os.ReadFile(filepath.Join(w.dir, headName))
		os.WriteFile(filepath.Join(dir, headName), head, 0o600)
		var ce *ChainError
		if _, err := Verify(dir, nil, nil); !errors.As(err, &ce) {
			t.Errorf("%s: Verify says %v", name, err)
		}
		if s, err := Open(dir, Options{}); err == nil {
			s.Close()
			t.Errorf("%s: Open accepted it", name)
		}
	}
	for i := range lines {
		edited := slicesClone(lines)
		edited[i] = bytes.Replace(edited[i], []byte(`"actor":"`), []byte(`"actor":"x`), 1)
		check("edit "+itoa(i), bytes.Join(edited, nil))
		removed := append(slicesClone(lines[:i]), lines[i+1:]...)
		check("remove "+itoa(i), bytes.Join(removed, nil))
		if i+1 < len(lines) {
			swapped := slicesClone(lines)
			swapped[i], swapped[i+1] = swapped[i+1], swapped[i]
			check("swap "+itoa(i), bytes.Join(swapped, nil))
		}
	}
	// Edits the JSON decoder forgives are caught on the raw bytes: a key
	// given twice (a reader of the file sees the first, the decoder keeps
	// the last), a re-cased key, spacing, an escaped letter.
	for name, edit := range map[string][2]string{
		"duplicated key": {`"actor":"`, `"actor":"mallory","actor":"`},
		"re-cased key":   {`"actor":"`, `"ACTOR":"`},
		"spacing":        {`"actor":"`, `"actor": "`},
		"escape":         {`"action":"r`, `"action":"\u0072`},
	} {
		for i := range lines {
			edited := slicesClone(lines)
			edited[i] = bytes.Replace(edited[i], []byte(edit[0]), []byte(edit[1]), 1)
			if bytes.Equal(edited[i], lines[i]) {
				continue
			}
			check(name+" "+itoa(i), bytes.Join(edited, nil))
		}
	}
	// A head written down earlier must still be in the log.
	if _, err := Verify(w.dir, &Head{Seq: 3, Hash: strings.Repeat("0", 64)}, nil); err == nil {
		t.Fatal("a wrong expected head verified")
	}
	if _, err := Verify(w.dir, &res.Head, nil); err != nil {
		t.Fatal(err)
	}
	// A torn last line (a crash mid-append) is not tampering.
	os.WriteFile(filepath.Join(w.dir, logName), append(orig, []byte(`{"seq":99,"act`)...), 0o600)
	if _, err := Verify(w.dir, nil, nil); err != nil {
		t.Fatalf("torn line: %v", err)
	}
	s, err := Open(w.dir, Options{})
	if err != nil {
		t.Fatalf("open with a torn line: %v", err)
	}
	s.Close()
	if got, _ := os.ReadFile(filepath.Join(w.dir, logName)); !bytes.Equal(got, orig) {
		t.Fatal("the torn line was not cut off")
	}
}

func slicesClone(b [][]byte) [][]byte { return append([][]byte(nil), b...) }
func itoa(i int) string               { return string(rune('0'+i/10)) + string(rune('0'+i%10)) }

// TestTwoProcesses: two stores on one folder (the server and a `hub`
// command) append in turn and concurrently; each sees the other's changes
// and the chain stays whole.
func TestTwoProcesses(t *testing.T) {
	w := newWorld(t)
	other, err := Open(w.dir, Options{Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.AddUser(Host("ops"), "late", []Role{Researcher}, 0); err != nil {
		t.Fatal(err)
	}
	sp := spec()
	sp.Researchers = []string{"late"}
	if _, err := w.s.CreateRequest(w.who["rosa"], sp, true); err != nil {
		t.Fatalf("the first store does not see a user the second added: %v", err)
	}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := w.s
			if i%2 == 1 {
				s = other
			}
			if _, err := s.Record(w.who["rosa"], Entry{Action: ActQuery, Project: "t2d-audit", EpsilonU: int64(i)}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	res, err := Verify(w.dir, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Head != w.s.Head() && res.Head != other.Head() {
		t.Fatalf("head %v; stores %v and %v", res.Head, w.s.Head(), other.Head())
	}
	es, _ := other.Audit(w.who["dina"], AuditFilter{Action: ActQuery})
	if len(es) != 40 {
		t.Fatalf("%d query entries, want 40", len(es))
	}
}

func spent(e int64) func(string) (int64, int64, error) {
	return func(string) (int64, int64, error) { return e, 0, nil }
}
