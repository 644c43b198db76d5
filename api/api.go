// Package api is the hub's HTTP API: the governance workflow (users,
// data access requests, DAC decisions, the audit log) and the cohort
// service's datasets, queries and budgets, behind one bearer-token check.
//
// Every authorisation decision is the governance store's; this package
// only maps requests to its calls and errors to statuses. Every refusal
// and every query is appended to the audit log, and a query's answer is
// released only after its audit entry is written. docs/governance.md has
// the table of which role may call which endpoint; a test checks the
// handler against that table.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
)

// maxBody bounds a governance request's JSON body.
const maxBody = 1 << 20

type server struct {
	gov      *governance.Store
	svc      *cohorts.Service
	log      *slog.Logger
	failures *Failures
}

// Handler returns the API over a governance store and a cohort service
// (whose projects must be gov's).
func Handler(gov *governance.Store, svc *cohorts.Service, log *slog.Logger) http.Handler {
	return NewHandler(gov, svc, log, NewFailures(gov.Now))
}

// NewHandler is Handler counting failed authentications in f, which the
// web app's sign-in may share.
func NewHandler(gov *governance.Store, svc *cohorts.Service, log *slog.Logger, f *Failures) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &server{gov: gov, svc: svc, log: log.With("component", "api"), failures: f}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	user := s.authenticated
	mux.HandleFunc("GET /v1/whoami", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		s.reply(w, p, nil)
	}))
	mux.HandleFunc("GET /v1/datasets", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		ds, err := s.svc.Datasets(r.Context())
		for i := range ds {
			ds[i] = rounded(p, ds[i])
		}
		s.reply(w, ds, err)
	}))
	mux.HandleFunc("GET /v1/datasets/{name}", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		d, err := s.svc.Dataset(r.Context(), r.PathValue("name"))
		if d != nil {
			*d = rounded(p, *d)
		}
		s.reply(w, d, err)
	}))
	mux.HandleFunc("GET /v1/codelists", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		ls, err := s.svc.Codelists()
		s.reply(w, ls, err)
	}))

	// Data access requests.
	mux.HandleFunc("POST /v1/requests", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		var spec governance.RequestSpec
		if !s.body(w, r, p, governance.ActRequestCreate, &spec) {
			return
		}
		req, err := s.gov.CreateRequest(p, spec, r.URL.Query().Get("draft") != "true")
		s.reply(w, req, err)
	}))
	mux.HandleFunc("GET /v1/requests", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		rs, err := s.gov.Requests(p, governance.RequestFilter{State: governance.State(r.URL.Query().Get("state")),
			Open: r.URL.Query().Get("open") == "true"})
		s.reply(w, rs, err)
	}))
	mux.HandleFunc("GET /v1/requests/{id}", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		req, err := s.gov.Request(p, r.PathValue("id"))
		s.reply(w, req, err)
	}))
	mux.HandleFunc("POST /v1/requests/{id}/submit", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		req, err := s.gov.Submit(p, r.PathValue("id"))
		s.reply(w, req, err)
	}))
	mux.HandleFunc("POST /v1/requests/{id}/withdraw", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		req, err := s.gov.Withdraw(p, r.PathValue("id"))
		s.reply(w, req, err)
	}))
	mux.HandleFunc("POST /v1/requests/{id}/amend", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		var a governance.AmendmentSpec
		if !s.body(w, r, p, governance.ActRequestAmend, &a) {
			return
		}
		req, err := s.gov.Amend(p, r.PathValue("id"), a)
		s.reply(w, req, err)
	}))
	mux.HandleFunc("POST /v1/requests/{id}/review", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		req, err := s.gov.Review(p, r.PathValue("id"))
		s.reply(w, req, err)
	}))
	mux.HandleFunc("POST /v1/requests/{id}/approve", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		var g Approval
		if !s.body(w, r, p, governance.ActRequestApprove, &g) {
			return
		}
		grant := governance.Grant{Epsilon: g.Epsilon, Delta: g.Delta, MaxQueryEpsilon: g.MaxQueryEpsilon,
			Reason: g.Reason, Conditions: g.Conditions, Rules: g.ReleaseRules}
		if g.Expires != "" {
			t, err := time.Parse(time.DateOnly, g.Expires)
			if err != nil {
				s.reply(w, nil, s.gov.Refuse(p, governance.ActRequestApprove, "", fmt.Errorf("%w: expires must be a date, YYYY-MM-DD", governance.ErrInvalid)))
				return
			}
			grant.Expires = t
		}
		req, err := s.gov.Approve(p, r.PathValue("id"), grant, s.svc.Spent)
		s.reply(w, req, err)
	}))
	mux.HandleFunc("POST /v1/requests/{id}/reject", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		var body struct {
			Reason string `json:"reason"`
		}
		if !s.body(w, r, p, governance.ActRequestReject, &body) {
			return
		}
		req, err := s.gov.Reject(p, r.PathValue("id"), body.Reason)
		s.reply(w, req, err)
	}))

	// Projects: queries, history and budget.
	mux.HandleFunc("POST /v1/projects/{project}/queries", user(s.query))
	mux.HandleFunc("GET /v1/projects/{project}/queries", user(s.viewProject(func(project string) (any, error) { return s.svc.History(project) })))
	mux.HandleFunc("GET /v1/projects/{project}/budget", user(s.viewProject(func(project string) (any, error) { return s.svc.Budget(project) })))

	// The audit log.
	mux.HandleFunc("GET /v1/audit", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		f, err := auditFilter(r)
		if err != nil {
			s.reply(w, nil, s.gov.Refuse(p, governance.ActRead, "", err))
			return
		}
		es, err := s.gov.Audit(p, f)
		s.reply(w, es, err)
	}))
	mux.HandleFunc("GET /v1/audit/verify", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		if !p.Has(governance.DAC) && !p.Has(governance.Admin) {
			s.reply(w, nil, s.gov.Refuse(p, governance.ActRead, "", fmt.Errorf("%w: the audit log is for the DAC and admins", governance.ErrForbidden)))
			return
		}
		res, err := s.gov.Verify()
		s.reply(w, res, err)
	}))

	// Users and tokens (admins).
	mux.HandleFunc("GET /v1/users", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		us, err := s.gov.Users(p)
		s.reply(w, us, err)
	}))
	mux.HandleFunc("POST /v1/users", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		var body NewUser
		if !s.body(w, r, p, governance.ActUserAdd, &body) {
			return
		}
		ttl, err := governance.TokenTTL(body.TokenDays)
		if err != nil {
			s.reply(w, nil, s.gov.Refuse(p, governance.ActUserAdd, "", err))
			return
		}
		tok, err := s.gov.AddUser(p, body.Name, body.Roles, ttl)
		s.reply(w, map[string]string{"user": body.Name, "token": tok}, err)
	}))
	mux.HandleFunc("POST /v1/users/{name}/tokens", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		var body struct {
			TokenDays int `json:"token_days"`
		}
		if !s.body(w, r, p, governance.ActTokenIssue, &body) {
			return
		}
		ttl, err := governance.TokenTTL(body.TokenDays)
		if err != nil {
			s.reply(w, nil, s.gov.Refuse(p, governance.ActTokenIssue, "", err))
			return
		}
		tok, err := s.gov.IssueToken(p, r.PathValue("name"), ttl)
		s.reply(w, map[string]string{"user": r.PathValue("name"), "token": tok}, err)
	}))
	mux.HandleFunc("POST /v1/users/{name}/revoke", user(func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		var body struct {
			TokenIDs []string `json:"token_ids"`
		}
		if !s.body(w, r, p, governance.ActTokenRevoke, &body) {
			return
		}
		ids, err := s.gov.RevokeTokens(p, r.PathValue("name"), body.TokenIDs)
		s.reply(w, map[string]any{"user": r.PathValue("name"), "revoked": ids}, err)
	}))

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint; docs/governance.md lists them")
	})
	return mux
}

