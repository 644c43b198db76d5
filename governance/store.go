package governance

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
)

// Options configure a Store.
type Options struct {
	// Quorum is how many distinct DAC members must approve a request or an
	// amendment (default DefaultQuorum).
	Quorum int
	// Now is the clock (default time.Now); tests move it.
	Now    func() time.Time
	Logger *slog.Logger
	// AuditKey keys the hash chain (see LoadAuditKey); nil for an unkeyed
	// log. A keyed log does not open without its key, nor an unkeyed one
	// with a key.
	AuditKey []byte
}

// A Store holds users, tokens, data access requests, DAC decisions and the
// projects they grant. Its only durable form is the hash-chained audit log
// in its folder: every change is an entry, appended and synced before the
// change takes effect, and opening the store replays and verifies the
// whole chain. Several processes may share a folder. Safe for concurrent
// use.
type Store struct {
	dir    string
	quorum int
	now    func() time.Time
	log    *slog.Logger

	mu sync.Mutex
	al *auditLog
	st *state
	// spent is each project's charges in the log, in units: the least
	// it has spent (see AuditedSpend).
	spent map[string][2]int64

	// Refusals that name no user (no token, a malformed or unknown one)
	// are aggregated: the first of a window is recorded, the rest
	// counted and recorded as one entry when the window has passed (at
	// the next such refusal, or at Close). A flood of bad tokens then
	// costs the log a line a minute, not an fsynced line an attempt.
	rmu      sync.Mutex
	rwindow  time.Time
	rcounts  map[string]int64
	rcounted int64 // every anonymous refusal since Open
}

// refusalWindow is how long anonymous refusals are counted before their
// summary is recorded.
const refusalWindow = time.Minute

// Open opens (creating) the store in dir, verifying the audit chain and
// the head file. A broken chain is an error naming the first bad entry.
func Open(dir string, opt Options) (*Store, error) {
	s := &Store{dir: dir, quorum: opt.Quorum, now: opt.Now, log: opt.Logger, st: newState(), spent: map[string][2]int64{}}
	if s.quorum <= 0 {
		s.quorum = DefaultQuorum
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "governance")
	al, err := openLog(dir, opt.AuditKey)
	if err != nil {
		return nil, err
	}
	s.al = al
	head, err := readHead(dir)
	if err != nil {
		al.close()
		return nil, err
	}
	var atHead string
	err = s.locked(func() error {
		return al.catchUp(func(e *Entry) error {
			if head != nil && e.Seq == head.Seq {
				atHead = e.Hash
			}
			return s.fold(e)
		})
	})
	if err == nil {
		err = checkHead(head, atHead)
	}
	if err != nil {
		al.close()
		return nil, fmt.Errorf("open governance store: %w; run `hub audit verify --state %s`", err, dir)
	}
	return s, nil
}

// Close closes the log.
func (s *Store) Close() error {
	s.rmu.Lock()
	pending := s.takeRefusals()
	s.rmu.Unlock()
	var err error
	if pending != nil {
		_, err = s.Record(nil, *pending)
	}
	return errors.Join(err, s.al.close())
}

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }

// AuditedSpend returns the budget units that the audit log's released
// queries of a project charged. The service takes it as the least the
// project has spent, whatever its ledger file says: a ledger emptied or
// lost does not give the budget back.
func (s *Store) AuditedSpend(project string) (eps, delta int64) {
	// Caught up with other processes' appends when it can be; what this
	// process has read is the floor when it cannot.
	s.view(func(*state) error { return nil })
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spent[project][0], s.spent[project][1]
}

// A LedgerCharge is one charge as a project's budget ledger holds it.
type LedgerCharge struct {
	QuerySHA256, Dataset string
	Version              int
	EpsilonU, DeltaU     int64
	Time                 time.Time
}

