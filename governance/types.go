package governance

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Budgets are kept in integer units so that sums are exact: ε in
// millionths, δ in 10⁻¹⁵ (δ is usually 10⁻⁵ to 10⁻⁹).
const (
	EpsilonUnit = 1e-6
	DeltaUnit   = 1e-15
)

// Units converts a budget to whole units, rounding up: a charge is never
// less than what the noise used.
func Units(x, unit float64) int64 { return int64(math.Ceil(x/unit - 1e-9)) }

// Limits of what a request may ask for.
const (
	MaxEpsilon      = 100.0
	MaxDelta        = 1e-3
	MaxDurationDays = 5 * 366
	DefaultQuorum   = 2
	DefaultTokenTTL = 90 * 24 * time.Hour
)

// Sentinel errors; the HTTP API maps each to a status.
var (
	ErrUnauthorized = errors.New("missing, unknown, expired or revoked token")
	// ErrUnavailable is a change that could not be written to the audit
	// log (a full disk, a failed sync): it is not in effect.
	ErrUnavailable       = errors.New("the governance state cannot be written now; nothing was changed")
	ErrForbidden         = errors.New("forbidden")
	ErrNotFound          = errors.New("not found")
	ErrInvalid           = errors.New("invalid")
	ErrConflict          = errors.New("not allowed in the current state")
	ErrExpired           = errors.New("the project's approval has expired")
	ErrWithdrawn         = errors.New("the project's request was withdrawn")
	ErrDatasetNotAllowed = errors.New("the project is not approved for this dataset")
)

// A Role is what a user may do. A user may hold several.
type Role string

// The roles.
const (
	Researcher Role = "researcher" // submits requests and queries approved projects
	DAC        Role = "dac"        // reviews, approves and rejects requests
	Analyst    Role = "analyst"    // reads the catalogue; queries projects it is named on
	Admin      Role = "admin"      // manages users and tokens, reads the audit log
)

// Roles lists every role.
var Roles = []Role{Researcher, DAC, Analyst, Admin}

// ParseRole parses a role's name.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if !slices.Contains(Roles, r) {
		return "", fmt.Errorf("%w: unknown role %q (use researcher, dac, analyst or admin)", ErrInvalid, clip(s))
	}
	return r, nil
}

// A Principal is who is acting: a user authenticated by a token, or an
// operator on the server's host (named "host:<login>", an admin).
type Principal struct {
	Name  string `json:"name"`
	Roles []Role `json:"roles"`
}

// Has reports whether p holds role r.
func (p *Principal) Has(r Role) bool { return p != nil && slices.Contains(p.Roles, r) }

// Host is the principal of a command run on the server's host with access
// to its state folder: an admin.
func Host(login string) *Principal {
	return &Principal{Name: "host:" + login, Roles: []Role{Admin}}
}

