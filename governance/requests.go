package governance

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
)

var projectName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

func checkText(field, v string, max int) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("%w: %s is required", ErrInvalid, field)
	}
	if len(v) > max {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalid, field, max)
	}
	return nil
}

func checkBudget(eps, delta, capE float64) error {
	if math.IsNaN(eps) || eps <= 0 || eps > MaxEpsilon {
		return fmt.Errorf("%w: epsilon must be above 0 and at most %g", ErrInvalid, MaxEpsilon)
	}
	if math.IsNaN(delta) || delta < 0 || delta > MaxDelta {
		return fmt.Errorf("%w: delta must be between 0 and %g", ErrInvalid, MaxDelta)
	}
	if math.IsNaN(capE) || capE < 0 || capE > eps {
		return fmt.Errorf("%w: max_query_epsilon must lie between 0 (meaning the whole epsilon) and epsilon", ErrInvalid)
	}
	return nil
}

// validate checks a request's fields against the state: named researchers
// must be users who may query.
func (r *RequestSpec) validate(st *state) error {
	if !projectName.MatchString(r.Project) {
		return fmt.Errorf("%w: project name %q: use lower-case letters, digits, '-' and '_'", ErrInvalid, clip(r.Project))
	}
	if id := st.projects[r.Project]; id != "" {
		return fmt.Errorf("%w: project name %s is taken by request %s; choose another", ErrConflict, r.Project, id)
	}
	for _, f := range []struct {
		name, v string
		max     int
	}{{"title", r.Title, 200}, {"purpose", r.Purpose, 10000}, {"lay_summary", r.LaySummary, 10000}} {
		if err := checkText(f.name, f.v, f.max); err != nil {
			return err
		}
	}
	if len(r.Datasets) == 0 || len(r.Datasets) > 20 {
		return fmt.Errorf("%w: name between 1 and 20 datasets", ErrInvalid)
	}
	for _, d := range r.Datasets {
		if !projectName.MatchString(d) {
			return fmt.Errorf("%w: dataset name %q is not valid", ErrInvalid, clip(d))
		}
	}
	if err := checkBudget(r.Epsilon, r.Delta, r.MaxQueryEpsilon); err != nil {
		return err
	}
	if !slices.Contains(LegalBases, r.LegalBasis) {
		return fmt.Errorf("%w: legal_basis must be one of %s", ErrInvalid, strings.Join(LegalBases, ", "))
	}
	if r.NationalOptOutApplies == nil {
		return fmt.Errorf("%w: say whether the National Data Opt-out applies (national_opt_out_applies: true or false)", ErrInvalid)
	}
	if r.DurationDays < 1 || r.DurationDays > MaxDurationDays {
		return fmt.Errorf("%w: duration_days must be between 1 and %d", ErrInvalid, MaxDurationDays)
	}
	if len(r.Researchers) > 50 {
		return fmt.Errorf("%w: name at most 50 researchers", ErrInvalid)
	}
	for _, n := range r.Researchers {
		u := st.users[n]
		if u == nil || !(slices.Contains(u.Roles, Researcher) || slices.Contains(u.Roles, Analyst)) {
			return fmt.Errorf("%w: named researcher %q is not a user with the researcher or analyst role", ErrInvalid, clip(n))
		}
	}
	return nil
}

// CreateRequest records a researcher's draft request (submit it with
// Submit, or pass submit to do both).
func (s *Store) CreateRequest(actor *Principal, spec RequestSpec, submit bool) (*Request, error) {
	var id string
	_, err := s.do(event{actor: actor, entry: Entry{Action: ActRequestCreate}, check: func(st *state, now time.Time) (*payload, error) {
		if !actor.Has(Researcher) {
			return nil, fmt.Errorf("%w: only a researcher submits data access requests", ErrForbidden)
		}
		id = fmt.Sprintf("req-%d", len(st.order)+1)
		if spec.Project == "" {
			spec.Project = id
		}
		if err := spec.validate(st); err != nil {
			return nil, err
		}
		if spec.MaxQueryEpsilon == 0 {
			spec.MaxQueryEpsilon = spec.Epsilon
		}
		return &payload{Request: &Request{ID: id, RequestSpec: spec, Submitter: actor.Name, State: Draft,
			Created: now, Updated: now, Votes: []Vote{}}}, nil
	}})
	if err != nil {
		return nil, err
	}
	if submit {
		return s.Submit(actor, id)
	}
	return s.Request(actor, id)
}

