package cohorts

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/nhs-hub/hub/governance"
)

// Budgets are kept in integer units so that sums are exact (see
// governance.Units).
const (
	EpsilonUnit = governance.EpsilonUnit
	DeltaUnit   = governance.DeltaUnit
)

// Sentinel errors of the budget.
var (
	ErrBudgetExhausted = errors.New("privacy budget exhausted")
	ErrOverCap         = errors.New("query asks for more epsilon than the project's per-query cap")
	ErrLedgerBroken    = errors.New("budget ledger could not be written; the service refuses queries until it is restarted")
)

// units converts a budget to whole units, rounding up: a charge is never
// less than what the noise used.
func units(x, unit float64) int64 { return governance.Units(x, unit) }

// An Entry is one released query in a project's ledger.
type Entry struct {
	Seq         int       `json:"seq"`
	Time        time.Time `json:"time"`
	QuerySHA256 string    `json:"query_sha256"`
	Dataset     string    `json:"dataset"`
	Version     int       `json:"version"`
	EpsilonU    int64     `json:"epsilon_units"`
	DeltaU      int64     `json:"delta_units"`
	Answer      *Answer   `json:"answer"`
}

// A Ledger is a project's append-only record of spends. A spend and the
// answer it bought are one JSON line, written and synced before the answer
// is returned: a crash before the sync loses an answer nobody saw, never a
// spend. The answers stay on disk: memory holds each entry without its
// answer and where its line is, so it grows by a small fixed amount a
// query, not by the answers (which kept RSS growing under load). Safe for
// concurrent use.
type Ledger struct {
	mu     sync.Mutex
	f      *os.File
	size   int64 // where the next line goes
	spentE int64
	spentD int64
	// missingE and missingD are what the audit log says the project
	// spent beyond the ledger when it was opened (an emptied or lost
	// ledger): counted as spent, see SetFloor.
	missingE, missingD int64
	entries            []Entry         // without answers
	byHash             map[string]span // a released query's line
	broken             error
}

// A span is where a line of the ledger file is.
type span struct {
	off int64
	n   int32
}

// OpenLedger opens (creating) the ledger at path. A torn last line (a
// crash mid-write, never synced, so never answered) is cut off.
func OpenLedger(path string) (*Ledger, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open ledger: %w", err)
	}
	l := &Ledger{f: f, byHash: map[string]span{}}
	r := bufio.NewReader(f)
	var good int64
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			break // a line without its newline is torn
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read ledger: %w", err)
		}
		var e Entry
		if err := json.Unmarshal(bytes.TrimSpace(line), &e); err != nil {
			f.Close()
			return nil, fmt.Errorf("read ledger %s: entry after byte %d is corrupt: %w", path, good, err)
		}
		l.add(e, span{good, int32(len(line))})
		good += int64(len(line))
	}
	l.size = good
	if err := f.Truncate(good); err != nil {
		f.Close()
		return nil, fmt.Errorf("repair ledger: %w", err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// ReadLedger reads the charges of the ledger at path without opening it
// for writing (a torn last line is left out, not cut off), for `hub audit
// verify`.
func ReadLedger(path string) ([]governance.LedgerCharge, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ledger: %w", err)
	}
	var out []governance.LedgerCharge
	for len(data) > 0 {
		line, rest, ok := bytes.Cut(data, []byte{'\n'})
		if !ok {
			break // torn: never synced, never answered
		}
		data = rest
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("read ledger %s: entry %d is corrupt: %w", path, len(out)+1, err)
		}
		out = append(out, e.charge())
	}
	return out, nil
}

// charge is the entry as the audit log's cross-checks see it.
func (e Entry) charge() governance.LedgerCharge {
	return governance.LedgerCharge{QuerySHA256: e.QuerySHA256, Dataset: e.Dataset, Version: e.Version,
		EpsilonU: e.EpsilonU, DeltaU: e.DeltaU, Time: e.Time}
}

func (l *Ledger) add(e Entry, at span) {
	l.spentE += e.EpsilonU
	l.spentD += e.DeltaU
	if e.Answer != nil {
		l.byHash[e.QuerySHA256] = at
	}
	e.Answer = nil
	l.entries = append(l.entries, e)
}