// RecoverCharges writes a query entry for each of a project's ledger
// charges that the audit log does not hold: a server stopped between the
// ledger's sync and the audit entry (or an audit write that failed after
// the charge) left it. The answer was never released, since an answer is
// released only after its entry is written. The entry's actor is
// "hub:recovery" (the ledger does not know who asked) and its reason says
// when the ledger charged it. It returns how many it wrote.
func (s *Store) RecoverCharges(project string, charges []LedgerCharge) (int, error) {
	audited := map[string]bool{}
	err := s.view(func(*state) error {
		return s.al.scan(0, func(e *Entry) bool {
			if e.Project == project && e.charged() {
				audited[e.QuerySHA256] = true
			}
			return true
		})
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, c := range charges {
		if audited[c.QuerySHA256] {
			continue
		}
		_, err := s.Record(&Principal{Name: "hub:recovery"}, Entry{Action: ActQuery, Project: project,
			Dataset: c.Dataset, Version: c.Version, EpsilonU: c.EpsilonU, DeltaU: c.DeltaU, QuerySHA256: c.QuerySHA256,
			Reason: "charged by the budget ledger at " + c.Time.UTC().Format(time.RFC3339) +
				" with no audit entry (the server stopped or the log failed before it was written); the answer was not released"})
		if err != nil {
			return n, err
		}
		audited[c.QuerySHA256] = true
		n++
	}
	return n, nil
}

// AnonymousRefusals returns how many refusals that name no user were
// counted since Open, recorded or still pending in the window.
func (s *Store) AnonymousRefusals() int64 {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.rcounted
}

// takeRefusals returns the entry that summarises the window's counted
// refusals (nil when none), and empties the window; rmu is held.
func (s *Store) takeRefusals() *Entry {
	if len(s.rcounts) == 0 {
		return nil
	}
	var n int64
	keys := make([]string, 0, len(s.rcounts))
	for k, c := range s.rcounts {
		keys = append(keys, k)
		n += c
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, s.rcounts[k])
	}
	s.rcounts = nil
	return &Entry{Action: ActAuth, Outcome: Refused, Reason: fmt.Sprintf("%d more refused since %s: %s", n,
		s.rwindow.UTC().Format(time.RFC3339), strings.Join(parts, ", "))}
}

// anonymousRefusal counts a refusal that names no user, and reports
// whether it was counted only (not to be recorded on its own); the
// previous window's summary, if any, is recorded first.
func (s *Store) anonymousRefusal(reason string) (bool, error) {
	s.rmu.Lock()
	s.rcounted++
	now := s.now()
	if !s.rwindow.IsZero() && now.Sub(s.rwindow) < refusalWindow {
		if s.rcounts == nil {
			s.rcounts = map[string]int64{}
		}
		s.rcounts[reason]++
		s.rmu.Unlock()
		return true, nil
	}
	pending := s.takeRefusals()
	s.rwindow = now
	s.rmu.Unlock()
	if pending != nil {
		if _, err := s.Record(nil, *pending); err != nil {
			return false, err
		}
	}
	return false, nil
}

// Quorum is the number of approvals a decision needs.
func (s *Store) Quorum() int { return s.quorum }

func (s *Store) fold(e *Entry) error {
	if err := s.st.apply(e); err != nil {
		return err
	}
	if e.charged() {
		sp := s.spent[e.Project]
		s.spent[e.Project] = [2]int64{sp[0] + e.EpsilonU, sp[1] + e.DeltaU}
	}
	return nil
}

// locked runs f holding the log's file lock (s.mu must be held).
func (s *Store) locked(f func() error) error {
	if err := s.al.lock(); err != nil {
		return fmt.Errorf("lock audit log: %w", err)
	}
	defer s.al.unlock()
	return f()
}

// view runs f on the state, caught up with other processes' appends.
func (s *Store) view(f func(st *state) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.locked(func() error { return s.al.catchUp(s.fold) }); err != nil {
		return err
	}
	return f(s.st)
}

// An event is what an action would append: entry names the action and
// what it acts on; check (nil for an entry recorded as given) decides,
// against the current state, whether the action is allowed and what it
// changes.
type event struct {
	actor *Principal
	entry Entry
	check func(st *state, now time.Time) (*payload, error)
}

// do runs an action: it catches up, checks, then appends either the change
// (and folds it in) or the refusal with its reason. A refusal changes
// nothing else and is returned as the error.
func (s *Store) do(ev event) (*Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out *Entry
	var refusal error
	err := s.locked(func() error {
		if err := s.al.catchUp(s.fold); err != nil {
			return err
		}
		now := s.now().UTC()
		e := ev.entry
		e.Time, e.Actor = now, actorName(ev.actor)
		if e.Outcome == "" {
			e.Outcome = OK
		}
		var p *payload
		if ev.check != nil {
			var err error
			if p, err = ev.check(s.st, now); err != nil {
				refusal = err
				e.Outcome, e.Reason = Refused, err.Error()
			} else if p != nil {
				if e.Data, err = json.Marshal(p); err != nil {
					return err
				}
				if p.Request != nil {
					e.Request = p.Request.ID
				}
			}
		}
		if r := s.st.requests[e.Request]; r != nil {
			e.Project = r.Project
		} else if p != nil && p.Request != nil {
			e.Project = p.Request.Project
		}
		if err := s.al.append(&e); err != nil {
			var he *headError
			var ue *uncertainError
			switch {
			case errors.As(err, &ue):
				return fmt.Errorf("%w; whether this action took effect will be known when the server restarts (%v)", ErrUnavailable, err)
			case !errors.As(err, &he):
				return err // nothing took effect: wrapped as ErrUnavailable below
			}
			s.log.Warn("the audit head file could not be written; the entry stands", "action", ev.entry.Action, "err", err)
		}
		out = &e
		return s.fold(out)
	})
	if err != nil {
		s.log.Error("audit append failed", "action", ev.entry.Action, "err", err)
		var ce *ChainError
		if !errors.Is(err, ErrUnavailable) && !errors.As(err, &ce) {
			// The log could not be locked, read or written: nothing
			// took effect.
			err = fmt.Errorf("%w; nothing was changed (%v)", ErrUnavailable, err)
		}
		return nil, errors.Join(refusal, err)
	}
	return out, refusal
}

func actorName(p *Principal) string {
	if p == nil || p.Name == "" {
		return "anonymous"
	}
	return p.Name
}

// Record appends an entry that changes no governance state: a query, a
// refused call, a dataset publish. Seq, Time, Actor, Prev and Hash are
// filled in; Outcome defaults to OK.
func (s *Store) Record(actor *Principal, e Entry) (*Entry, error) {
	if stateActions[e.Action] && e.Outcome != Refused {
		return nil, fmt.Errorf("record: %s changes the governance state; use its method", e.Action)
	}
	return s.do(event{actor: actor, entry: e})
}

// Refuse records a refused call and returns err.
func (s *Store) Refuse(actor *Principal, action, project string, err error) error {
	if _, rerr := s.Record(actor, Entry{Action: action, Project: project, Outcome: Refused, Reason: err.Error()}); rerr != nil {
		return errors.Join(err, rerr)
	}
	return err
}

// Head is the audit log's current head.
func (s *Store) Head() Head {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.al.head
}

var tokenPattern = regexp.MustCompile(`^hub_[0-9a-f]{64}$`)

func newToken(now time.Time, ttl time.Duration) (string, *Token, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, err
	}
	tok := "hub_" + hex.EncodeToString(b)
	h := tokenHash(tok)
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	return tok, &Token{ID: h[:12], SHA256: h, Created: now, Expires: now.Add(ttl)}, nil
}