// byID finds a request, or ErrNotFound.
func (st *state) byID(id string) (*Request, error) {
	r := st.requests[id]
	if r == nil {
		return nil, fmt.Errorf("%w: no request %q", ErrNotFound, clip(id))
	}
	return r, nil
}

// submitter is the check that the actor submitted the request, for an
// action named what.
func submitter(what string) func(*Principal, *Request) error {
	return func(actor *Principal, r *Request) error {
		if !actor.Has(Researcher) || r.Submitter != actor.Name {
			return fmt.Errorf("%w: only %s's submitter may %s it", ErrForbidden, r.ID, what)
		}
		return nil
	}
}

// onRequest runs an action on request id: the request must exist, allow
// must let the actor act on it, and check decides against its state. It
// returns the request as it stands after the action.
func (s *Store) onRequest(actor *Principal, action, id string, allow func(*Principal, *Request) error,
	check func(r *Request, now time.Time) (*payload, error)) (*Request, error) {
	_, err := s.do(event{actor: actor, entry: Entry{Action: action, Request: id}, check: func(st *state, now time.Time) (*payload, error) {
		r, err := st.byID(id)
		if err != nil {
			return nil, err
		}
		if err := allow(actor, r); err != nil {
			return nil, err
		}
		return check(r, now)
	}})
	if err != nil {
		return nil, err
	}
	return s.Request(actor, id)
}

// Submit sends a draft to the DAC.
func (s *Store) Submit(actor *Principal, id string) (*Request, error) {
	return s.onRequest(actor, ActRequestSubmit, id, submitter("submit"), func(r *Request, now time.Time) (*payload, error) {
		if r.State != Draft {
			return nil, fmt.Errorf("%w: %s is %s, not a draft", ErrConflict, id, r.State)
		}
		return nil, nil
	})
}

// Withdraw withdraws a request; an approved request's project stops
// answering queries.
func (s *Store) Withdraw(actor *Principal, id string) (*Request, error) {
	return s.onRequest(actor, ActRequestWithdraw, id, submitter("withdraw"), func(r *Request, now time.Time) (*payload, error) {
		if r.State == Rejected || r.State == Withdrawn {
			return nil, fmt.Errorf("%w: %s is already %s", ErrConflict, id, r.State)
		}
		return nil, nil
	})
}

// Amend asks the DAC for a new total budget or more time on an approved
// request. The DAC decides it as it decides a request.
func (s *Store) Amend(actor *Principal, id string, a AmendmentSpec) (*Request, error) {
	return s.onRequest(actor, ActRequestAmend, id, submitter("amend"), func(r *Request, now time.Time) (*payload, error) {
		if !r.State.approved() {
			return nil, fmt.Errorf("%w: only an approved request can be amended; %s is %s", ErrConflict, id, r.State)
		}
		if r.pending() != nil {
			return nil, fmt.Errorf("%w: %s already has an amendment waiting for the DAC", ErrConflict, id)
		}
		d := r.Decision
		if a.Epsilon == 0 {
			a.Epsilon = float64(d.EpsilonU) * EpsilonUnit
		}
		if a.Delta == 0 {
			a.Delta = float64(d.DeltaU) * DeltaUnit
		}
		if a.MaxQueryEpsilon == 0 {
			a.MaxQueryEpsilon = min(float64(d.MaxQueryU)*EpsilonUnit, a.Epsilon)
		}
		if err := checkBudget(a.Epsilon, a.Delta, a.MaxQueryEpsilon); err != nil {
			return nil, err
		}
		if a.ExtendDays < 0 || a.ExtendDays > MaxDurationDays {
			return nil, fmt.Errorf("%w: extend_days must be between 0 and %d", ErrInvalid, MaxDurationDays)
		}
		if err := checkText("reason", a.Reason, 5000); err != nil {
			return nil, err
		}
		return &payload{Amendment: &Amendment{N: len(r.Amendments) + 1, Requested: now, AmendmentSpec: a, State: "pending", Votes: []Vote{}}}, nil
	})
}

// dacOnly is the check that the actor is a DAC member independent of the
// request: neither its submitter nor a named researcher.
func dacOnly(actor *Principal, r *Request) error {
	if !actor.Has(DAC) {
		return fmt.Errorf("%w: only a DAC member reviews requests", ErrForbidden)
	}
	if slices.Contains(r.members(), actor.Name) {
		return fmt.Errorf("%w: %s submitted or is named on %s and may not review it", ErrForbidden, actor.Name, r.ID)
	}
	return nil
}

