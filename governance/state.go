package governance

import (
	"encoding/json"
	"fmt"
	"slices"
)

// Actions recorded in the audit log. Those marked † change the governance
// state, which is rebuilt from them when the store opens.
const (
	ActUserAdd         = "user.add"         // †
	ActTokenIssue      = "token.issue"      // †
	ActTokenRevoke     = "token.revoke"     // †
	ActRequestCreate   = "request.create"   // †
	ActRequestSubmit   = "request.submit"   // †
	ActRequestReview   = "request.review"   // †
	ActRequestApprove  = "request.approve"  // †
	ActRequestReject   = "request.reject"   // †
	ActRequestWithdraw = "request.withdraw" // †
	ActRequestAmend    = "request.amend"    // †
	ActAuth            = "auth"             // a refused token
	ActAccess          = "access"           // a refused call (wrong role, not a member)
	ActQuery           = "query"
	ActPublish         = "dataset.publish"
	ActCodelist        = "codelist.import"
	ActKeyRotate       = "key.rotate"
	ActRead            = "read" // a refused read of requests, budgets or the log
)

var stateActions = map[string]bool{ActUserAdd: true, ActTokenIssue: true, ActTokenRevoke: true, ActRequestCreate: true,
	ActRequestSubmit: true, ActRequestReview: true, ActRequestApprove: true, ActRequestReject: true,
	ActRequestWithdraw: true, ActRequestAmend: true}

// payload is the Data of a state-changing entry.
type payload struct {
	User      *User      `json:"user,omitempty"`
	Token     *Token     `json:"token,omitempty"`
	TokenIDs  []string   `json:"token_ids,omitempty"`
	Request   *Request   `json:"request,omitempty"`
	Vote      *Vote      `json:"vote,omitempty"`
	Decision  *Decision  `json:"decision,omitempty"`
	Amendment *Amendment `json:"amendment,omitempty"`
}

// state is the governance state: a fold of the audit log's entries.
type state struct {
	users    map[string]*User
	tokens   map[string]*tokenRef // by SHA-256
	requests map[string]*Request
	order    []string          // request IDs as created
	projects map[string]string // project name → request ID
}

type tokenRef struct {
	user  *User
	token *Token
}

func newState() *state {
	return &state{users: map[string]*User{}, tokens: map[string]*tokenRef{}, requests: map[string]*Request{},
		projects: map[string]string{}}
}

// apply folds one verified entry into the state. Entries were checked
// before they were written, so an entry that does not apply means the log
// was altered (or written by an incompatible version).
func (st *state) apply(e *Entry) error {
	if e.Outcome != OK {
		return nil
	}
	var p payload
	if len(e.Data) > 0 {
		if err := json.Unmarshal(e.Data, &p); err != nil {
			return err
		}
	}
	switch e.Action {
	case ActUserAdd:
		if p.User == nil || st.users[p.User.Name] != nil {
			return fmt.Errorf("user %q added twice", e.User)
		}
		u := p.User
		st.users[u.Name] = u
		for _, t := range u.Tokens {
			st.tokens[t.SHA256] = &tokenRef{u, t}
		}
	case ActTokenIssue:
		u := st.users[e.User]
		if u == nil || p.Token == nil {
			return fmt.Errorf("token for unknown user %q", e.User)
		}
		u.Tokens = append(u.Tokens, p.Token)
		st.tokens[p.Token.SHA256] = &tokenRef{u, p.Token}
	case ActTokenRevoke:
		u := st.users[e.User]
		if u == nil {
			return fmt.Errorf("revoke for unknown user %q", e.User)
		}
		for _, t := range u.Tokens {
			if slices.Contains(p.TokenIDs, t.ID) && t.Revoked == nil {
				at := e.Time
				t.Revoked = &at
			}
		}
	case ActRequestCreate:
		r := p.Request
		if r == nil || st.requests[r.ID] != nil || st.projects[r.Project] != "" {
			return fmt.Errorf("request %q created twice", e.Request)
		}
		st.requests[r.ID] = r
		st.order = append(st.order, r.ID)
		st.projects[r.Project] = r.ID
	case ActRequestSubmit, ActRequestReview, ActRequestWithdraw, ActRequestAmend, ActRequestApprove, ActRequestReject:
		r := st.requests[e.Request]
		if r == nil {
			return fmt.Errorf("%s of unknown request %q", e.Action, e.Request)
		}
		r.Updated = e.Time
		switch e.Action {
		case ActRequestSubmit:
			r.State = Submitted
		case ActRequestReview:
			r.State = InReview
			if !slices.Contains(r.Reviewers, e.Actor) {
				r.Reviewers = append(r.Reviewers, e.Actor)
			}
		case ActRequestWithdraw:
			r.State = Withdrawn
		case ActRequestAmend:
			if p.Amendment == nil {
				return fmt.Errorf("amendment missing")
			}
			r.Amendments = append(r.Amendments, p.Amendment)
		case ActRequestApprove, ActRequestReject:
			if p.Vote == nil {
				return fmt.Errorf("vote missing")
			}
			if a := r.pending(); a != nil {
				a.Votes = append(a.Votes, *p.Vote)
				if p.Decision != nil {
					a.Decision = p.Decision
					a.State = "rejected"
					if p.Decision.Outcome.approved() {
						a.State = "approved"
						r.Decision = mergeAmendment(r.Decision, p.Decision)
						if r.Decision.Outcome == ApprovedWithConditions {
							r.State = ApprovedWithConditions
						}
					}
				}
				return nil
			}
			r.Votes = append(r.Votes, *p.Vote)
			if r.State == Submitted {
				r.State = InReview
			}
			if p.Decision != nil {
				r.Decision = p.Decision
				r.State = p.Decision.Outcome
			}
		}
	}
	return nil
}

// mergeAmendment returns the request's decision as an approved amendment
// changes it: new totals and expiry, conditions added.
func mergeAmendment(d, a *Decision) *Decision {
	c := *d
	c.EpsilonU, c.DeltaU, c.MaxQueryU, c.Expires = a.EpsilonU, a.DeltaU, a.MaxQueryU, a.Expires
	c.Conditions = append(slices.Clone(d.Conditions), a.Conditions...)
	if len(c.Conditions) > 0 {
		c.Outcome = ApprovedWithConditions
	}
	return &c
}

// project returns the project an approved (or approved, then withdrawn)
// request grants, or nil.
func (st *state) project(name string) *Project {
	r := st.requests[st.projects[name]]
	if r == nil || r.Decision == nil || !r.Decision.Outcome.approved() {
		return nil
	}
	d := r.Decision
	return &Project{Name: r.Project, Request: r.ID, Members: r.members(), Datasets: slices.Clone(r.Datasets),
		EpsilonU: d.EpsilonU, DeltaU: d.DeltaU, MaxQueryU: d.MaxQueryU, Expires: d.Expires,
		Withdrawn: r.State == Withdrawn, Conditions: slices.Clone(d.Conditions), Rules: d.Rules}
}
