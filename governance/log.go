package governance

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Outcomes of an audited action.
const (
	OK      = "ok"
	Refused = "refused"
)

// An Entry is one line of the audit log. It names who did what, when, to
// which request, project or dataset version, and what it cost; never row
// data, never a token. Data carries what the action changed (a request's
// fields, a vote, a token's hash) and is what the governance state is
// rebuilt from. Hash is the SHA-256 of Prev and the entry's JSON without
// Hash, so editing, removing or reordering any entry breaks the chain.
type Entry struct {
	Seq         int64           `json:"seq"`
	Time        time.Time       `json:"time"`
	Actor       string          `json:"actor"`
	Action      string          `json:"action"`
	Outcome     string          `json:"outcome"`
	Reason      string          `json:"reason,omitempty"`
	Request     string          `json:"request,omitempty"`
	Project     string          `json:"project,omitempty"`
	User        string          `json:"user,omitempty"`
	Dataset     string          `json:"dataset,omitempty"`
	Version     int             `json:"version,omitempty"`
	EpsilonU    int64           `json:"epsilon_units,omitempty"`
	DeltaU      int64           `json:"delta_units,omitempty"`
	QuerySHA256 string          `json:"query_sha256,omitempty"`
	Data        json.RawMessage `json:"data,omitempty"`
	Prev        string          `json:"prev"`
	Hash        string          `json:"hash"`
}

// charged reports whether e is a released query that spent budget.
func (e *Entry) charged() bool {
	return e.Action == ActQuery && e.Outcome == OK && (e.EpsilonU > 0 || e.DeltaU > 0)
}

// genesis is the Prev of the first entry.
var genesis = hex.EncodeToString(make([]byte, sha256.Size))

// digest computes the entry's hash from its other fields: SHA-256, or
// HMAC-SHA256 under key if the log is keyed.
func (e *Entry) digest(key []byte) (string, error) {
	c := *e
	c.Hash = ""
	body, err := json.Marshal(&c)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	if key != nil {
		h = hmac.New(sha256.New, key)
	}
	h.Write([]byte(c.Prev))
	h.Write([]byte{'\n'})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// A ChainError says where the audit chain breaks.
type ChainError struct {
	Seq    int64 // the first entry that does not verify (0: the head file)
	Line   int
	Reason string
}

func (e *ChainError) Error() string {
	if e.Line == 0 {
		return "audit log tampered with: " + e.Reason
	}
	return fmt.Sprintf("audit log tampered with at line %d (entry %d): %s", e.Line, e.Seq, e.Reason)
}

// A Head names the last entry of the log: its sequence number and hash.
// Written down elsewhere, it lets anyone prove later that no entry up to
// it was changed, removed or reordered.
type Head struct {
	Seq  int64  `json:"seq"`
	Hash string `json:"hash"`
}

// auditLog is the append-only file. Appends from several processes (the
// server, and `hub` commands on the same host) are serialised by an
// exclusive flock; each reader catches up on what others appended.
type auditLog struct {
	path string
	f    logFile
	off  int64 // bytes read and verified
	head Head
	line int
	key  []byte // nil: unkeyed
	// broken is set when a failed append could not be cut off: the file
	// may hold an entry that was reported as failed, so nothing more is
	// appended until the log is opened again.
	broken error
	// starts[i] is where entry i+1's line begins: the log is listed from
	// the file, so memory holds 8 bytes an entry, not the entries.
	starts []int64
}

// logFile is what the log needs of its file; the fault tests wrap an
// *os.File to fail writes, syncs and truncations.
type logFile interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Fd() uintptr
	Close() error
}

const (
	logName  = "audit.jsonl"
	headName = "audit.head"
)

func openLog(dir string, key []byte) (*auditLog, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	path := filepath.Join(dir, logName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &auditLog{path: path, f: f, head: Head{Hash: genesis}, key: key}, nil
}

func (l *auditLog) close() error { return l.f.Close() }

func (l *auditLog) lock() error   { return syscall.Flock(int(l.f.Fd()), syscall.LOCK_EX) }
func (l *auditLog) unlock() error { return syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN) }