// Review marks a submitted request as in review by the actor.
func (s *Store) Review(actor *Principal, id string) (*Request, error) {
	return s.onRequest(actor, ActRequestReview, id, dacOnly, func(r *Request, now time.Time) (*payload, error) {
		if r.State != Submitted && r.State != InReview {
			return nil, fmt.Errorf("%w: %s is %s; only a submitted request is reviewed", ErrConflict, id, r.State)
		}
		return nil, nil
	})
}

// A Grant is what a DAC member approves: at most what was asked. Zero
// fields grant what was asked.
type Grant struct {
	Epsilon, Delta, MaxQueryEpsilon float64
	Expires                         time.Time
	Reason, Conditions              string
	// Rules are the release rules the member sets (nil or zero fields:
	// the defaults). They apply to a request's first decision; an
	// amendment keeps the project's.
	Rules *ReleaseRules
}

// Approve records the actor's approval of a request (or of its pending
// amendment). When a quorum of distinct DAC members has approved, the
// request is approved, granting the least of their grants, and its project
// can be queried. An amendment may not grant less than the project has
// spent: the more of what spent (nil: nothing) reports in units and of
// what the audit log's released queries charged. spent is asked before
// the store's lock is taken: the cohort service's answer may need the
// store (a ledger opened for the first time writes its charges missing
// from the audit log), and asked under the lock it deadlocked.
func (s *Store) Approve(actor *Principal, id string, g Grant, spent func(project string) (eps, delta int64, err error)) (*Request, error) {
	var ledgerE, ledgerD int64
	if spent != nil {
		var project string
		if err := s.view(func(st *state) error {
			if r, err := st.byID(id); err == nil && r.pending() != nil {
				project = r.Project
			}
			return nil
		}); err != nil {
			return nil, err
		}
		if project != "" {
			var err error
			if ledgerE, ledgerD, err = spent(project); err != nil {
				return nil, err
			}
		}
	}
	return s.onRequest(actor, ActRequestApprove, id, dacOnly, func(r *Request, now time.Time) (*payload, error) {
		if err := checkText("reason", g.Reason, 5000); err != nil {
			return nil, err
		}
		// What was asked, and the latest expiry: the asked duration from the
		// decision, or the current expiry extended.
		askE, askD, askC := r.Epsilon, r.Delta, r.MaxQueryEpsilon
		latest := now.Add(time.Duration(r.DurationDays) * 24 * time.Hour)
		votes := r.Votes
		a := r.pending()
		switch {
		case a != nil:
			askE, askD, askC = a.Epsilon, a.Delta, a.MaxQueryEpsilon
			latest = r.Decision.Expires.Add(time.Duration(a.ExtendDays) * 24 * time.Hour)
			votes = a.Votes
		case r.State != Submitted && r.State != InReview:
			return nil, fmt.Errorf("%w: %s is %s; there is nothing to approve", ErrConflict, id, r.State)
		}
		for _, v := range votes {
			if v.Reviewer == actor.Name {
				return nil, fmt.Errorf("%w: %s has already voted on this", ErrConflict, actor.Name)
			}
		}
		if err := g.Rules.check(); err != nil {
			return nil, err
		}
		if a != nil && g.Rules != nil {
			return nil, fmt.Errorf("%w: an amendment keeps the project's release rules", ErrInvalid)
		}
		v := Vote{Reviewer: actor.Name, Time: now, Approve: true, Reason: g.Reason, Conditions: g.Conditions, Rules: g.Rules}
		grantE, grantD, grantC := pick(g.Epsilon, askE), pick(g.Delta, askD), pick(g.MaxQueryEpsilon, askC)
		if grantE > askE || grantD > askD || grantC > askC {
			return nil, fmt.Errorf("%w: a DAC may grant less than was asked, not more (asked ε %g, δ %g, per-query ε %g)", ErrInvalid, askE, askD, askC)
		}
		if err := checkBudget(grantE, grantD, grantC); err != nil {
			return nil, err
		}
		grantC = min(grantC, grantE)
		v.EpsilonU, v.DeltaU, v.MaxQueryU = Units(grantE, EpsilonUnit), Units(grantD, DeltaUnit), Units(grantC, EpsilonUnit)
		if !g.Expires.IsZero() {
			if g.Expires.After(latest) {
				return nil, fmt.Errorf("%w: the expiry may not be later than asked (%s)", ErrInvalid, latest.Format(time.DateOnly))
			}
			if !g.Expires.After(now) {
				return nil, fmt.Errorf("%w: the expiry must be in the future", ErrInvalid)
			}
			v.Expires = g.Expires.UTC()
		}
		// Under the lock: the audit log's charges so far (s.spent).
		spentE, spentD := max(ledgerE, s.spent[r.Project][0]), max(ledgerD, s.spent[r.Project][1])
		if a != nil && (v.EpsilonU < spentE || v.DeltaU < spentD) {
			return nil, fmt.Errorf("%w: the project has already spent ε %g (δ %g); an amendment cannot grant less",
				ErrInvalid, float64(spentE)*EpsilonUnit, float64(spentD)*DeltaUnit)
		}
		p := &payload{Vote: &v}
		if approvals := append(approvalsOf(votes), v); len(approvals) >= s.quorum {
			p.Decision = decide(approvals, now, latest)
		}
		return p, nil
	})
}