// rounded is a dataset's description as p may see it: row counts rounded
// to 10 (catalog.RoundCount) for everyone but admins, and no parts (a
// patients part's size is close to 16 bytes a patient: the pseudonyms).
func rounded(p *governance.Principal, d cohorts.DatasetInfo) cohorts.DatasetInfo {
	if p.Has(governance.Admin) {
		return d
	}
	tables := map[string]*catalog.TableManifest{}
	for name, t := range d.Tables {
		c := *t
		c.Rows, c.Parts = catalog.RoundCount(t.Rows), nil
		tables[name] = &c
	}
	d.Tables, d.RowsRounded = tables, true
	return d
}

// An Approval is the body of POST /v1/requests/{id}/approve. Zero budget
// fields grant what was asked.
type Approval struct {
	Epsilon         float64 `json:"epsilon,omitempty"`
	Delta           float64 `json:"delta,omitempty"`
	MaxQueryEpsilon float64 `json:"max_query_epsilon,omitempty"`
	Expires         string  `json:"expires,omitempty"` // YYYY-MM-DD
	Reason          string  `json:"reason"`
	Conditions      string  `json:"conditions,omitempty"`
	// ReleaseRules are the small-number rules this member makes a term
	// of the approval (left out or zero fields: the hub's defaults).
	ReleaseRules *governance.ReleaseRules `json:"release_rules,omitempty"`
}

