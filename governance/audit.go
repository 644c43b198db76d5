package governance

import (
	"encoding/json"
	"fmt"
	"time"
)

// An AuditFilter selects audit entries; zero fields match everything.
type AuditFilter struct {
	Actor, Action, Outcome, Project, Request, User, Dataset string
	Since, Until                                            time.Time
	// After lists entries after this sequence number; Limit caps how many
	// (default and at most 1000).
	After int64
	Limit int
}

func (f *AuditFilter) match(e *Entry) bool {
	return (f.Actor == "" || e.Actor == f.Actor) && (f.Action == "" || e.Action == f.Action) &&
		(f.Outcome == "" || e.Outcome == f.Outcome) && (f.Project == "" || e.Project == f.Project) &&
		(f.Request == "" || e.Request == f.Request) && (f.User == "" || e.User == f.User) &&
		(f.Dataset == "" || e.Dataset == f.Dataset) && e.Seq > f.After &&
		(f.Since.IsZero() || !e.Time.Before(f.Since)) && (f.Until.IsZero() || e.Time.Before(f.Until))
}

// Audit lists audit entries for the DAC and admins, oldest first. Token
// hashes are left out of what is listed (they stay in the log, which is
// what `hub audit verify` checks).
func (s *Store) Audit(actor *Principal, f AuditFilter) ([]*Entry, error) {
	if !actor.Has(DAC) && !actor.Has(Admin) {
		return nil, s.Refuse(actor, ActRead, "", fmt.Errorf("%w: the audit log is for the DAC and admins", ErrForbidden))
	}
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 1000
	}
	out := []*Entry{}
	err := s.view(func(st *state) error {
		return s.al.scan(f.After, func(e *Entry) bool {
			if !f.match(e) {
				return true
			}
			if e.Action == ActUserAdd || e.Action == ActTokenIssue {
				e.Data = redactTokens(e.Data)
			}
			out = append(out, e)
			return len(out) < f.Limit
		})
	})
	return out, err
}

func redactTokens(data json.RawMessage) json.RawMessage {
	var p payload
	if len(data) == 0 || json.Unmarshal(data, &p) != nil {
		return nil
	}
	if p.User != nil {
		for _, t := range p.User.Tokens {
			t.SHA256 = ""
		}
	}
	if p.Token != nil {
		p.Token.SHA256 = ""
	}
	out, _ := json.Marshal(p)
	return out
}
