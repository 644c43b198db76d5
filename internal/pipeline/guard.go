package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/ingest"
)

// Defaults of the safety checks.
const (
	// DefaultOptOutMaxAge is how old the opt-out list may be. NHS England
	// refreshes the National Data Opt-out list for a data release at least
	// monthly; a list older than that misses patients who opted out since.
	DefaultOptOutMaxAge = 31 * 24 * time.Hour
	// DefaultMaxQuarantine is the largest share of any table's rows that
	// may be quarantined: more says the extract, not its rows, is wrong.
	DefaultMaxQuarantine = 0.05
)

// A Check is one safety check that a publish must pass. Each can be
// passed by only when the operator names it in Config.Overrides, and the
// manifest (and so the audit log) records that it was.
type Check string

const (
	// CheckOptOutsEmpty refuses an opt-out list with no NHS number (or
	// none at all): a failed download must not publish everyone.
	CheckOptOutsEmpty Check = "optouts_empty"
	// CheckOptOutsStale refuses a list older than the maximum age, or one
	// whose date is unknown.
	CheckOptOutsStale Check = "optouts_stale"
	// CheckQuarantine refuses a run that quarantined more than the
	// maximum share of any table.
	CheckQuarantine Check = "max_quarantine"
	// CheckEmptyTable refuses a version that keeps no patient, or that
	// leaves empty a table the previous version had rows in.
	CheckEmptyTable Check = "empty_table"
)

// Checks lists every check, in the order they run.
var Checks = []Check{CheckOptOutsEmpty, CheckOptOutsStale, CheckQuarantine, CheckEmptyTable}

// A RefusedError says which safety check failed. Nothing was published
// and nothing is left in the lake.
type RefusedError struct {
	Check  Check
	Detail string // counts and dates only, never a value
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("refused to publish (%s): %s", e.Check, e.Detail)
}

// ErrRefused matches every RefusedError with errors.Is.
var ErrRefused = errors.New("refused to publish")

func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// guard holds a run's safety settings, defaults filled in.
type guard struct {
	maxAge        time.Duration
	maxQuarantine float64
	overrides     []Check
	now           time.Time
	passed        []string // overridden checks that would have refused
}

func newGuard(cfg *Config) *guard {
	g := &guard{maxAge: cfg.OptOutMaxAge, maxQuarantine: cfg.MaxQuarantine, overrides: cfg.Overrides, now: time.Now()}
	if cfg.Now != nil {
		g.now = cfg.Now()
	}
	if g.maxAge <= 0 {
		g.maxAge = DefaultOptOutMaxAge
	}
	if g.maxQuarantine <= 0 {
		g.maxQuarantine = DefaultMaxQuarantine
	}
	return g
}

// refuse returns the refusal, or nil when the operator overrode check.
func (g *guard) refuse(check Check, format string, args ...any) error {
	if slices.Contains(g.overrides, check) {
		if !slices.Contains(g.passed, string(check)) {
			g.passed = append(g.passed, string(check))
		}
		return nil
	}
	return &RefusedError{Check: check, Detail: fmt.Sprintf(format, args...)}
}

// optOuts checks the opt-out list before anything is written.
func (g *guard) optOuts(o *ingest.OptOuts, date string) error {
	if o == nil {
		return g.refuse(CheckOptOutsEmpty, "no National Data Opt-out list was given")
	}
	if o.Len() == 0 {
		return g.refuse(CheckOptOutsEmpty, "the opt-out list holds no NHS number (%d lines, %d invalid): a failed or partial download would publish every opted-out patient", o.Stats.Lines, o.Stats.Invalid)
	}
	if date == "" {
		return g.refuse(CheckOptOutsStale, "the opt-out list's date is unknown")
	}
	d, err := time.Parse(time.DateOnly, date)
	if err != nil {
		return g.refuse(CheckOptOutsStale, "the opt-out list's date %q is not YYYY-MM-DD", date)
	}
	if age := g.now.Sub(d); age > g.maxAge {
		return g.refuse(CheckOptOutsStale, "the opt-out list is dated %s, %d days old; at most %d days are allowed", date, int(age.Hours()/24), int(g.maxAge.Hours()/24))
	}
	return nil
}

// output checks what ingest kept against the thresholds and the previous
// version, before the manifest is written.
func (g *guard) output(ctx context.Context, lake *catalog.Lake, dataset string, rep *ingest.Report) error {
	var bad []string
	for _, t := range ingest.Tables {
		tr := rep.Tables[t.String()]
		if tr == nil || tr.Read == 0 {
			continue
		}
		if share := float64(tr.Quarantined) / float64(tr.Read); share > g.maxQuarantine {
			bad = append(bad, fmt.Sprintf("%s %d of %d rows (%.1f%%)", t, tr.Quarantined, tr.Read, 100*share))
		}
	}
	if len(bad) > 0 {
		if err := g.refuse(CheckQuarantine, "quarantined more than %.1f%% of a table: %s; see the report's reasons and the quarantine list", 100*g.maxQuarantine, strings.Join(bad, ", ")); err != nil {
			return err
		}
	}
	if rep.Tables[ingest.Patients.String()].Kept == 0 {
		if err := g.refuse(CheckEmptyTable, "no patient was kept"); err != nil {
			return err
		}
	}
	prev, err := previous(ctx, lake, dataset)
	if err != nil || prev == nil {
		return err
	}
	var emptied []string
	for _, t := range ingest.Tables {
		was := prev.Tables[t.String()]
		if tr := rep.Tables[t.String()]; was != nil && was.Rows > 0 && tr != nil && tr.Kept == 0 {
			emptied = append(emptied, fmt.Sprintf("%s (%d rows in version %d)", t, was.Rows, prev.Version))
		}
	}
	if len(emptied) > 0 {
		return g.refuse(CheckEmptyTable, "this version would leave empty: %s", strings.Join(emptied, ", "))
	}
	return nil
}

// previous returns the dataset's latest committed manifest, or nil.
func previous(ctx context.Context, lake *catalog.Lake, dataset string) (*catalog.Manifest, error) {
	m, err := lake.Manifest(ctx, dataset, 0) // the latest
	if errors.Is(err, catalog.ErrNotFound) {
		return nil, nil
	}
	return m, err
}