// A NewUser is the body of POST /v1/users.
type NewUser struct {
	Name      string            `json:"name"`
	Roles     []governance.Role `json:"roles"`
	TokenDays int               `json:"token_days,omitempty"`
}

// authenticated wraps a handler with the bearer-token check.
func (s *server) authenticated(h func(http.ResponseWriter, *http.Request, *governance.Principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		addr := ClientAddr(r)
		if blocked, wait := s.failures.Blocked(addr); blocked {
			w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
			writeError(w, http.StatusTooManyRequests, "too many failed authentications from this address; wait, then send a valid token")
			return
		}
		p, err := s.gov.Authenticate(bearer(r))
		if err != nil {
			if errors.Is(err, governance.ErrUnauthorized) {
				s.failures.Fail(addr)
			}
			s.reply(w, nil, err)
			return
		}
		h(w, r, p)
	}
}

// bearer returns the request's bearer token: "" unless the header is
// "Bearer <token>" (a bare token was once accepted).
func bearer(r *http.Request) string {
	if t, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

// viewProject answers with what get returns for the path's project, to
// those who may view it (its members, the DAC, admins).
func (s *server) viewProject(get func(project string) (any, error)) func(http.ResponseWriter, *http.Request, *governance.Principal) {
	return func(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
		if _, err := s.gov.Authorize(p, r.PathValue("project"), governance.ScopeView); err != nil {
			s.reply(w, nil, err)
			return
		}
		v, err := get(r.PathValue("project"))
		s.reply(w, v, err)
	}
}

// body decodes a JSON body strictly; a bad body is refused and recorded.
func (s *server) body(w http.ResponseWriter, r *http.Request, p *governance.Principal, action string, v any) bool {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxBody))
		return false
	}
	msg := ""
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		// null, a list or a scalar would decode to the zero value: an
		// empty revoke list, for one, would revoke every token.
		msg = "the body must be a JSON object"
	} else if err := dec.Decode(v); err != nil {
		msg = "the body is not the expected JSON"
		var ute *json.UnmarshalTypeError
		switch {
		case errors.As(err, &ute):
			msg = fmt.Sprintf("field %q has the wrong type", ute.Field)
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			msg = strings.TrimPrefix(err.Error(), "json: ")
		}
	} else if _, err := dec.Token(); err != io.EOF {
		msg = "the body holds more than one JSON value"
	}
	if msg != "" {
		s.reply(w, nil, s.gov.Refuse(p, action, "", fmt.Errorf("%w: %s", governance.ErrInvalid, msg)))
		return false
	}
	return true
}

// query answers a cohort query: authorise, parse, ask the service, audit,
// release. An answer whose audit entry cannot be written is not released
// (its budget stays spent, and a repeat later is free).
func (s *server) query(w http.ResponseWriter, r *http.Request, p *governance.Principal) {
	project := r.PathValue("project")
	if _, err := s.gov.Authorize(p, project, governance.ScopeQuery); err != nil {
		s.reply(w, nil, err)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, cohorts.MaxQueryBytes+1)
	q, err := cohorts.ParseQuery(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = &cohorts.QueryError{Msg: "larger than 64 KiB"}
		}
		s.reply(w, nil, s.gov.Refuse(p, governance.ActQuery, project, err))
		return
	}
	a, err := Query(r.Context(), s.gov, s.svc, p, project, q)
	s.reply(w, a, err)
}

