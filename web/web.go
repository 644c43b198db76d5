// Package web is the hub's web app, served by `hub serve` at / beside the
// API: the public register, and for signed-in users their projects, the
// cohort builder and its results, data access requests and the DAC's
// decisions. Pages are rendered on the server with html/template in the
// NHS.UK design system (nhsuk-frontend, embedded) and work without
// JavaScript; charts are SVG with a table beside them.
//
// Every decision is the governance store's, as in the API: a page asks
// the same calls with the signed-in principal, so a page can do no more
// than the role × action table in docs/governance.md allows.
//
// Sign-in exchanges a hub token for a session: a random id in an
// HttpOnly, SameSite=Strict cookie (Secure behind TLS), held on the
// server with the token, which is checked again on every request (a
// revoked token ends its sessions). Sessions expire after 30 idle
// minutes and at 8 hours; signing out deletes the session. Every form
// carries a CSRF token; pages are sent with a strict
// Content-Security-Policy (no inline script or style), no framing, and
// no token ever in a URL.
package web

import (
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nhs-hub/hub/api"
	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/cohorts"
	"github.com/nhs-hub/hub/governance"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Session lifetimes.
const (
	idleTimeout = 30 * time.Minute
	maxLifetime = 8 * time.Hour
)

// Config is what the web app serves.
type Config struct {
	Gov  *governance.Store
	Svc  *cohorts.Service
	Lake *catalog.Lake
	Log  *slog.Logger
	// Secure marks cookies Secure: set it when the hub is served over TLS
	// (directly or behind a proxy that terminates it).
	Secure bool
	// Failures counts failed sign-ins per address, shared with the API's
	// bearer-token check (nil: a count of the web app's own).
	Failures *api.Failures
	// Now is the clock (default time.Now).
	Now func() time.Time
}

type app struct {
	Config
	pages    map[string]*template.Template
	mu       sync.Mutex
	sessions map[string]*session
}

// A session is a signed-in browser: its principal's token, kept on the
// server only, and its CSRF token.
type session struct {
	token   string
	csrf    string
	created time.Time
	seen    time.Time
}

// Handler returns the web app. Its routes are /, /register, /sign-in,
// /sign-out, /projects/..., /requests/..., /admin/users and /static/...;
// the API's /v1/... and /healthz are the caller's to route.
func Handler(cfg Config) (http.Handler, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Failures == nil {
		cfg.Failures = api.NewFailures(cfg.Now)
	}
	a := &app{Config: cfg, sessions: map[string]*session{}}
	if err := a.parse(); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	files := http.FileServerFS(static)
	mux.Handle("GET /static/", http.StripPrefix("/static/", files))
	// nhsuk-frontend's CSS asks for its icons at /assets/images/.
	assets, _ := fs.Sub(staticFS, "static/nhsuk")
	mux.Handle("GET /assets/", http.FileServerFS(assets))

	mux.HandleFunc("GET /{$}", a.page(a.home))
	mux.HandleFunc("GET /register", a.page(a.register))
	mux.HandleFunc("GET /catalog", a.page(a.catalogPage))
	mux.HandleFunc("GET /catalog/{dataset}/{version}", a.page(a.datasetPage))
	mux.HandleFunc("GET /sign-in", a.page(a.signInForm))
	mux.HandleFunc("POST /sign-in", a.signIn)
	mux.HandleFunc("POST /sign-out", a.signed(a.signOut))
	mux.HandleFunc("GET /projects", a.signed(a.projects))
	mux.HandleFunc("GET /projects/{project}", a.signed(a.project))
	mux.HandleFunc("GET /projects/{project}/query", a.signed(a.builder))
	mux.HandleFunc("POST /projects/{project}/query", a.signed(a.runBuilder))
	mux.HandleFunc("GET /projects/{project}/answers/{hash}", a.signed(a.answer))
	mux.HandleFunc("GET /projects/{project}/answers/{hash}/csv", a.signed(a.answerCSV))
	mux.HandleFunc("GET /requests", a.signed(a.requests))
	mux.HandleFunc("GET /requests/new", a.signed(a.newRequestForm))
	mux.HandleFunc("POST /requests/new", a.signed(a.newRequest))
	mux.HandleFunc("GET /requests/{id}", a.signed(a.request))
	mux.HandleFunc("POST /requests/{id}/approve", a.signed(a.approve))
	mux.HandleFunc("POST /requests/{id}/reject", a.signed(a.reject))
	mux.HandleFunc("POST /requests/{id}/amend", a.signed(a.amend))
	mux.HandleFunc("POST /requests/{id}/withdraw", a.signed(a.withdraw))
	mux.HandleFunc("GET /admin/users", a.signed(a.users))
	mux.HandleFunc("POST /admin/users", a.signed(a.addUser))
	mux.HandleFunc("POST /admin/users/{name}/tokens", a.signed(a.issueToken))
	mux.HandleFunc("POST /admin/users/{name}/revoke", a.signed(a.revokeTokens))
	mux.HandleFunc("/", a.page(func(w http.ResponseWriter, r *http.Request, v *view) error {
		return notFound("no such page")
	}))
	return headers(mux), nil
}

// headers sets the security headers on every response.
func headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/static/") && !strings.HasPrefix(r.URL.Path, "/assets/") {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// A view is what every page template receives.
type view struct {
	Title     string
	Principal *governance.Principal
	CSRF      string
	Nav       string // the current navigation item
	Errors    []fieldError
	Notice    string
	Data      any
}

type fieldError struct {
	Field, Message string
}

// httpError is an error a page shows with its status.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func notFound(msg string) error  { return &httpError{http.StatusNotFound, msg} }
func forbidden(msg string) error { return &httpError{http.StatusForbidden, msg} }

// page wraps a handler for a page anyone may see; a signed-in user's
// session is attached when there is one.
func (a *app) page(h func(http.ResponseWriter, *http.Request, *view) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v := &view{}
		if s, p := a.current(r); p != nil {
			v.Principal, v.CSRF = p, s.csrf
		} else {
			v.CSRF = a.preSession(w, r)
		}
		a.serve(w, r, v, h)
	}
}