func pick(granted, asked float64) float64 {
	if granted == 0 {
		return asked
	}
	return granted
}

// approvalsOf returns the approvals among votes, one a reviewer (the
// first): a quorum is of distinct members. A vote reported as failed but
// written (a full disk after the append) and then cast again is in the
// log twice; it must not count twice when the log is replayed.
func approvalsOf(votes []Vote) []Vote {
	var out []Vote
	for _, v := range votes {
		if v.Approve && !slices.ContainsFunc(out, func(o Vote) bool { return o.Reviewer == v.Reviewer }) {
			out = append(out, v)
		}
	}
	return out
}

// decide merges a quorum's approvals: the least budget, the earliest
// expiry (latest unless a member set an earlier one), every condition,
// the strictest release rules.
func decide(approvals []Vote, now, latest time.Time) *Decision {
	d := &Decision{Outcome: Approved, Time: now, EpsilonU: math.MaxInt64, DeltaU: math.MaxInt64, MaxQueryU: math.MaxInt64,
		Expires: latest}
	var rules ReleaseRules
	for _, v := range approvals {
		r := v.Rules.withDefaults()
		rules.SuppressBelow = max(rules.SuppressBelow, r.SuppressBelow)
		rules.RoundTo = max(rules.RoundTo, r.RoundTo)
		rules.MinCohort = max(rules.MinCohort, r.MinCohort)
	}
	d.Rules = &rules
	for _, v := range approvals {
		d.DecidedBy = append(d.DecidedBy, v.Reviewer)
		d.Reasons = append(d.Reasons, v.Reason)
		if v.Conditions != "" {
			if !slices.Contains(d.Conditions, v.Conditions) { // members who agree on a condition state it once
				d.Conditions = append(d.Conditions, v.Conditions)
			}
			d.Outcome = ApprovedWithConditions
		}
		d.EpsilonU, d.DeltaU, d.MaxQueryU = min(d.EpsilonU, v.EpsilonU), min(d.DeltaU, v.DeltaU), min(d.MaxQueryU, v.MaxQueryU)
		if !v.Expires.IsZero() && v.Expires.Before(d.Expires) {
			d.Expires = v.Expires
		}
	}
	return d
}

// Reject rejects a request (or its pending amendment) with a reason. One
// DAC member's rejection is enough: approval needs a quorum, refusal does
// not (the conservative choice).
func (s *Store) Reject(actor *Principal, id, reason string) (*Request, error) {
	return s.onRequest(actor, ActRequestReject, id, dacOnly, func(r *Request, now time.Time) (*payload, error) {
		if err := checkText("reason", reason, 5000); err != nil {
			return nil, err
		}
		if r.pending() == nil && r.State != Submitted && r.State != InReview {
			return nil, fmt.Errorf("%w: %s is %s; there is nothing to reject", ErrConflict, id, r.State)
		}
		v := Vote{Reviewer: actor.Name, Time: now, Reason: reason}
		return &payload{Vote: &v, Decision: &Decision{Outcome: Rejected, Time: now, DecidedBy: []string{actor.Name}, Reasons: []string{reason}}}, nil
	})
}

// canSee reports whether the actor may read a request: its members, the
// DAC and admins.
func canSee(actor *Principal, r *Request) bool {
	return actor.Has(DAC) || actor.Has(Admin) || slices.Contains(r.members(), actor.Name)
}