// answer reads a released answer back from its line; l.mu is held.
func (l *Ledger) answer(hash string) (*Answer, error) {
	at, ok := l.byHash[hash]
	if !ok {
		return nil, nil
	}
	buf := make([]byte, at.n)
	if _, err := l.f.ReadAt(buf, at.off); err != nil {
		return nil, fmt.Errorf("%w: read an answer back: %v", ErrLedgerBroken, err)
	}
	var e Entry
	if err := json.Unmarshal(buf, &e); err != nil || e.QuerySHA256 != hash || e.Answer == nil {
		return nil, fmt.Errorf("%w: the answer's line no longer reads as written", ErrLedgerBroken)
	}
	return e.Answer, nil
}

// Close closes the ledger file.
func (l *Ledger) Close() error { return l.f.Close() }

// Spent returns the units spent: the ledger's, and what the audit log
// says was spent beyond them when the ledger was opened.
func (l *Ledger) Spent() (eps, delta int64, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.spentE + l.missingE, l.spentD + l.missingD, len(l.entries)
}

// SetFloor takes the audit log's spend: what it says beyond the ledger's
// own (a ledger emptied, lost or rolled back) counts as spent from now on.
func (l *Ledger) SetFloor(eps, delta int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.missingE, l.missingD = max(eps-l.spentE, 0), max(delta-l.spentD, 0)
}

// Entries returns a copy of the ledger's entries without their answers.
func (l *Ledger) Entries() []Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Entry(nil), l.entries...)
}

// Released returns the answer already released for a query hash (read
// back from the ledger), or nil; an answer that cannot be read back is
// nil too, and the query is then refused or charged as new.
func (l *Ledger) Released(hash string) *Answer {
	l.mu.Lock()
	defer l.mu.Unlock()
	a, err := l.answer(hash)
	if err != nil {
		return nil
	}
	return a
}

// Check returns the refusal Spend would give c now, or nil: a cheap test
// before any SQL runs. Spends only grow, so a refusal stays a refusal.
func (l *Ledger) Check(c Charge) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken != nil {
		return ErrLedgerBroken
	}
	if _, ok := l.byHash[c.Hash]; ok {
		return nil
	}
	return l.fits(c)
}

func (l *Ledger) fits(c Charge) error {
	spentE, spentD := l.spentE+l.missingE, l.spentD+l.missingD
	if spentE+c.EpsilonU > c.TotalE || spentD+c.DeltaU > c.TotalD {
		return fmt.Errorf("%w: the query needs ε %.6g (δ %.3g), the project has ε %.6g (δ %.3g) left; ask with a smaller epsilon or request more budget",
			ErrBudgetExhausted, float64(c.EpsilonU)*EpsilonUnit, float64(c.DeltaU)*DeltaUnit,
			float64(c.TotalE-spentE)*EpsilonUnit, float64(c.TotalD-spentD)*DeltaUnit)
	}
	return nil
}

// A Charge is what one query costs against a budget.
type Charge struct {
	Hash, Dataset    string
	Version          int
	EpsilonU, DeltaU int64
	// TotalE and TotalD are the project's budget.
	TotalE, TotalD int64
}

// Spend charges c and releases the answer that compute makes, atomically:
// under the ledger's lock it returns an earlier answer to the same query at
// no cost, refuses with ErrBudgetExhausted (charging nothing) when c does
// not fit, and otherwise computes the answer and appends and syncs the
// entry before returning it. A compute error charges nothing.
func (l *Ledger) Spend(c Charge, compute func() (*Answer, error)) (ans *Answer, repeat bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken != nil {
		return nil, false, ErrLedgerBroken
	}
	if _, ok := l.byHash[c.Hash]; ok {
		a, err := l.answer(c.Hash)
		if err != nil {
			l.broken = err
			return nil, false, err
		}
		return a, true, nil
	}
	if err := l.fits(c); err != nil {
		return nil, false, err
	}
	a, err := compute()
	if err != nil {
		return nil, false, err
	}
	a.Version, a.QuerySHA256 = c.Version, c.Hash
	e := Entry{Seq: len(l.entries) + 1, Time: a.Released, QuerySHA256: c.Hash, Dataset: c.Dataset, Version: c.Version,
		EpsilonU: c.EpsilonU, DeltaU: c.DeltaU, Answer: a}
	line, err := json.Marshal(e)
	if err != nil {
		return nil, false, err
	}
	if _, err := l.f.Write(append(line, '\n')); err != nil {
		l.broken = err
		return nil, false, fmt.Errorf("%w: %v", ErrLedgerBroken, err)
	}
	if err := l.f.Sync(); err != nil {
		l.broken = err
		return nil, false, fmt.Errorf("%w: %v", ErrLedgerBroken, err)
	}
	at := span{l.size, int32(len(line) + 1)}
	l.size += int64(len(line) + 1)
	l.add(e, at)
	return a, false, nil
}
