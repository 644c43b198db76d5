package governance

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// relink drops entry drop (1-based) from the log in dir and rehashes every
// entry after it with key, rewriting the head: what someone who can write
// the state folder does to remove an entry without a trace.
func relink(t *testing.T, dir string, drop int64, key []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, logName))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	prev := genesis
	var seq int64
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e Entry
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		if e.Seq == drop {
			continue
		}
		seq++
		e.Seq, e.Prev = seq, prev
		if e.Hash, err = e.digest(key); err != nil {
			t.Fatal(err)
		}
		prev = e.Hash
		b, _ := json.Marshal(&e)
		out.Write(append(b, '\n'))
	}
	os.WriteFile(filepath.Join(dir, logName), out.Bytes(), 0o600)
	if err := writeHead(dir, Head{Seq: seq, Hash: prev}); err != nil {
		t.Fatal(err)
	}
}

func TestKeyedChain(t *testing.T) {
	state, secrets := t.TempDir(), t.TempDir()
	keyPath := filepath.Join(secrets, "audit.key")
	if err := NewAuditKey(keyPath); err != nil {
		t.Fatal(err)
	}
	if err := NewAuditKey(keyPath); err == nil {
		t.Fatal("an existing key was overwritten")
	}
	key, err := LoadAuditKey(keyPath, state)
	if err != nil {
		t.Fatal(err)
	}
	fill := func(dir string, key []byte) {
		s, err := Open(dir, Options{AuditKey: key})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for _, name := range []string{"ada", "rosa", "dina", "dev"} {
			if _, err := s.AddUser(Host("ops"), name, []Role{Researcher}, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill(state, key)
	if res, err := Verify(state, nil, key); err != nil || res.Entries != 4 {
		t.Fatalf("keyed log: %v, %v", res, err)
	}
	// Without the key, or with another, the log neither verifies nor opens.
	other := bytes.Repeat([]byte{7}, auditKeyBytes)
	for name, k := range map[string][]byte{"no key": nil, "another key": other} {
		var ce *ChainError
		if _, err := Verify(state, nil, k); !errors.As(err, &ce) {
			t.Errorf("%s: Verify says %v", name, err)
		}
		if s, err := Open(state, Options{AuditKey: k}); err == nil {
			s.Close()
			t.Errorf("%s: Open accepted it", name)
		}
	}

	// Relinking: an unkeyed chain cannot tell (the documented limit), a
	// keyed one can, since the rehash needs the key.
	plain := t.TempDir()
	fill(plain, nil)
	relink(t, plain, 2, nil)
	if _, err := Verify(plain, nil, nil); err != nil {
		t.Fatalf("the unkeyed chain was expected to accept a relinked log (its documented limit): %v", err)
	}
	relink(t, state, 2, nil)
	_, err = Verify(state, nil, key)
	var ce *ChainError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "not keyed") {
		t.Fatalf("relinked keyed log: %v", err)
	}
	if s, err := Open(state, Options{AuditKey: key}); err == nil {
		s.Close()
		t.Fatal("Open accepted a relinked keyed log")
	}
	// An unkeyed log is not taken for a keyed one.
	if s, err := Open(plain, Options{AuditKey: key}); err == nil {
		s.Close()
		t.Fatal("an unkeyed log opened with a key")
	}
}

func TestAuditKeyRefused(t *testing.T) {
	state, secrets := t.TempDir(), t.TempDir()
	inState := filepath.Join(state, "audit.key")
	if err := NewAuditKey(inState); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAuditKey(inState, state); err == nil || !strings.Contains(err.Error(), "inside the state folder") {
		t.Errorf("a key inside the state folder: %v", err)
	}
	// A link from outside into the state folder is still inside.
	link := filepath.Join(secrets, "link.key")
	if err := os.Symlink(inState, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadAuditKey(link, state); err == nil {
		t.Error("a link into the state folder was accepted")
	}
	open := filepath.Join(secrets, "open.key")
	NewAuditKey(open)
	os.Chmod(open, 0o644)
	if _, err := LoadAuditKey(open, state); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable key: %v", err)
	}
	short := filepath.Join(secrets, "short.key")
	os.WriteFile(short, []byte("abcd\n"), 0o600)
	if _, err := LoadAuditKey(short, state); err == nil {
		t.Error("a 2-byte key was accepted")
	}
	if _, err := LoadAuditKey(filepath.Join(secrets, "none"), state); err == nil || !strings.Contains(err.Error(), "hub audit keygen") {
		t.Errorf("a missing key: %v", err)
	}
}