// signed wraps a handler for signed-in users: others go to the sign-in
// page; a POST must carry the session's CSRF token.
func (a *app) signed(h func(http.ResponseWriter, *http.Request, *view) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, p := a.current(r)
		if p == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/sign-in?next="+urlPath(r), http.StatusSeeOther)
				return
			}
			a.fail(w, r, &view{CSRF: a.preSession(w, r)}, &httpError{http.StatusUnauthorized, "your session has ended: sign in again"})
			return
		}
		v := &view{Principal: p, CSRF: s.csrf}
		if r.Method == http.MethodPost && !sameToken(r.PostFormValue("csrf"), s.csrf) {
			a.fail(w, r, v, forbidden("the form was stale or not sent by this site: go back, reload the page and try again"))
			return
		}
		a.serve(w, r, v, h)
	}
}

// urlPath is the request's path and query, for a return after sign-in.
func urlPath(r *http.Request) string {
	return template.URLQueryEscaper(r.URL.RequestURI())
}

func (a *app) serve(w http.ResponseWriter, r *http.Request, v *view, h func(http.ResponseWriter, *http.Request, *view) error) {
	if err := h(w, r, v); err != nil {
		a.fail(w, r, v, err)
	}
}

// fail shows an error page with the error's status: governance refusals
// as the API maps them, internal errors without their detail.
func (a *app) fail(w http.ResponseWriter, r *http.Request, v *view, err error) {
	code, msg := http.StatusInternalServerError, "something went wrong; the server log has the details"
	var he *httpError
	var qe *cohorts.QueryError
	switch {
	case errors.As(err, &he):
		code, msg = he.status, he.msg
	case errors.As(err, &qe):
		code, msg = http.StatusBadRequest, "the query is not valid: "+qe.Msg
	case errors.Is(err, governance.ErrForbidden), errors.Is(err, governance.ErrDatasetNotAllowed),
		errors.Is(err, governance.ErrExpired), errors.Is(err, governance.ErrWithdrawn):
		code, msg = http.StatusForbidden, err.Error()
	case errors.Is(err, governance.ErrNotFound), errors.Is(err, catalog.ErrNotFound):
		code, msg = http.StatusNotFound, err.Error()
	case errors.Is(err, governance.ErrInvalid), errors.Is(err, cohorts.ErrOverCap):
		code, msg = http.StatusBadRequest, err.Error()
	case errors.Is(err, governance.ErrConflict), errors.Is(err, cohorts.ErrBudgetExhausted):
		code, msg = http.StatusConflict, err.Error()
	case errors.Is(err, governance.ErrUnauthorized):
		code, msg = http.StatusUnauthorized, "sign in again"
	default:
		a.Log.Error("web page failed", "path", r.URL.Path, "err", err)
	}
	v.Title = http.StatusText(code)
	v.Data = struct {
		Status  int
		Message string
	}{code, msg}
	w.WriteHeader(code)
	a.render(w, "error", v)
}

