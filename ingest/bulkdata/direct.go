package bulkdata

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// A pull writes the export past the page cache (O_DIRECT, where the file
// system allows it), in aligned blocks. Measured on a 2-core VM, writing
// 4 GB through the page cache took 0.8 CPU-s a GB; with O_DIRECT, 0.05:
// the raw export is kept for provenance, not to be read again soon, and
// caching it would cost ingest half again its CPU. Blocks of 2 MiB: 1 MiB
// writes cost 1.3 CPU-s more system time over the 8.57 GB benchmark
// export, 4 MiB ones 40 MB more peak RSS for no speed.
const (
	blockSize = 2 << 20 // a write or read; a multiple of align
	align     = 4096    // O_DIRECT's alignment of memory, offsets and sizes
)

// blocks are aligned blocks of blockSize, for reuse.
var blocks = sync.Pool{New: func() any { b := alignedBlock(blockSize); return &b }}

func getBlock() []byte  { return *blocks.Get().(*[]byte) }
func putBlock(b []byte) { blocks.Put(&b) }

// alignedBlock returns n bytes starting on an align boundary.
func alignedBlock(n int) []byte {
	b := make([]byte, n+align)
	off := (align - int(uintptr(unsafe.Pointer(&b[0]))%align)) % align
	return b[off : off+n : off+n]
}

// createDirect creates path for writing, with O_DIRECT when the file
// system takes it (tmpfs does not: EINVAL).
func createDirect(path string) (f *os.File, direct bool, err error) {
	if oDirect != 0 {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|oDirect, 0o644)
		if err == nil {
			return f, true, nil
		}
		if !errors.Is(err, syscall.EINVAL) {
			return nil, false, err
		}
	}
	f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	return f, false, err
}

// openLanded opens a landed file for reading, with O_DIRECT when it can:
// the pull wrote it past the page cache, and reading it back through the
// cache would cost as much again.
func openLanded(path string) (io.ReadCloser, error) {
	if oDirect != 0 {
		if f, err := os.OpenFile(path, os.O_RDONLY|oDirect, 0); err == nil {
			return &directReader{f: f}, nil
		}
	}
	return os.Open(path)
}

// directReader reads an O_DIRECT file a whole aligned block at a time:
// every read starts at an aligned offset, and a short one is the end.
type directReader struct {
	f    *os.File
	buf  []byte
	r, w int
	eof  bool
}

func (d *directReader) Read(p []byte) (int, error) {
	if d.r == d.w {
		if d.eof {
			return 0, io.EOF
		}
		if d.buf == nil {
			d.buf = getBlock()
		}
		n, err := d.f.Read(d.buf)
		d.r, d.w = 0, n
		if err == io.EOF || n%align != 0 || n == 0 {
			d.eof = true
		} else if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
	}
	n := copy(p, d.buf[d.r:d.w])
	d.r += n
	return n, nil
}

func (d *directReader) Close() error {
	if d.buf != nil {
		putBlock(d.buf)
		d.buf = nil
	}
	return d.f.Close()
}
