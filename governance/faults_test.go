package governance

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An action whose audit line is synced is in effect and acknowledged,
// even when the head file cannot be written after it; one whose line
// cannot be written is reported unavailable and is not in effect, now or
// after a restart.
func TestWriteFaults(t *testing.T) {
	w := newWorld(t)
	s := w.s
	// The head file cannot be replaced (its temporary name is taken).
	tmp := filepath.Join(w.dir, headName+".tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	r, err := s.CreateRequest(w.who["rosa"], spec(), true)
	if err != nil {
		t.Fatalf("a synced action reported failed: %v", err)
	}
	os.Remove(tmp)
	s.Close()
	w.open(t)
	if _, err := w.s.Request(w.who["rosa"], r.ID); err != nil {
		t.Fatalf("the acknowledged request is gone after a restart: %v", err)
	}
	if res, err := w.s.Verify(); err != nil || res.Entries == 0 {
		t.Fatalf("verify after a lagging head: %+v %v", res, err)
	}
	// The log itself cannot be written.
	w.s.al.f.Close()
	sp := spec()
	sp.Project = "second"
	if _, err := w.s.CreateRequest(w.who["rosa"], sp, true); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a failed append: %v, want ErrUnavailable", err)
	}
	w.open(t)
	rs, err := w.s.Requests(w.who["rosa"], RequestFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Project == "second" {
			t.Fatal("the request reported failed is in effect after a restart")
		}
	}
}

// faultyFile fails the audit log's writes in one of several ways.
type faultyFile struct {
	*os.File
	mode string // "write", "partial", "sync", "sync+truncate"
}

var errDisk = errors.New("injected: no space left on device")

func (f *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	switch f.mode {
	case "write":
		return 0, errDisk
	case "partial":
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, errDisk
	}
	return f.File.WriteAt(p, off)
}

func (f *faultyFile) Sync() error {
	if f.mode == "sync" || f.mode == "sync+truncate" {
		return errDisk
	}
	return f.File.Sync()
}

func (f *faultyFile) Truncate(size int64) error {
	if f.mode == "sync+truncate" {
		return errDisk
	}
	return f.File.Truncate(size)
}