// A Token is a bearer token's record. The token itself is shown once and
// only its SHA-256 is kept; ID (a prefix of that hash) names it in lists
// and the audit log.
type Token struct {
	ID      string     `json:"id"`
	SHA256  string     `json:"sha256,omitempty"`
	Created time.Time  `json:"created"`
	Expires time.Time  `json:"expires"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

// A User is a person with roles and tokens.
type User struct {
	Name    string    `json:"name"`
	Roles   []Role    `json:"roles"`
	Created time.Time `json:"created"`
	Tokens  []*Token  `json:"tokens"`
}

// Legal bases for using confidential patient data.
var LegalBases = []string{"consent", "s251", "anonymised", "statutory"}

// A RequestSpec is what a researcher asks for.
type RequestSpec struct {
	// Project names the project an approval creates; default the request's ID.
	Project         string   `json:"project,omitempty"`
	Title           string   `json:"title"`
	Purpose         string   `json:"purpose"`
	LaySummary      string   `json:"lay_summary"`
	Datasets        []string `json:"datasets"`
	Epsilon         float64  `json:"epsilon"`
	Delta           float64  `json:"delta"`
	MaxQueryEpsilon float64  `json:"max_query_epsilon"`
	LegalBasis      string   `json:"legal_basis"`
	// NationalOptOutApplies says whether the National Data Opt-out must be
	// applied to the data (the hub applies it at ingest in any case).
	NationalOptOutApplies *bool    `json:"national_opt_out_applies"`
	DurationDays          int      `json:"duration_days"`
	Researchers           []string `json:"researchers"`
}

// States of a request.
type State string

// The states. Approved and ApprovedWithConditions may carry a pending
// amendment.
const (
	Draft                  State = "draft"
	Submitted              State = "submitted"
	InReview               State = "in_review"
	Approved               State = "approved"
	ApprovedWithConditions State = "approved_with_conditions"
	Rejected               State = "rejected"
	Withdrawn              State = "withdrawn"
)

func (s State) approved() bool { return s == Approved || s == ApprovedWithConditions }

// A Vote is one DAC member's decision on a request or an amendment.
type Vote struct {
	Reviewer   string    `json:"reviewer"`
	Time       time.Time `json:"time"`
	Approve    bool      `json:"approve"`
	Reason     string    `json:"reason"`
	Conditions string    `json:"conditions,omitempty"`
	// What an approval grants (at most what was asked).
	EpsilonU  int64     `json:"epsilon_units,omitempty"`
	DeltaU    int64     `json:"delta_units,omitempty"`
	MaxQueryU int64     `json:"max_query_epsilon_units,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
	// Rules are the release rules this member sets (nil: the defaults).
	Rules *ReleaseRules `json:"release_rules,omitempty"`
}

// ReleaseRules are the small-number rules a DAC makes a term of its
// approval: every answer of the project obeys them, and a query may only
// tighten them. Zero fields take DefaultRules'.
type ReleaseRules struct {
	// SuppressBelow: a noisy count under it is released as suppressed.
	SuppressBelow int `json:"suppress_below,omitempty"`
	// RoundTo: released counts are rounded to a multiple of it (1: none).
	RoundTo int `json:"round_to,omitempty"`
	// MinCohort: a sum, mean or quantile over fewer patients (a noisy
	// count) is released as suppressed.
	MinCohort int `json:"min_cohort,omitempty"`
}

// DefaultRules follow NHS small-number practice: NHS England's HES
// disclosure control suppresses counts from 1 to 7 and rounds the rest to
// the nearest 5, as OpenSAFELY's output checking does; the hub suppresses
// below 10 (stricter), rounds to 5, and releases no statistic of fewer
// than 10 patients.
var DefaultRules = ReleaseRules{SuppressBelow: 10, RoundTo: 5, MinCohort: 10}

// Limits of release rules.
const (
	MaxSuppress  = 1000
	MaxMinCohort = 100000
)

// check refuses rules out of range; zero fields are unset.
func (r *ReleaseRules) check() error {
	if r == nil {
		return nil
	}
	if r.SuppressBelow != 0 && (r.SuppressBelow < DefaultRules.SuppressBelow || r.SuppressBelow > MaxSuppress) {
		return fmt.Errorf("%w: suppress_below from %d to %d (a DAC may tighten the hub's floor, not lower it)", ErrInvalid, DefaultRules.SuppressBelow, MaxSuppress)
	}
	if r.RoundTo != 0 && r.RoundTo != 1 && r.RoundTo != 5 && r.RoundTo != 10 {
		return fmt.Errorf("%w: round_to is 1 (no rounding), 5 or 10", ErrInvalid)
	}
	if r.MinCohort != 0 && (r.MinCohort < 1 || r.MinCohort > MaxMinCohort) {
		return fmt.Errorf("%w: min_cohort from 1 to %d", ErrInvalid, MaxMinCohort)
	}
	return nil
}

// withDefaults fills the unset fields from DefaultRules.
func (r *ReleaseRules) withDefaults() ReleaseRules {
	out := DefaultRules
	if r != nil {
		if r.SuppressBelow != 0 {
			out.SuppressBelow = r.SuppressBelow
		}
		if r.RoundTo != 0 {
			out.RoundTo = r.RoundTo
		}
		if r.MinCohort != 0 {
			out.MinCohort = r.MinCohort
		}
	}
	return out
}

