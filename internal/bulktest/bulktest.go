// Package bulktest is a strict FHIR Bulk Data Access (2.0) server for the
// tests, written from the spec's text: no real FHIR server can be
// installed on these machines (none is packaged in Debian, and the npm and
// Go registries hold none that runs offline).
package bulktest

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// A Server serves the files of a folder as one system-level export: kick-off
// checks its headers and parameters, the status URL answers 202 with
// Retry-After (and one 429) a few times before the manifest, files need
// the NDJSON Accept header, DELETE ends the job, and a file can be cut
// off mid-way once.
type Server struct {
	t       TB
	dir     string
	ts      *httptest.Server
	Mu      sync.Mutex     // guards the fields below
	jobs    map[string]int // job → status polls so far
	Deleted map[string]bool
	Kicks   int
	Gets    map[string]int // file → downloads begun
	Ranged  int            // downloads that asked for a Range
	Polls   int            // 202s before the manifest
	Cut     string         // a file to cut off mid-way, once
	Hold    chan struct{}  // when set, downloads of HoldOn wait for it
	HoldOn  string
	// HoldHalf makes downloads of HoldOn send half the file before they
	// wait for Hold, then the rest.
	HoldHalf bool
	Errors   []string // lines of the manifest's error file
	Missing  string   // a file the manifest lists that is not served
	NoRange  bool     // answer a Range request with the whole file
	Fail     int      // status code every status request answers, when set

	// Delta, when set, is what a _since export returns.
	Delta *Delta
	since map[string]string // job → its _since

	// Auth, when set, makes the server ask for SMART Backend Services.
	Auth      *Auth
	tokens    map[string]time.Time // access token → when it stops working
	uses      map[string]int
	jtis      map[string]bool
	Issued    int    // access tokens issued
	Refused   int    // requests refused for want of a valid token
	Assertion string // the last client assertion, for replay tests
}

// Delta is what changed since the full export: the files of Dir (the
// changed and new resources) and the deleted resources ("Type/id").
type Delta struct {
	Dir     string
	Deleted []string
}

// Auth is a registered SMART Backend Services client.
type Auth struct {
	ClientID string
	JWKS     jose.JSONWebKeySet // the client's public keys
	// Life is how long a token really works, and Uses how many requests
	// it serves (0: no limit); the token endpoint says five minutes, so a
	// client meets expiry in mid-pull.
	Life time.Duration
	Uses int
	// Scopes the server grants (default system/*.rs and system/*.read).
	Scopes []string
}

// TB is the part of testing.TB a Server uses (so that hub bench can run
// one without the testing package).
type TB interface {
	Error(args ...any)
	Cleanup(func())
}

// New serves the export files of dir until the test ends.
func New(t TB, dir string) *Server {
	s := &Server{t: t, dir: dir, jobs: map[string]int{}, Deleted: map[string]bool{}, Gets: map[string]int{}, Polls: 2,
		tokens: map[string]time.Time{}, uses: map[string]int{}, jtis: map[string]bool{}, since: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fhir/.well-known/smart-configuration", s.smartConfig)
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("GET /fhir/{op}", s.kickoff)
	mux.HandleFunc("GET /fhir/Group/{group}/{op}", s.kickoff)
	mux.HandleFunc("GET /jobs/{id}", s.status)
	mux.HandleFunc("DELETE /jobs/{id}", s.delete)
	mux.HandleFunc("GET /files/{name}", s.file)
	mux.HandleFunc("GET /delta/{name}", s.file)
	mux.HandleFunc("GET /deleted", s.deletedFile)
	s.ts = httptest.NewServer(mux)
	t.Cleanup(s.ts.Close)
	return s
}

// Base is the server's FHIR base URL.
func (s *Server) Base() string { return s.ts.URL + "/fhir" }

func outcomeBody(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/fhir+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"resourceType": "OperationOutcome",
		"issue": []map[string]string{{"severity": "error", "code": code, "diagnostics": msg}}})
}

var resourceTypes = []string{"Patient", "Encounter", "Condition", "MedicationRequest", "MedicationStatement", "Medication", "Observation", "Procedure", "Immunization", "EpisodeOfCare"}