func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Authenticate returns the user a bearer token belongs to. A missing,
// malformed, unknown, expired or revoked token is ErrUnauthorized, and the
// refusal is recorded (with the token's ID when the token is known; never
// the token).
func (s *Store) Authenticate(token string) (*Principal, error) {
	var p *Principal
	var reason, user string
	err := s.view(func(st *state) error {
		switch {
		case token == "":
			reason = "no token"
		case !tokenPattern.MatchString(token):
			reason = "malformed token"
		default:
			ref := st.tokens[tokenHash(token)] // a map look-up of a hash: no timing leak of the token
			switch {
			case ref == nil:
				reason = "unknown token"
			case ref.token.Revoked != nil:
				reason, user = "revoked token "+ref.token.ID, ref.user.Name
			case !s.now().Before(ref.token.Expires):
				reason, user = "expired token "+ref.token.ID, ref.user.Name
			default:
				p = &Principal{Name: ref.user.Name, Roles: append([]Role(nil), ref.user.Roles...)}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if p != nil {
		return p, nil
	}
	if user == "" {
		counted, err := s.anonymousRefusal(reason)
		if err != nil {
			return nil, errors.Join(ErrUnauthorized, err)
		}
		if counted {
			return nil, fmt.Errorf("%w: %s", ErrUnauthorized, reason)
		}
	}
	if _, err := s.Record(nil, Entry{Action: ActAuth, Outcome: Refused, Reason: reason, User: user}); err != nil {
		return nil, errors.Join(ErrUnauthorized, err)
	}
	return nil, fmt.Errorf("%w: %s", ErrUnauthorized, reason)
}

// copyOf deep-copies v through JSON, so callers never share the state.
func copyOf[T any](v *T) *T {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var c T
	if err := json.Unmarshal(data, &c); err != nil {
		panic(err)
	}
	return &c
}

// CheckHeads checks that the log holds each of heads (the lake's
// checkpoints), reading only their entries: the chain itself was verified
// when the store was opened, and since.
func (s *Store) CheckHeads(heads []Head) error {
	return s.view(func(*state) error {
		for _, h := range heads {
			if h.Seq > s.al.head.Seq {
				return missingHead(h.Seq, h.Hash)
			}
			var got string
			if err := s.al.scan(h.Seq-1, func(e *Entry) bool { got = e.Hash; return false }); err != nil {
				return err
			}
			if got != h.Hash {
				return otherHead(h.Seq, h.Hash)
			}
		}
		return nil
	})
}

// Verify checks the whole audit chain on disk (see the function Verify),
// holding the log's lock so that no append is read half-written.
func (s *Store) Verify() (*VerifyResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var res *VerifyResult
	err := s.locked(func() error {
		var err error
		res, err = Verify(s.dir, nil, s.al.key)
		return err
	})
	return res, err
}
