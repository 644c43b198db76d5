package cohorts

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/nhs-hub/hub/catalog"
)

// Handler is the JSON HTTP API:
//
//	GET  /healthz                          no token
//	GET  /v1/datasets                      any project's token
//	GET  /v1/datasets/{name}               any project's token
//	POST /v1/projects/{project}/queries    the project's token
//	GET  /v1/projects/{project}/queries    the project's token (history, no answers)
//	GET  /v1/projects/{project}/budget     the project's token
//
// Errors are {"error": message, "status": code}.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/datasets", s.anyToken(func(w http.ResponseWriter, r *http.Request) {
		ds, err := s.Datasets(r.Context())
		s.reply(w, ds, err)
	}))
	mux.HandleFunc("GET /v1/datasets/{name}", s.anyToken(func(w http.ResponseWriter, r *http.Request) {
		d, err := s.Dataset(r.Context(), r.PathValue("name"))
		s.reply(w, d, err)
	}))
	mux.HandleFunc("POST /v1/projects/{project}/queries", s.projectToken(func(w http.ResponseWriter, r *http.Request, project string) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxQueryBytes+1)
		q, err := ParseQuery(r.Body)
		if err != nil {
			s.reply(w, nil, err)
			return
		}
		a, err := s.Query(r.Context(), project, q)
		s.reply(w, a, err)
	}))
	mux.HandleFunc("GET /v1/projects/{project}/queries", s.projectToken(func(w http.ResponseWriter, r *http.Request, project string) {
		h, err := s.History(project)
		s.reply(w, h, err)
	}))
	mux.HandleFunc("GET /v1/projects/{project}/budget", s.projectToken(func(w http.ResponseWriter, r *http.Request, project string) {
		b, err := s.Budget(project)
		s.reply(w, b, err)
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint; see GET /v1/datasets, POST /v1/projects/{project}/queries, GET /v1/projects/{project}/budget")
	})
	return mux
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return strings.TrimSpace(t)
	}
	return ""
}

func (s *Service) anyToken(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.Valid(bearer(r)) {
			s.reply(w, nil, ErrUnauthorized)
			return
		}
		h(w, r)
	}
}

func (s *Service) projectToken(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		project := r.PathValue("project")
		if err := s.Authenticate(project, bearer(r)); err != nil {
			s.reply(w, nil, err)
			return
		}
		h(w, r, project)
	}
}

// reply writes v, or the error with its status.
func (s *Service) reply(w http.ResponseWriter, v any, err error) {
	if err == nil {
		writeJSON(w, http.StatusOK, v)
		return
	}
	var qe *QueryError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &qe):
		writeError(w, http.StatusBadRequest, "bad query: "+qe.Msg)
	case errors.As(err, &mbe):
		writeError(w, http.StatusBadRequest, "bad query: larger than 64 KiB")
	case errors.Is(err, ErrUnauthorized):
		w.Header().Set("WWW-Authenticate", `Bearer realm="hub"`)
		writeError(w, http.StatusUnauthorized, "missing or unknown bearer token: send Authorization: Bearer <the token printed by hub project create>")
	case errors.Is(err, ErrForbidden), errors.Is(err, ErrDatasetNotAllowed), errors.Is(err, ErrExpired):
		writeError(w, http.StatusForbidden, err.Error())
	case errors.Is(err, ErrOverCap):
		writeError(w, http.StatusBadRequest, err.Error()+"; lower the query's epsilon")
	case errors.Is(err, ErrBudgetExhausted):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrLedgerBroken):
		s.log.Error("ledger", "err", err)
		writeError(w, http.StatusServiceUnavailable, ErrLedgerBroken.Error())
	case errors.Is(err, catalog.ErrNotFound):
		writeError(w, http.StatusNotFound, "unknown dataset or version: "+err.Error()+"; GET /v1/datasets lists them")
	case errors.Is(err, ErrNoProject):
		writeError(w, http.StatusNotFound, err.Error())
	default:
		s.log.Error("request failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal error; nothing was charged. The server log has the details")
	}
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