// catchUp reads and verifies the entries appended since the last call and
// hands each to apply. The lock must be held. A last line without its
// newline is a write that crashed before its sync: nobody was told it
// happened, so it is cut off.
func (l *auditLog) catchUp(apply func(*Entry) error) error {
	st, err := l.f.Stat()
	if err != nil {
		return fmt.Errorf("read audit log: %w", err)
	}
	if st.Size() == l.off {
		return nil
	}
	if st.Size() < l.off {
		return &ChainError{Reason: "the log became shorter while open"}
	}
	r := bufio.NewReader(io.NewSectionReader(l.f, l.off, st.Size()-l.off))
	for {
		raw, err := r.ReadBytes('\n')
		if err == io.EOF {
			if len(raw) > 0 {
				if err := l.f.Truncate(l.off); err != nil {
					return fmt.Errorf("repair audit log: %w", err)
				}
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read audit log: %w", err)
		}
		e, err := l.verify(raw)
		if err != nil {
			return err
		}
		l.starts = append(l.starts, l.off)
		if err := apply(e); err != nil {
			return &ChainError{Seq: e.Seq, Line: l.line, Reason: "entry does not replay: " + err.Error()}
		}
		l.off += int64(len(raw))
	}
}

// verify checks that raw is the next entry of the chain and advances it.
func (l *auditLog) verify(raw []byte) (*Entry, error) {
	l.line++
	var e Entry
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return nil, &ChainError{Line: l.line, Seq: l.head.Seq + 1, Reason: "not an audit entry"}
	}
	if e.Seq != l.head.Seq+1 {
		return nil, &ChainError{Line: l.line, Seq: e.Seq, Reason: fmt.Sprintf("sequence number %d follows %d (an entry was removed or moved)", e.Seq, l.head.Seq)}
	}
	if e.Prev != l.head.Hash {
		return nil, &ChainError{Line: l.line, Seq: e.Seq, Reason: "does not link to the entry before it (an entry was removed, moved or edited)"}
	}
	h, err := e.digest(l.key)
	if err != nil || h != e.Hash {
		reason := "its hash does not match its contents (the entry was edited"
		switch plain, _ := e.digest(nil); {
		case l.key != nil && plain == e.Hash:
			reason = "it is not keyed with the audit key (the log was started without the key, or rewritten by someone without it"
		case l.key == nil:
			reason += ", or the log is keyed: give the audit key"
		default:
			reason += ", or this is not the key the log was started with"
		}
		return nil, &ChainError{Line: l.line, Seq: e.Seq, Reason: reason + ")"}
	}
	// The hash covers the entry as the decoder reads it; the bytes on disk
	// must be exactly what append wrote for it, or an edit the decoder
	// forgives (a duplicated or re-cased key, spacing, a different escape)
	// would show one thing to a reader of the file and verify as another.
	if canon, err := json.Marshal(&e); err != nil || !bytes.Equal(canon, bytes.TrimSuffix(raw, []byte{'\n'})) {
		return nil, &ChainError{Line: l.line, Seq: e.Seq, Reason: "its bytes are not the ones written for it (the line was edited)"}
	}
	l.head = Head{Seq: e.Seq, Hash: e.Hash}
	return &e, nil
}

// scan reads the entries after sequence number after, oldest first, from
// the file, and hands each to fn until it returns false. The lock must be
// held and the log caught up; what it reads was verified when appended or
// caught up.
func (l *auditLog) scan(after int64, fn func(*Entry) bool) error {
	if after < 0 {
		after = 0
	}
	if after >= int64(len(l.starts)) {
		return nil
	}
	from := l.starts[after]
	r := bufio.NewReader(io.NewSectionReader(l.f, from, l.off-from))
	for {
		raw, err := r.ReadBytes('\n')
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read audit log: %w", err)
		}
		var e Entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return fmt.Errorf("read audit log: %w", err)
		}
		if !fn(&e) {
			return nil
		}
	}
}