// render executes a page template; a failure mid-page is logged.
func (a *app) render(w http.ResponseWriter, name string, v *view) {
	t := a.pages[name]
	if t == nil {
		http.Error(w, "no template "+name, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := t.ExecuteTemplate(w, "layout", v); err != nil {
		a.Log.Error("render page", "page", name, "err", err)
	}
}

// parse reads every page template with the layout.
func (a *app) parse() error {
	a.pages = map[string]*template.Template{}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return fmt.Errorf("template %s: %w", n, err)
		}
		a.pages[base] = t
	}
	return nil
}

// Sessions.

const (
	sessionCookie = "hub_session"
	// preCookie carries the sign-in form's CSRF token before a session
	// exists (a double-submit token: no one can sign a browser in as
	// someone else).
	preCookie = "hub_presession"
)

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func sameToken(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (a *app) cookie(name, value string, maxAge time.Duration) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/", HttpOnly: true, Secure: a.Secure,
		SameSite: http.SameSiteStrictMode, MaxAge: int(maxAge.Seconds())}
}

// preSession returns the pre-session CSRF token, setting its cookie if
// the browser has none.
func (a *app) preSession(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(preCookie); err == nil && len(c.Value) == 43 {
		return c.Value
	}
	t := randomToken()
	http.SetCookie(w, a.cookie(preCookie, t, time.Hour))
	return t
}

// current returns the request's session and its principal, checking the
// token again (a revoked or expired token ends the session).
func (a *app) current(r *http.Request) (*session, *governance.Principal) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, nil
	}
	now := a.Now()
	a.mu.Lock()
	s := a.sessions[c.Value]
	if s != nil && (now.Sub(s.seen) > idleTimeout || now.Sub(s.created) > maxLifetime) {
		delete(a.sessions, c.Value)
		s = nil
	}
	if s != nil {
		s.seen = now
	}
	a.mu.Unlock()
	if s == nil {
		return nil, nil
	}
	p, err := a.Gov.Authenticate(s.token)
	if err != nil {
		a.mu.Lock()
		delete(a.sessions, c.Value)
		a.mu.Unlock()
		return nil, nil
	}
	return s, p
}

// startSession signs a browser in with a token already authenticated.
func (a *app) startSession(w http.ResponseWriter, token string) {
	id, now := randomToken(), a.Now()
	a.mu.Lock()
	for k, s := range a.sessions { // sweep the expired
		if now.Sub(s.seen) > idleTimeout || now.Sub(s.created) > maxLifetime {
			delete(a.sessions, k)
		}
	}
	a.sessions[id] = &session{token: token, csrf: randomToken(), created: now, seen: now}
	a.mu.Unlock()
	http.SetCookie(w, a.cookie(sessionCookie, id, maxLifetime))
	http.SetCookie(w, a.cookie(preCookie, "", -time.Second))
}

func (a *app) endSession(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		delete(a.sessions, c.Value)
		a.mu.Unlock()
	}
	http.SetCookie(w, a.cookie(sessionCookie, "", -time.Second))
}
