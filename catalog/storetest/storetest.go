// Package storetest checks that a catalog.Store behaves as the lake needs,
// so the local folder and S3 are held to one contract.
package storetest

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"sync"
	"testing"

	"github.com/nhs-hub/hub/catalog"
)

// Run checks store; it must start empty.
func Run(t *testing.T, store catalog.Store) {
	ctx := t.Context()
	t.Run("create is invisible until closed", func(t *testing.T) {
		w, err := store.Create(ctx, "a/b/part-00000.parquet")
		if err != nil {
			t.Fatal(err)
		}
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
		if _, err := w.Write(big); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Open(ctx, "a/b/part-00000.parquet"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("object visible before Close: %v", err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		r, err := store.Open(ctx, "a/b/part-00000.parquet")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		r.Close()
		if !bytes.Equal(got, big) {
			t.Fatalf("read %d bytes, wrote %d", len(got), len(big))
		}
	})
	t.Run("abort leaves nothing", func(t *testing.T) {
		w, err := store.Create(ctx, "ab/part-00000.parquet")
		if err != nil {
			t.Fatal(err)
		}
		// More than one multipart part on S3 (the test stores use small parts).
		if _, err := w.Write(bytes.Repeat([]byte("x"), 12<<20)); err != nil {
			t.Fatal(err)
		}
		a, ok := w.(interface{ Abort() })
		if !ok {
			t.Fatal("the store's writer has no Abort")
		}
		a.Abort()
		a.Abort()
		if err := w.Close(); err == nil {
			t.Fatal("Close after Abort reported success")
		}
		if _, err := store.Open(ctx, "ab/part-00000.parquet"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("an aborted object is readable: %v", err)
		}
		if left, err := store.List(ctx, "ab/"); err != nil || len(left) != 0 {
			t.Fatalf("an aborted object left %v (%v)", left, err)
		}
	})
	t.Run("put if absent has one winner", func(t *testing.T) {
		var wg sync.WaitGroup
		wins := make(chan int, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				err := store.PutIfAbsent(ctx, "c/manifest.json", []byte{byte('0' + i)})
				switch {
				case err == nil:
					wins <- i
				case !errors.Is(err, catalog.ErrExists):
					t.Errorf("put %d: %v", i, err)
				}
			}(i)
		}
		wg.Wait()
		close(wins)
		var winners []int
		for w := range wins {
			winners = append(winners, w)
		}
		if len(winners) != 1 {
			t.Fatalf("%d winners, want 1", len(winners))
		}
		r, err := store.Open(ctx, "c/manifest.json")
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		r.Close()
		if string(got) != string(rune('0'+winners[0])) {
			t.Fatalf("object holds %q, winner was %d", got, winners[0])
		}
	})
	t.Run("list and delete", func(t *testing.T) {
		paths, err := store.List(ctx, "a/")
		if err != nil || len(paths) != 1 || paths[0] != "a/b/part-00000.parquet" {
			t.Fatalf("list = %v, %v", paths, err)
		}
		if err := store.Delete(ctx, "a/b/part-00000.parquet"); err != nil {
			t.Fatal(err)
		}
		if err := store.Delete(ctx, "a/b/part-00000.parquet"); err != nil {
			t.Fatalf("deleting a missing object: %v", err)
		}
		if paths, _ := store.List(ctx, "a/"); len(paths) != 0 {
			t.Fatalf("left %v", paths)
		}
		if _, err := store.Open(ctx, "nothing/here"); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("open missing: %v", err)
		}
	})
}