// A Decision is the DAC's outcome: a rejection, or an approval by a quorum
// of distinct members, which grants the least of what they each granted.
type Decision struct {
	Outcome    State     `json:"outcome"`
	Time       time.Time `json:"time"`
	DecidedBy  []string  `json:"decided_by"`
	Reasons    []string  `json:"reasons"`
	Conditions []string  `json:"conditions,omitempty"`
	EpsilonU   int64     `json:"epsilon_units,omitempty"`
	DeltaU     int64     `json:"delta_units,omitempty"`
	MaxQueryU  int64     `json:"max_query_epsilon_units,omitempty"`
	Expires    time.Time `json:"expires,omitzero"`
	// Rules are the strictest of the approving members' release rules;
	// nil in decisions made before release rules existed, whose projects
	// keep the rules of their time (suppression below 10, rounding and
	// minimum cohorts as each query asks).
	Rules *ReleaseRules `json:"release_rules,omitempty"`
}

// An AmendmentSpec asks for a new total budget or a later expiry.
type AmendmentSpec struct {
	Epsilon         float64 `json:"epsilon"`
	Delta           float64 `json:"delta"`
	MaxQueryEpsilon float64 `json:"max_query_epsilon"`
	ExtendDays      int     `json:"extend_days"`
	Reason          string  `json:"reason"`
}

// An Amendment of an approved request.
type Amendment struct {
	N         int       `json:"n"`
	Requested time.Time `json:"requested"`
	AmendmentSpec
	State    string    `json:"state"` // pending, approved, rejected
	Votes    []Vote    `json:"votes"`
	Decision *Decision `json:"decision,omitempty"`
}

// A Request is a data access request and its history.
type Request struct {
	ID string `json:"id"`
	RequestSpec
	Submitter  string       `json:"submitter"`
	State      State        `json:"state"`
	Created    time.Time    `json:"created"`
	Updated    time.Time    `json:"updated"`
	Reviewers  []string     `json:"reviewers,omitempty"`
	Votes      []Vote       `json:"votes"`
	Decision   *Decision    `json:"decision,omitempty"`
	Amendments []*Amendment `json:"amendments,omitempty"`
}

// members are the people who may use the project: the submitter and the
// named researchers.
func (r *Request) members() []string {
	m := []string{r.Submitter}
	for _, n := range r.Researchers {
		if !slices.Contains(m, n) {
			m = append(m, n)
		}
	}
	return m
}

// pending is the amendment waiting for the DAC, if the request is still
// approved.
func (r *Request) pending() *Amendment {
	if n := len(r.Amendments); n > 0 && r.Amendments[n-1].State == "pending" && r.State.approved() {
		return r.Amendments[n-1]
	}
	return nil
}

// A Project is what an approved request grants: who may query which
// datasets, with what budget, until when.
type Project struct {
	Name       string    `json:"name"`
	Request    string    `json:"request"`
	Members    []string  `json:"members"`
	Datasets   []string  `json:"datasets"`
	EpsilonU   int64     `json:"epsilon_units"`
	DeltaU     int64     `json:"delta_units"`
	MaxQueryU  int64     `json:"max_query_epsilon_units"`
	Expires    time.Time `json:"expires"`
	Withdrawn  bool      `json:"withdrawn,omitempty"`
	Conditions []string  `json:"conditions,omitempty"`
	// Rules are the DAC's release rules (nil: a project approved before
	// they existed).
	Rules *ReleaseRules `json:"release_rules,omitempty"`
}

// Allows reports whether the project may query dataset at time now.
func (p *Project) Allows(dataset string, now time.Time) error {
	if p.Withdrawn {
		return fmt.Errorf("%s: %w", p.Name, ErrWithdrawn)
	}
	if !now.Before(p.Expires) {
		return fmt.Errorf("%s expired %s: %w; the submitter may ask the DAC for an extension (hub request amend)",
			p.Name, p.Expires.Format(time.DateOnly), ErrExpired)
	}
	if !slices.Contains(p.Datasets, dataset) {
		return fmt.Errorf("%s: %w", clip(dataset), ErrDatasetNotAllowed)
	}
	return nil
}

// clip shortens a caller's string for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
