package governance

import (
	"errors"
	"os"
	"path/filepath"
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
