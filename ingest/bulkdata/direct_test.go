package bulkdata

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// A file written past the page cache in aligned blocks (the last padded,
// then truncated) reads back byte for byte, on a disk and on tmpfs (which
// refuses O_DIRECT: both fall back to the page cache).
func TestDirectWriteRead(t *testing.T) {
	dirs := []string{t.TempDir()}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "hub-direct-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(shm) })
			dirs = append(dirs, shm)
		}
	}
	for _, dir := range dirs {
		for _, size := range []int{0, 1, align, blockSize, 2*blockSize + 12345, 5*blockSize + 1} {
			want := make([]byte, size)
			r := rand.New(rand.NewPCG(uint64(size), 1))
			for i := range want {
				want[i] = byte(r.Uint32())
			}
			path := filepath.Join(dir, "f")
			f, direct, err := createDirect(path)
			if err != nil {
				t.Fatal(err)
			}
			b := alignedBlock(blockSize)
			var off int64
			for rest := want; ; {
				n := copy(b, rest)
				rest = rest[n:]
				out := b[:n]
				if direct {
					out = b[:(n+align-1)&^(align-1)]
					clear(out[n:])
				}
				if _, err := f.WriteAt(out, off); err != nil {
					t.Fatalf("%s, %d bytes (direct %v): %v", dir, size, direct, err)
				}
				off += int64(n)
				if len(rest) == 0 {
					break
				}
			}
			if err := f.Truncate(int64(size)); err != nil {
				t.Fatal(err)
			}
			f.Close()
			// The whole file, and a prefix (a part file read while it
			// grows is read up to the bytes known written).
			for _, n := range []int64{-1, int64(size) / 3} {
				rc, err := openLanded(path, n)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				w := want
				if n >= 0 {
					w = want[:n]
				}
				if err != nil || !bytes.Equal(got, w) {
					t.Errorf("%s, %d bytes (direct %v), first %d: read back %d bytes, equal %v, %v", dir, size, direct, n, len(got), bytes.Equal(got, w), err)
				}
			}
		}
	}
}
