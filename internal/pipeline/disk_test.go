package pipeline_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nhs-hub/hub/catalog"
	lakefile "github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/internal/pipeline"
)

// TestFullDisk publishes to a local lake on a real, small filesystem (a
// tmpfs) filled to leave room for half a dataset: the run fails with
// ENOSPC, nothing is visible; once space is freed gc cleans up and the
// next run publishes. Mounting needs root (CAP_SYS_ADMIN), as on CI.
func TestFullDisk(t *testing.T) {
	f := newFixture(t, 1500)
	whole, err := pipeline.Run(t.Context(), f.config(t, key(t, 7), policy()))
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	for _, tm := range whole.Manifest.Tables {
		for _, p := range tm.Parts {
			size += p.Size
		}
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", 4*size)); err != nil {
		t.Skipf("cannot mount a small tmpfs to fill (%v): the test needs root", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount: %v (a file of the failed run left open?)", err)
		}
	})
	ballast := filepath.Join(dir, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 4*size-size/2), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := lakefile.Open(filepath.Join(dir, "lake"))
	if err != nil {
		t.Fatal(err)
	}
	lake := catalog.NewLake(store)
	cfg := f.config(t, key(t, 7), policy())
	cfg.Lake = lake
	_, err = pipeline.Run(t.Context(), cfg)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("publish to a full disk: err = %v, want ENOSPC", err)
	}
	t.Logf("%d bytes free for a %d-byte dataset: %v", size/2, size, err)
	if ds, err := lake.Datasets(t.Context()); err != nil || len(ds) != 0 {
		t.Fatalf("after a full disk, datasets = %v, %v; want none", ds, err)
	}
	os.Remove(ballast) // the operator frees space
	if _, err := lake.GC(t.Context(), "test", 0); err != nil {
		t.Fatal(err)
	}
	if left, _ := store.List(t.Context(), "datasets/"); len(left) != 0 {
		t.Fatalf("gc left %v", left)
	}
	res, err := pipeline.Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("the run after space was freed: %v", err)
	}
	if err := lake.Verify(t.Context(), res.Manifest); err != nil {
		t.Fatal(err)
	}
}
