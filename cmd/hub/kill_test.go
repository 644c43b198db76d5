package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nhs-hub/hub/catalog"
	"github.com/nhs-hub/hub/catalog/file"
)

// TestMain lets the test binary act as hub, so a test can kill a real
// publishing process.
func TestMain(m *testing.M) {
	if os.Getenv("HUB_TEST_AS_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A publish killed at random moments never leaves a partial version
// visible; every visible version verifies; gc cleans up; a re-run works.
func TestKilledPublishLeavesOnlyWholeVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("runs many publishes")
	}
	dir := filepath.Join(t.TempDir(), "x")
	if _, err := runHub(t, "synth", "--patients", "20000", "--seed", "3", "--out", dir); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	os.WriteFile(keyFile, []byte("0123456789abcdef0123456789abcdef"), 0o600)
	lakeDir := filepath.Join(t.TempDir(), "lake")
	args := []string{"ingest", "--extract", dir, "--optouts", filepath.Join(dir, "optouts.txt"),
		"--dataset", "k", "--lake", lakeDir, "--key-file", keyFile}
	self, _ := os.Executable()
	publish := func() *exec.Cmd {
		cmd := exec.Command(self, args...)
		cmd.Env = append(os.Environ(), "HUB_TEST_AS_MAIN=1")
		return cmd
	}
	// How long one whole publish takes here.
	start := time.Now()
	if out, err := publish().CombinedOutput(); err != nil {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	whole := time.Since(start)
	store, _ := file.Open(lakeDir)
	lake := catalog.NewLake(store)
	r := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 12; i++ {
		cmd := publish()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(r.Int64N(int64(whole))))
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		vs, err := lake.Versions(t.Context(), "k")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			m, err := lake.Manifest(t.Context(), "k", v)
			if err != nil {
				t.Fatal(err)
			}
			if err := lake.Verify(t.Context(), m); err != nil {
				t.Fatalf("after kill %d, version %d is visible but not whole: %v", i, v, err)
			}
		}
	}
	if _, err := lake.GC(t.Context(), "k", 0); err != nil {
		t.Fatal(err)
	}
	left, _ := store.List(t.Context(), "datasets/k/versions/")
	committed := map[string]bool{}
	for _, p := range left {
		if filepath.Base(p) == "manifest.json" {
			committed[filepath.Dir(p)] = true
		}
	}
	for _, p := range left {
		// A committed version's Iceberg tables stay with it.
		version, _, iceberg := strings.Cut(p, "/iceberg/")
		if iceberg && committed[version] {
			continue
		}
		if filepath.Ext(p) != ".parquet" && filepath.Base(p) != "manifest.json" && filepath.Base(p) != "_claim" {
			t.Errorf("gc left %s", p)
		}
	}
	if out, err := publish().CombinedOutput(); err != nil {
		t.Fatalf("publish after kills: %v\n%s", err, out)
	}
}
