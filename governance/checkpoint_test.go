package governance

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nhs-hub/hub/catalog/file"
)

// Checkpoints in the lake catch what the chain alone cannot: entries cut
// off the end with the head file rewritten, and a log swapped for an
// empty one.
func TestCheckpointsCatchTruncation(t *testing.T) {
	w := newWorld(t)
	lake, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.s.CreateRequest(w.who["rosa"], spec(), true); err != nil {
		t.Fatal(err)
	}
	head := w.s.Head()
	if err := WriteCheckpoint(t.Context(), lake, head); err != nil {
		t.Fatal(err)
	}
	if err := WriteCheckpoint(t.Context(), lake, head); err != nil {
		t.Fatalf("the same checkpoint again: %v", err)
	}
	// The server's start-up check reads only the checkpoints' entries.
	var ce *ChainError
	if err := w.s.CheckHeads([]Head{head}); err != nil {
		t.Fatalf("CheckHeads: %v", err)
	}
	if err := w.s.CheckHeads([]Head{{Seq: head.Seq, Hash: genesis}}); !errors.As(err, &ce) {
		t.Fatalf("CheckHeads with another hash: %v", err)
	}
	if err := w.s.CheckHeads([]Head{{Seq: head.Seq + 1, Hash: head.Hash}}); !errors.As(err, &ce) {
		t.Fatalf("CheckHeads past the log's end: %v", err)
	}
	w.s.Close()
	heads, err := Checkpoints(t.Context(), lake)
	if err != nil || len(heads) != 1 || heads[0] != head {
		t.Fatalf("checkpoints %v, %v", heads, err)
	}
	if _, err := VerifyHeads(w.dir, nil, heads); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(filepath.Join(w.dir, logName))
	lines := bytes.SplitAfter(orig, []byte("\n"))
	// Cut the last entry off and point the head file at the one before.
	cut := bytes.Join(lines[:len(lines)-2], nil)
	os.WriteFile(filepath.Join(w.dir, logName), cut, 0o600)
	_, err = Verify(w.dir, nil, nil)
	if err == nil {
		t.Fatal("the head file should still catch a plain cut")
	}
	l := &auditLog{head: Head{Hash: genesis}}
	for _, raw := range lines[:len(lines)-2] {
		if _, err := l.verify(raw); err != nil {
			t.Fatal(err)
		}
	}
	writeHead(w.dir, l.head)
	var res *VerifyResult
	if res, err = Verify(w.dir, nil, nil); err != nil {
		t.Fatalf("a cut with a rewritten head was expected to pass the chain alone: %v", err)
	}
	if _, err := VerifyHeads(w.dir, nil, heads); !errors.As(err, &ce) {
		t.Fatalf("a cut with a rewritten head against the lake's checkpoint: %v", err)
	}
	// An empty log in place of the real one.
	os.WriteFile(filepath.Join(w.dir, logName), nil, 0o600)
	os.Remove(filepath.Join(w.dir, headName))
	if _, err := VerifyHeads(w.dir, nil, heads); !errors.As(err, &ce) {
		t.Fatalf("an emptied log against the lake's checkpoint: %v", err)
	}
	// A checkpoint for the same entry with another hash is refused.
	other := Head{Seq: head.Seq, Hash: res.Head.Hash}
	if err := WriteCheckpoint(t.Context(), lake, other); !errors.As(err, &ce) {
		t.Fatalf("a different checkpoint for entry %d: %v", head.Seq, err)
	}
}