// append links e to the chain, writes and syncs it, then records the new
// head. The lock must be held and the log caught up.
func (l *auditLog) append(e *Entry) error {
	if l.broken != nil {
		return l.broken
	}
	e.Seq, e.Prev = l.head.Seq+1, l.head.Hash
	e.Time = e.Time.UTC()
	h, err := e.digest(l.key)
	if err != nil {
		return err
	}
	e.Hash = h
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	// A write or sync that fails may still have put some or all of the
	// line in the file (a sync that fails leaves it in the page cache, to
	// reach the disk later): cut it off, so that an action reported as not
	// taken never takes effect after a restart.
	undo := func(err error) error {
		if terr := l.f.Truncate(l.off); terr != nil {
			l.broken = &uncertainError{fmt.Errorf("the audit log could not be cut back after a failed write (%v); restart the server once the disk is sound", terr)}
			return &uncertainError{fmt.Errorf("%w; the entry could not be removed either, so it may take effect at the next start: %v", err, terr)}
		}
		return err
	}
	if _, err := l.f.WriteAt(line, l.off); err != nil {
		return undo(fmt.Errorf("write audit log: %w", err))
	}
	if err := l.f.Sync(); err != nil {
		return undo(fmt.Errorf("sync audit log: %w", err))
	}
	l.starts = append(l.starts, l.off)
	l.off += int64(len(line))
	l.line++
	l.head = Head{Seq: e.Seq, Hash: e.Hash}
	if err := writeHead(filepath.Dir(l.path), l.head); err != nil {
		// The entry is synced, so it is in effect: a log that runs past
		// its head file is what a crash between the two leaves, and the
		// next append writes the head again.
		return &headError{err}
	}
	return nil
}

// An uncertainError is a failed append whose entry may still be in the
// file: the action's outcome is not known until the log is reopened.
type uncertainError struct{ err error }

func (e *uncertainError) Error() string { return e.err.Error() }
func (e *uncertainError) Unwrap() error { return e.err }

// A headError is a head file that could not be written after its entry
// was: the entry stands.
type headError struct{ err error }

func (e *headError) Error() string { return e.err.Error() }
func (e *headError) Unwrap() error { return e.err }

func writeHead(dir string, h Head) error {
	data, _ := json.Marshal(h)
	tmp := filepath.Join(dir, headName+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write audit head: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, headName))
}