func (s *Server) kickoff(w http.ResponseWriter, r *http.Request) {
	if !s.authorised(w, r) {
		return
	}
	if r.PathValue("op") != "$export" {
		outcomeBody(w, http.StatusNotFound, "not-found", "unknown operation")
		return
	}
	if g := r.PathValue("group"); g != "" && g != "cohort-1" {
		outcomeBody(w, http.StatusNotFound, "not-found", "no such Group")
		return
	}
	if r.Header.Get("Accept") != "application/fhir+json" {
		outcomeBody(w, http.StatusBadRequest, "invalid", "Accept must be application/fhir+json")
		return
	}
	if r.Header.Get("Prefer") != "respond-async" {
		outcomeBody(w, http.StatusBadRequest, "invalid", "Prefer must be respond-async")
		return
	}
	q := r.URL.Query()
	if f := q.Get("_outputFormat"); f != "" && !slices.Contains([]string{"application/fhir+ndjson", "application/ndjson", "ndjson"}, f) {
		outcomeBody(w, http.StatusBadRequest, "not-supported", "_outputFormat "+f)
		return
	}
	if ty := q.Get("_type"); ty != "" {
		for _, t := range strings.Split(ty, ",") {
			if !slices.Contains(resourceTypes, t) {
				outcomeBody(w, http.StatusBadRequest, "not-supported", "_type "+t)
				return
			}
		}
	}
	since := q.Get("_since")
	if since != "" {
		if _, err := time.Parse(time.RFC3339, since); err != nil {
			outcomeBody(w, http.StatusBadRequest, "invalid", "_since is not an instant")
			return
		}
	}
	s.Mu.Lock()
	s.Kicks++
	id := fmt.Sprintf("job-%d", s.Kicks)
	s.jobs[id] = 0
	s.since[id] = since
	s.Mu.Unlock()
	w.Header().Set("Content-Location", "/jobs/"+id)
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	if !s.authorised(w, r) {
		return
	}
	id := r.PathValue("id")
	s.Mu.Lock()
	n, ok := s.jobs[id]
	gone := s.Deleted[id]
	if ok {
		s.jobs[id] = n + 1
	}
	fail := s.Fail
	s.Mu.Unlock()
	switch {
	case !ok || gone:
		outcomeBody(w, http.StatusNotFound, "not-found", "no such job")
		return
	case fail != 0:
		outcomeBody(w, fail, "exception", "the export failed")
		return
	case n == 1:
		w.Header().Set("Retry-After", "0")
		outcomeBody(w, http.StatusTooManyRequests, "throttled", "too many requests")
		return
	case n < s.Polls:
		w.Header().Set("Retry-After", "0")
		w.Header().Set("X-Progress", fmt.Sprintf("%d%% done", 100*n/s.Polls))
		w.WriteHeader(http.StatusAccepted)
		return
	}
	dir, prefix, tt := s.dir, "/files/", "2026-12-01T00:00:00Z"
	s.Mu.Lock()
	delta := s.since[id] != "" && s.Delta != nil
	s.Mu.Unlock()
	if delta {
		dir, prefix, tt = s.Delta.Dir, "/delta/", "2026-12-02T00:00:00Z"
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.t.Error(err)
	}
	type out struct {
		Type  string `json:"type"`
		URL   string `json:"url"`
		Count int    `json:"count,omitempty"`
	}
	var outs, errs []out
	for _, e := range entries {
		typ, _, ok := strings.Cut(e.Name(), ".")
		if !ok || !slices.Contains(resourceTypes, typ) {
			continue
		}
		outs = append(outs, out{Type: typ, URL: s.ts.URL + prefix + e.Name()})
		if s.Missing == e.Name() {
			outs[len(outs)-1].URL += ".gone"
		}
	}
	if len(s.Errors) > 0 {
		errs = append(errs, out{Type: "OperationOutcome", URL: s.ts.URL + "/files/errors.ndjson"})
	}
	var deleted []out
	if delta && len(s.Delta.Deleted) > 0 {
		deleted = append(deleted, out{Type: "Bundle", URL: s.ts.URL + "/deleted"})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"transactionTime": tt, "request": s.Base() + "/$export",
		"requiresAccessToken": s.Auth != nil, "output": outs, "error": errs, "deleted": deleted})
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	if !s.authorised(w, r) {
		return
	}
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if _, ok := s.jobs[r.PathValue("id")]; !ok {
		outcomeBody(w, http.StatusNotFound, "not-found", "no such job")
		return
	}
	s.Deleted[r.PathValue("id")] = true
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) file(w http.ResponseWriter, r *http.Request) {
	if !s.authorised(w, r) {
		return
	}
	if a := r.Header.Get("Accept"); a != "application/fhir+ndjson" && a != "application/ndjson" {
		outcomeBody(w, http.StatusNotAcceptable, "not-supported", "Accept must be application/fhir+ndjson")
		return
	}
	name := r.PathValue("name")
	if name == "errors.ndjson" {
		w.Write([]byte(strings.Join(s.Errors, "\n") + "\n"))
		return
	}
	dir := s.dir
	if strings.HasPrefix(r.URL.Path, "/delta/") {
		dir = s.Delta.Dir
	}
	f, err := os.Open(filepath.Join(dir, filepath.Base(name)))
	if err != nil {
		outcomeBody(w, http.StatusNotFound, "not-found", "no such file")
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		outcomeBody(w, http.StatusInternalServerError, "exception", "cannot read the file")
		return
	}
	s.Mu.Lock()
	s.Gets[name]++
	if r.Header.Get("Range") != "" {
		s.Ranged++
	}
	cut := s.Cut == name
	if cut {
		s.Cut = ""
	}
	var hold chan struct{}
	if s.HoldOn == name {
		hold = s.Hold
	}
	noRange, half := s.NoRange, s.HoldHalf
	s.Mu.Unlock()
	w.Header().Set("Content-Type", "application/fhir+ndjson")
	if hold != nil && half {
		w.Header().Set("Content-Length", fmt.Sprint(st.Size()))
		io.CopyN(w, f, st.Size()/2)
		w.(http.Flusher).Flush()
		<-hold
		io.Copy(w, f)
		return
	}
	if hold != nil {
		<-hold
	}
	if cut {
		w.Header().Set("Content-Length", fmt.Sprint(st.Size()))
		io.CopyN(w, f, st.Size()/2)
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close() // the connection drops mid-file
			}
		}
		return
	}
	if noRange {
		r.Header.Del("Range")
	}
	// ServeContent answers Range requests (206) and sends the file with
	// sendfile, as a file server or object store does.
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// authorised checks a request's bearer token when the server asks for
// one, answering 401 when it is missing, unknown or expired.
func (s *Server) authorised(w http.ResponseWriter, r *http.Request) bool {
	if s.Auth == nil {
		return true
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.Mu.Lock()
	until, known := s.tokens[tok]
	good := ok && known && time.Now().Before(until) && (s.Auth.Uses == 0 || s.uses[tok] < s.Auth.Uses)
	if good {
		s.uses[tok]++
	} else {
		s.Refused++
	}
	s.Mu.Unlock()
	if !good {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		outcomeBody(w, http.StatusUnauthorized, "login", "a valid access token is required")
	}
	return good
}

func (s *Server) smartConfig(w http.ResponseWriter, r *http.Request) {
	if s.Auth == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"token_endpoint": s.ts.URL + "/token", "grant_types_supported": []string{"client_credentials"},
		"token_endpoint_auth_methods_supported":            []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": []string{"RS384", "ES384"},
		"scopes_supported":                                 s.scopes(), "capabilities": []string{"client-confidential-asymmetric"}})
}