// Request returns one request to someone who may see it.
func (s *Store) Request(actor *Principal, id string) (*Request, error) {
	var out *Request
	var refusal error
	err := s.view(func(st *state) error {
		r, err := st.byID(id)
		if err != nil {
			refusal = err
			return nil
		}
		if !canSee(actor, r) {
			refusal = fmt.Errorf("%w: %s is not yours to see", ErrForbidden, id)
			return nil
		}
		out = copyOf(r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if refusal != nil {
		return nil, s.Refuse(actor, ActRead, "", refusal)
	}
	return out, nil
}

// A RequestFilter narrows a list of requests.
type RequestFilter struct {
	State State
	// Open lists only requests waiting for the DAC (submitted, in review,
	// or with a pending amendment).
	Open bool
}

// Requests lists the requests the actor may see: a researcher's own (or
// those naming them), or all for the DAC and admins.
func (s *Store) Requests(actor *Principal, f RequestFilter) ([]*Request, error) {
	if !actor.Has(Researcher) && !actor.Has(DAC) && !actor.Has(Admin) {
		return nil, s.Refuse(actor, ActRead, "", fmt.Errorf("%w: analysts do not see data access requests", ErrForbidden))
	}
	out := []*Request{}
	err := s.view(func(st *state) error {
		for _, id := range st.order {
			r := st.requests[id]
			if !canSee(actor, r) || (f.State != "" && r.State != f.State) {
				continue
			}
			if f.Open && r.State != Submitted && r.State != InReview && r.pending() == nil {
				continue
			}
			out = append(out, copyOf(r))
		}
		return nil
	})
	return out, err
}

// Project returns a project an approval granted: ErrNotFound if none.
// This is what the cohort service asks before every query.
func (s *Store) Project(name string) (*Project, error) {
	var p *Project
	err := s.view(func(st *state) error {
		p = st.project(name)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, fmt.Errorf("%w: no approved project %q", ErrNotFound, clip(name))
	}
	return p, nil
}

// Scope says what an actor may do with a project.
type Scope int

// Scopes.
const (
	// ScopeQuery: spend the project's budget (members who are researchers
	// or analysts).
	ScopeQuery Scope = iota
	// ScopeView: see its budget and history (members, the DAC, admins).
	ScopeView
)

// Authorize checks that the actor may act on a project. A refusal is
// recorded and returned (ErrForbidden, or ErrNotFound for no project).
func (s *Store) Authorize(actor *Principal, project string, scope Scope) (*Project, error) {
	p, err := s.Project(project)
	if err == nil {
		member := slices.Contains(p.Members, actor.Name) && (actor.Has(Researcher) || actor.Has(Analyst))
		switch {
		case scope == ScopeQuery && !member:
			err = fmt.Errorf("%w: %s is not a researcher named on project %s", ErrForbidden, actor.Name, p.Name)
		case scope == ScopeView && !member && !actor.Has(DAC) && !actor.Has(Admin):
			err = fmt.Errorf("%w: project %s's budget is for its researchers, the DAC and admins", ErrForbidden, p.Name)
		}
	}
	if err != nil {
		action := ActRead
		if scope == ScopeQuery {
			action = ActQuery
		}
		return nil, s.Refuse(actor, action, project, err)
	}
	return p, nil
}

// A RegisterEntry is one approved project as the public register shows
// it: what was approved, for what, when and on what terms. It names no
// one.
type RegisterEntry struct {
	Project    string    `json:"project"`
	Title      string    `json:"title"`
	LaySummary string    `json:"lay_summary"`
	Datasets   []string  `json:"datasets"`
	LegalBasis string    `json:"legal_basis"`
	Decided    time.Time `json:"decided"`
	Outcome    State     `json:"outcome"`
	Conditions []string  `json:"conditions,omitempty"`
	EpsilonU   int64     `json:"epsilon_units"`
	Expires    time.Time `json:"expires"`
	Withdrawn  bool      `json:"withdrawn,omitempty"`
	Expired    bool      `json:"expired,omitempty"`
}

// Register lists every project the DAC approved, withdrawn and expired
// ones included, newest decision first: the public register, which
// anyone may read.
func (s *Store) Register() ([]RegisterEntry, error) {
	var out []RegisterEntry
	now := s.now()
	err := s.view(func(st *state) error {
		for _, id := range st.order {
			r := st.requests[id]
			if r.Decision == nil || !r.Decision.Outcome.approved() {
				continue
			}
			d := r.Decision
			out = append(out, RegisterEntry{Project: r.Project, Title: r.Title, LaySummary: r.LaySummary,
				Datasets: slices.Clone(r.Datasets), LegalBasis: r.LegalBasis, Decided: d.Time, Outcome: d.Outcome,
				Conditions: slices.Clone(d.Conditions), EpsilonU: d.EpsilonU, Expires: d.Expires,
				Withdrawn: r.State == Withdrawn, Expired: !now.Before(d.Expires)})
		}
		return nil
	})
	slices.SortStableFunc(out, func(a, b RegisterEntry) int { return b.Decided.Compare(a.Decided) })
	return out, err
}