func readHead(dir string) (*Head, error) {
	data, err := os.ReadFile(filepath.Join(dir, headName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var h Head
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, &ChainError{Reason: "the head file is not valid"}
	}
	return &h, nil
}

// checkHead compares the head file h with got, the hash of the log's
// entry h.Seq ("" if the log does not reach it): the log must still hold
// that entry, unchanged. A log that runs past the head is a crash between
// an append and the head's update.
func checkHead(h *Head, got string) error {
	switch {
	case h == nil || h.Seq == 0:
		return nil
	case got == "":
		return &ChainError{Reason: fmt.Sprintf("the head file names entry %d, which the log no longer holds (entries were removed from its end)", h.Seq)}
	case got != h.Hash:
		return &ChainError{Reason: fmt.Sprintf("entry %d differs from the one the head file names", h.Seq)}
	}
	return nil
}

// A VerifyResult reports an intact chain.
type VerifyResult struct {
	Entries int64 `json:"entries"`
	// Ledgers and LedgerCharges are what `hub audit verify` cross-checked.
	Ledgers       int `json:"ledgers"`
	LedgerCharges int `json:"ledger_charges"`
	// charges are the released queries' charges in the chain, by project
	// and query hash, in units: what CheckLedger compares a ledger with.
	charges map[string]map[string][2]int64
	Head    Head `json:"head"`
}

// Verify reads the audit log in dir from the start and checks every link,
// every hash and the head file. It does not need the store to be open. If
// expect is not nil, the chain must also contain that head: the proof that
// nothing up to a head written down earlier has changed. key is the audit
// key of a keyed log, nil for an unkeyed one.
func Verify(dir string, expect *Head, key []byte) (*VerifyResult, error) {
	var heads []Head
	if expect != nil {
		heads = []Head{*expect}
	}
	return VerifyHeads(dir, key, heads)
}

// VerifyHeads is Verify with any number of heads written down earlier
// (the lake's checkpoints): the log must contain every one of them.
func VerifyHeads(dir string, key []byte, expect []Head) (*VerifyResult, error) {
	f, err := os.Open(filepath.Join(dir, logName))
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w (is %s the server's --state folder?)", err, dir)
	}
	defer f.Close()
	head, err := readHead(dir)
	if err != nil {
		return nil, err
	}
	l := &auditLog{head: Head{Hash: genesis}, key: key}
	var atHead string
	want := map[int64]string{}
	for _, h := range expect {
		want[h.Seq] = h.Hash
	}
	charges := map[string]map[string][2]int64{}
	r := bufio.NewReader(f)
	for {
		raw, err := r.ReadBytes('\n')
		if err == io.EOF {
			break // a torn last line is a crashed, unsynced write
		}
		if err != nil {
			return nil, err
		}
		e, err := l.verify(raw)
		if err != nil {
			return nil, err
		}
		if e.charged() {
			if charges[e.Project] == nil {
				charges[e.Project] = map[string][2]int64{}
			}
			charges[e.Project][e.QuerySHA256] = [2]int64{e.EpsilonU, e.DeltaU}
		}
		if head != nil && l.head.Seq == head.Seq {
			atHead = l.head.Hash
		}
		if h, ok := want[l.head.Seq]; ok {
			if h != l.head.Hash {
				return nil, otherHead(l.head.Seq, h)
			}
			delete(want, l.head.Seq)
		}
	}
	if err := checkHead(head, atHead); err != nil {
		return nil, err
	}
	if len(want) > 0 {
		seq := int64(-1)
		for s := range want {
			if seq < 0 || s < seq {
				seq = s
			}
		}
		return nil, missingHead(seq, want[seq])
	}
	return &VerifyResult{Entries: l.head.Seq, Head: l.head, charges: charges}, nil
}

// otherHead and missingHead say how a log fails a head written down
// earlier.
func otherHead(seq int64, hash string) error {
	return &ChainError{Reason: fmt.Sprintf("entry %d is not the one a head written down earlier names (%.12s…)", seq, hash)}
}

func missingHead(seq int64, hash string) error {
	return &ChainError{Reason: fmt.Sprintf("the log does not contain the expected head (entry %d, %.12s…): entries were removed from its end, or it was replaced", seq, hash)}
}

// CheckLedger compares a project's budget ledger with the verified chain:
// every charge in one must be in the other, at the same ε and δ. A charge
// missing from the chain is one a crash kept out of it (the server writes
// it when it next opens the ledger); one missing from the ledger means
// the ledger was emptied, rolled back or lost (the chain's spend still
// counts, but the answers are gone).
func (r *VerifyResult) CheckLedger(project string, ledger []LedgerCharge) error {
	chain := r.charges[project]
	seen := map[string]bool{}
	var notInChain, differ int
	for _, c := range ledger {
		seen[c.QuerySHA256] = true
		u, ok := chain[c.QuerySHA256]
		switch {
		case !ok:
			notInChain++
		case u != [2]int64{c.EpsilonU, c.DeltaU}:
			differ++
		}
	}
	notInLedger := 0
	for h := range chain {
		if !seen[h] {
			notInLedger++
		}
	}
	var problems []string
	if notInChain > 0 {
		problems = append(problems, fmt.Sprintf("%d charges are not in the audit log (a crash between the ledger and the log: start the server and it records them)", notInChain))
	}
	if differ > 0 {
		problems = append(problems, fmt.Sprintf("%d charges differ from the audit log's (the ledger was edited)", differ))
	}
	if notInLedger > 0 {
		problems = append(problems, fmt.Sprintf("%d of the audit log's charges are not in the ledger (it was emptied, rolled back or lost: the log's spend still counts, the answers are gone)", notInLedger))
	}
	if problems != nil {
		return fmt.Errorf("ledger of project %s: %s", project, strings.Join(problems, "; "))
	}
	return nil
}

// ChargedProjects lists the projects with charges in the chain.
func (r *VerifyResult) ChargedProjects() []string {
	out := make([]string, 0, len(r.charges))
	for p := range r.charges {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
