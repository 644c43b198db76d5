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
// cache would cost as much again. It reads the first n bytes, or all when
// n < 0: a part file read while it is written is read up to the bytes
// known written.
func openLanded(path string, n int64) (io.ReadCloser, error) {
	if oDirect != 0 {
		if f, err := os.OpenFile(path, os.O_RDONLY|oDirect, 0); err == nil {
			st, err := f.Stat()
			if err != nil {
				f.Close()
				return nil, err
			}
			if n < 0 || n > st.Size() {
				n = st.Size()
			}
			d := &directReader{f: f, size: n}
			for i := range d.slots {
				d.slots[i].res = make(chan error, 1)
				d.issue(&d.slots[i])
			}
			return d, nil
		}
	}
	f, err := os.Open(path)
	if err != nil || n < 0 {
		return f, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, n), f}, nil
}

// readAheadBlocks is how many reads of a landed file are in flight: the
// disk reads O_DIRECT blocks one at a time at about half its speed, as
// slow as ingest parses the cheapest files (measured: 4.4 GB read back
// at 1.1 GB/s one at a time).
const readAheadBlocks = 3

// directReader reads an O_DIRECT file in aligned blocks, readAheadBlocks
// of them in flight (ReadAt at their offsets), handed on in order.
type directReader struct {
	f     *os.File
	size  int64 // the bytes to read
	next  int64 // the offset of the next block to ask for
	slots [readAheadBlocks]slot
	head  int // the slot read from
	r     int // bytes of the head slot's block already read
	wg    sync.WaitGroup
	err   error
}

// A slot is a block on its way from the disk.
type slot struct {
	buf  []byte
	n    int
	res  chan error
	busy bool // a read was issued and its result not taken
}

// issue asks for the next block into s, if the file has one.
func (d *directReader) issue(s *slot) {
	if d.next >= d.size {
		return
	}
	if s.buf == nil {
		s.buf = getBlock()
	}
	off := d.next
	d.next += blockSize
	s.busy = true
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		n, err := d.f.ReadAt(s.buf, off)
		if off+int64(n) >= d.size { // the bytes asked for are all read
			n, err = int(d.size-off), nil
		} else if err == io.EOF { // the file is shorter than it was
			err = io.ErrUnexpectedEOF
		}
		s.n = n
		s.res <- err
	}()
}

func (d *directReader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	s := &d.slots[d.head]
	if s.busy {
		if err := <-s.res; err != nil {
			s.busy = false
			d.err = err
			return 0, err
		}
		s.busy = false
		d.r = 0
	} else if d.r == s.n {
		return 0, io.EOF // nothing asked for: the file is read
	}
	n := copy(p, s.buf[d.r:s.n])
	d.r += n
	if d.r == s.n {
		s.n, d.r = 0, 0
		d.issue(s)
		d.head = (d.head + 1) % len(d.slots)
	}
	return n, nil
}

func (d *directReader) Close() error {
	d.wg.Wait()
	for i := range d.slots {
		if s := &d.slots[i]; s.buf != nil {
			putBlock(s.buf)
			s.buf = nil
		}
	}
	return d.f.Close()
}
