// Package bulktest is a strict FHIR Bulk Data Access (2.0) server for the
// tests, written from the spec's text: no real FHIR server can be
// installed on these machines (none is packaged in Debian, and the npm and
// Go registries hold none that runs offline).
package bulktest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// A Server serves the files of a folder as one system-level export: kick-off
// checks its headers and parameters, the status URL answers 202 with
// Retry-After (and one 429) a few times before the manifest, files need
// the NDJSON Accept header, DELETE ends the job, and a file can be cut
// off mid-way once.
type Server struct {
	t       *testing.T
	dir     string
	ts      *httptest.Server
	Mu      sync.Mutex     // guards the fields below
	jobs    map[string]int // job → status polls so far
	Deleted map[string]bool
	Kicks   int
	Gets    map[string]int // file → downloads begun
	Polls   int            // 202s before the manifest
	Cut     string         // a file to cut off mid-way, once
	Hold    chan struct{}  // when set, downloads of HoldOn wait for it
	HoldOn  string
	Errors  []string // lines of the manifest's error file
	Fail    int      // status code every status request answers, when set
}

// New serves the export files of dir until the test ends.
func New(t *testing.T, dir string) *Server {
	s := &Server{t: t, dir: dir, jobs: map[string]int{}, Deleted: map[string]bool{}, Gets: map[string]int{}, Polls: 2}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /fhir/{op}", s.kickoff)
	mux.HandleFunc("GET /jobs/{id}", s.status)
	mux.HandleFunc("DELETE /jobs/{id}", s.delete)
	mux.HandleFunc("GET /files/{name}", s.file)
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
	if r.PathValue("op") != "$export" {
		outcomeBody(w, http.StatusNotFound, "not-found", "unknown operation")
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
	s.Mu.Lock()
	s.Kicks++
	id := fmt.Sprintf("job-%d", s.Kicks)
	s.jobs[id] = 0
	s.Mu.Unlock()
	w.Header().Set("Content-Location", "/jobs/"+id)
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
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
	entries, err := os.ReadDir(s.dir)
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
		outs = append(outs, out{Type: typ, URL: s.ts.URL + "/files/" + e.Name()})
	}
	if len(s.Errors) > 0 {
		errs = append(errs, out{Type: "OperationOutcome", URL: s.ts.URL + "/files/errors.ndjson"})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"transactionTime": "2026-12-01T00:00:00Z", "request": s.Base() + "/$export",
		"requiresAccessToken": false, "output": outs, "error": errs})
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
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
	if a := r.Header.Get("Accept"); a != "application/fhir+ndjson" && a != "application/ndjson" {
		outcomeBody(w, http.StatusNotAcceptable, "not-supported", "Accept must be application/fhir+ndjson")
		return
	}
	name := r.PathValue("name")
	if name == "errors.ndjson" {
		w.Write([]byte(strings.Join(s.Errors, "\n") + "\n"))
		return
	}
	b, err := os.ReadFile(filepath.Join(s.dir, filepath.Base(name)))
	if err != nil {
		outcomeBody(w, http.StatusNotFound, "not-found", "no such file")
		return
	}
	s.Mu.Lock()
	s.Gets[name]++
	cut := s.Cut == name
	if cut {
		s.Cut = ""
	}
	var hold chan struct{}
	if s.HoldOn == name {
		hold = s.Hold
	}
	s.Mu.Unlock()
	if hold != nil {
		<-hold
	}
	w.Header().Set("Content-Type", "application/fhir+ndjson")
	w.Header().Set("Content-Length", fmt.Sprint(len(b)))
	if cut {
		w.Write(b[:len(b)/2])
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close() // the connection drops mid-file
			}
		}
		return
	}
	w.Write(b)
}