func (s *Server) scopes() []string {
	if len(s.Auth.Scopes) > 0 {
		return s.Auth.Scopes
	}
	return []string{"system/*.rs", "system/*.read"}
}

func tokenError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// token is the token endpoint of SMART Backend Services: a client
// assertion signed by a registered key, for this audience, unexpired,
// at most five minutes long, its jti never seen before.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if s.Auth == nil {
		http.NotFound(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request", "not a form")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "client_credentials only")
		return
	}
	if r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		tokenError(w, http.StatusBadRequest, "invalid_request", "client_assertion_type")
		return
	}
	raw := r.PostForm.Get("client_assertion")
	s.Mu.Lock()
	s.Assertion = raw
	s.Mu.Unlock()
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.RS384, jose.ES384})
	if err != nil || len(tok.Headers) != 1 {
		tokenError(w, http.StatusBadRequest, "invalid_client", "the assertion is not a signed JWT")
		return
	}
	keys := s.Auth.JWKS.Key(tok.Headers[0].KeyID)
	if len(keys) != 1 || keys[0].Algorithm != tok.Headers[0].Algorithm {
		tokenError(w, http.StatusBadRequest, "invalid_client", "no registered key of that kid and alg")
		return
	}
	var c jwt.Claims
	if err := tok.Claims(keys[0].Key, &c); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_client", "the signature does not verify")
		return
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: s.Auth.ClientID, Subject: s.Auth.ClientID,
		AnyAudience: jwt.Audience{s.ts.URL + "/token"}, Time: time.Now()}, 0); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_client", err.Error())
		return
	}
	if c.Expiry == nil || c.Expiry.Time().After(time.Now().Add(5*time.Minute+time.Second)) || c.ID == "" {
		tokenError(w, http.StatusBadRequest, "invalid_client", "exp more than five minutes ahead, or no jti")
		return
	}
	if !slices.Contains(s.scopes(), r.PostForm.Get("scope")) {
		tokenError(w, http.StatusBadRequest, "invalid_scope", "scope not granted")
		return
	}
	s.Mu.Lock()
	defer s.Mu.Unlock()
	if s.jtis[c.ID] {
		tokenError(w, http.StatusBadRequest, "invalid_grant", "jti reused")
		return
	}
	s.jtis[c.ID] = true
	var b [16]byte
	rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	life := s.Auth.Life
	if life <= 0 {
		life = 5 * time.Minute
	}
	s.tokens[token] = time.Now().Add(life)
	s.Issued++
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"access_token": token, "token_type": "bearer", "expires_in": 300, "scope": r.PostForm.Get("scope")})
}

// deletedFile serves the deleted resources as Bulk Data 2.0 does: a
// Bundle whose entries' requests DELETE them.
func (s *Server) deletedFile(w http.ResponseWriter, r *http.Request) {
	if !s.authorised(w, r) {
		return
	}
	var entries []map[string]any
	for _, d := range s.Delta.Deleted {
		entries = append(entries, map[string]any{"request": map[string]string{"method": "DELETE", "url": d}})
	}
	w.Header().Set("Content-Type", "application/fhir+ndjson")
	b, _ := json.Marshal(map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries})
	w.Write(append(b, '\n'))
}