// TestInjectedWriteFaults: each state-changing action of the store (every
// endpoint that changes state goes through one of them), with the audit
// log's write failing, half-written, or written but not synced, is
// reported unavailable and is not in effect after a restart; the chain
// verifies; and the next action succeeds. When the failed line cannot be
// cut off either, the reply says the outcome is unknown, and the store
// refuses to append until it is reopened.
func TestInjectedWriteFaults(t *testing.T) {
	type action struct {
		name     string
		do       func(w *world) error
		inEffect func(w *world) bool
	}
	hasRequest := func(project string) func(w *world) bool {
		return func(w *world) bool {
			rs, _ := w.s.Requests(w.who["ada"], RequestFilter{})
			for _, r := range rs {
				if r.Project == project {
					return true
				}
			}
			return false
		}
	}
	stateOf := func(id string, want State) func(w *world) bool {
		return func(w *world) bool {
			r, err := w.s.Request(w.who["ada"], id)
			return err == nil && r.State == want
		}
	}
	actions := []action{
		{"create request", func(w *world) error {
			sp := spec()
			sp.Project = "faulty"
			_, err := w.s.CreateRequest(w.who["rosa"], sp, true)
			return err
		}, hasRequest("faulty")},
		{"review", func(w *world) error { _, err := w.s.Review(w.who["dina"], "req-1"); return err }, stateOf("req-1", InReview)},
		{"withdraw", func(w *world) error { _, err := w.s.Withdraw(w.who["rosa"], "req-1"); return err }, stateOf("req-1", Withdrawn)},
		{"add user", func(w *world) error { _, err := w.s.AddUser(Host("ops"), "newbie", []Role{Researcher}, 0); return err },
			func(w *world) bool {
				us, _ := w.s.Users(Host("ops"))
				for _, u := range us {
					if u.Name == "newbie" {
						return true
					}
				}
				return false
			}},
		{"approve (a first vote)", func(w *world) error {
			_, err := w.s.Approve(w.who["dina"], "req-1", Grant{Reason: "sound"}, nil)
			return err
		}, func(w *world) bool { r, _ := w.s.Request(w.who["ada"], "req-1"); return r != nil && len(r.Votes) > 0 }},
		{"reject", func(w *world) error { _, err := w.s.Reject(w.who["dina"], "req-1", "no"); return err }, stateOf("req-1", Rejected)},
		{"amend", func(w *world) error {
			_, err := w.s.Amend(w.who["rosa"], "req-2", AmendmentSpec{ExtendDays: 30, Reason: "more time"})
			return err
		}, func(w *world) bool {
			r, _ := w.s.Request(w.who["ada"], "req-2")
			return r != nil && len(r.Amendments) > 0
		}},
		{"issue token", func(w *world) error { _, err := w.s.IssueToken(Host("ops"), "sam", 0); return err },
			func(w *world) bool {
				us, _ := w.s.Users(Host("ops"))
				for _, u := range us {
					if u.Name == "sam" {
						return len(u.Tokens) > 1
					}
				}
				return false
			}},
		{"revoke tokens", func(w *world) error { _, err := w.s.RevokeTokens(Host("ops"), "ana", nil); return err },
			func(w *world) bool { _, err := w.s.Authenticate(w.tok["ana"]); return err != nil }},
		{"charged query", func(w *world) error {
			_, err := w.s.Record(w.who["rosa"], Entry{Action: ActQuery, Project: "p", EpsilonU: 7, QuerySHA256: "q"})
			return err
		}, func(w *world) bool { e, _ := w.s.AuditedSpend("p"); return e == 7 }},
	}
	cases := 0
	for _, a := range actions {
		for _, mode := range []string{"write", "partial", "sync", "sync+truncate"} {
			w := newWorld(t)
			if _, err := w.s.CreateRequest(w.who["rosa"], spec(), true); err != nil {
				t.Fatal(err)
			}
			approved := spec()
			approved.Project = "approved"
			if _, err := w.s.CreateRequest(w.who["rosa"], approved, true); err != nil {
				t.Fatal(err)
			}
			for _, d := range []string{"dina", "dev"} {
				if _, err := w.s.Approve(w.who[d], "req-2", Grant{Reason: "ok"}, nil); err != nil {
					t.Fatal(err)
				}
			}
			real := w.s.al.f.(*os.File)
			w.s.al.f = &faultyFile{File: real, mode: mode}
			err := a.do(w)
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("%s, %s fails: %v, want ErrUnavailable", a.name, mode, err)
			}
			if mode == "sync+truncate" {
				if !strings.Contains(err.Error(), "will be known when the server restarts") {
					t.Errorf("%s, %s: the reply claims to know the outcome: %v", a.name, mode, err)
				}
				w.s.al.f = real // the disk is sound again, but the store stays refusing
				if err := a.do(w); !errors.Is(err, ErrUnavailable) {
					t.Errorf("%s, %s: a store with an uncut failed line appended again: %v", a.name, mode, err)
				}
				w.s.Close()
				continue // the line stayed: its outcome is decided by the restart, either way is allowed
			}
			w.s.al.f = real
			w.s.Close()
			w.open(t)
			if a.inEffect(w) {
				t.Errorf("%s, %s fails: the action reported as failed is in effect after a restart", a.name, mode)
			}
			if _, err := Verify(w.dir, nil, nil); err != nil {
				t.Errorf("%s, %s: %v", a.name, mode, err)
			}
			if err := a.do(w); err != nil || !a.inEffect(w) {
				t.Errorf("%s, %s: the action once the disk is sound: %v", a.name, mode, err)
			}
			cases++
		}
	}
	if cases != len(actions)*3 {
		t.Fatalf("%d cases checked", cases)
	}
}