// Query asks the service a parsed query for an authorised member of a
// project and records it in the audit log; the answer is returned only
// once its audit entry is written. The API and the web app both ask
// through it.
func Query(ctx context.Context, gov *governance.Store, svc *cohorts.Service, p *governance.Principal, project string, q *cohorts.Query) (*cohorts.Answer, error) {
	a, err := svc.Query(ctx, project, q)
	e := governance.Entry{Action: governance.ActQuery, Project: project, Dataset: q.Dataset, Version: q.Version}
	if err != nil {
		e.Outcome, e.Reason = governance.Refused, publicReason(err)
		if _, rerr := gov.Record(p, e); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return nil, err
	}
	e.Version, e.QuerySHA256 = a.Version, a.QuerySHA256
	if a.Repeat {
		e.Reason = "repeat of an earlier release; nothing charged"
	} else {
		e.EpsilonU, e.DeltaU = governance.Units(a.Epsilon, governance.EpsilonUnit), governance.Units(a.Delta, governance.DeltaUnit)
	}
	if _, err := gov.Record(p, e); err != nil {
		if !a.Repeat {
			// The ledger has charged the query: say so, and that asking
			// again costs nothing once the log can be written.
			err = fmt.Errorf("%w: the query was charged ε %g, but its audit entry could not be written, so its answer is withheld; ask the same query again later: a repeat is free (%w)",
				governance.ErrUnavailable, a.Epsilon, err)
		}
		return nil, err
	}
	return a, nil
}

// publicReason is an error's message for the audit log, or a generic one
// for internal errors (whose details go to the server log only).
func publicReason(err error) string {
	if status(err) == http.StatusInternalServerError {
		return "internal error"
	}
	return err.Error()
}

func auditFilter(r *http.Request) (governance.AuditFilter, error) {
	q := r.URL.Query()
	f := governance.AuditFilter{Actor: q.Get("actor"), Action: q.Get("action"), Outcome: q.Get("outcome"),
		Project: q.Get("project"), Request: q.Get("request"), User: q.Get("user"), Dataset: q.Get("dataset")}
	for _, t := range []struct {
		key string
		dst *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(t.key); v != "" {
			d, err := time.Parse(time.DateOnly, v)
			if err != nil {
				return f, fmt.Errorf("%w: %s must be a date, YYYY-MM-DD", governance.ErrInvalid, t.key)
			}
			*t.dst = d
		}
	}
	for _, n := range []struct {
		key string
		dst *int64
	}{{"after", &f.After}, {"limit", nil}} {
		if v := q.Get(n.key); v != "" {
			x, err := strconv.ParseInt(v, 10, 64)
			if err != nil || x < 0 {
				return f, fmt.Errorf("%w: %s must be a whole number", governance.ErrInvalid, n.key)
			}
			if n.dst != nil {
				*n.dst = x
			} else {
				f.Limit = int(min(x, 1000))
			}
		}
	}
	return f, nil
}

// status maps an error to its HTTP status.
func status(err error) int {
	var qe *cohorts.QueryError
	var ce *governance.ChainError
	switch {
	case errors.As(err, &qe), errors.Is(err, governance.ErrInvalid), errors.Is(err, cohorts.ErrOverCap):
		return http.StatusBadRequest
	case errors.Is(err, governance.ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, governance.ErrForbidden), errors.Is(err, governance.ErrDatasetNotAllowed),
		errors.Is(err, governance.ErrExpired), errors.Is(err, governance.ErrWithdrawn):
		return http.StatusForbidden
	case errors.Is(err, governance.ErrNotFound), errors.Is(err, catalog.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, governance.ErrConflict), errors.Is(err, cohorts.ErrBudgetExhausted):
		return http.StatusConflict
	case errors.Is(err, cohorts.ErrLedgerBroken), errors.As(err, &ce), errors.Is(err, governance.ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// reply writes v, or the error with its status and what to do next.
func (s *server) reply(w http.ResponseWriter, v any, err error) {
	if err == nil {
		writeJSON(w, http.StatusOK, v)
		return
	}
	code := status(err)
	var qe *cohorts.QueryError
	msg := err.Error()
	switch {
	case errors.As(err, &qe):
		msg = "bad query: " + qe.Msg
	case code == http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="hub"`)
		msg += "; send Authorization: Bearer <your token> (an admin issues tokens with `hub user add` or `hub user token`)"
	case errors.Is(err, cohorts.ErrOverCap):
		msg += "; lower the query's epsilon"
	case errors.Is(err, catalog.ErrNotFound):
		msg = "unknown dataset or version: " + msg + "; GET /v1/datasets lists them"
	case code == http.StatusServiceUnavailable:
		s.log.Error("request failed", "err", err)
		w.Header().Set("Retry-After", "30")
	case code == http.StatusInternalServerError:
		s.log.Error("request failed", "err", err)
		msg = "internal error; the server log has the details"
	}
	writeError(w, code, msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"error": msg, "status": status})
}
