package bulkdata

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nhs-hub/hub/ingest"
	"github.com/zeebo/xxh3"
	"golang.org/x/sync/errgroup"
)

// A Stream is a pulled export as ingest reads it: each file downloads as
// ingest reads it, landing in the folder (past the page cache) on its
// way, so that a pull takes about as long as ingesting the same files
// from a folder rather than a download and an ingest one after the
// other. The next files ingest will read are asked for ahead (the
// server starts sending; the connection waits for ingest), and while
// ingest waits on the network, which then is the slower side, they
// download into the folder in parallel. Finish, which ingest.Run calls
// when it has read every table, fetches what ingest did not read and
// completes the pull; Close abandons it, keeping the files already
// whole for a resumed pull.
type Stream struct {
	p      *puller
	ctx    context.Context
	cancel context.CancelFunc
	token  bool // the files need the access token
	files  []*download
	byName map[string]*download

	// waited is how long ingest has waited for bytes, and blocked how
	// long pumps waited for the disk (ns): together they say whether
	// downloads asked for ahead should drain.
	waited, blocked atomic.Int64
	// Bytes ingest read as they arrived, and read back from the folder
	// (downloaded ahead, or whole before).
	streamed, readBack atomic.Int64
	mu                 sync.Mutex // one askAhead, or progress line, at a time
	wg                 sync.WaitGroup
	closed             sync.Once
}

var (
	_ ingest.Source   = (*Stream)(nil)
	_ ingest.Lister   = (*Stream)(nil)
	_ ingest.Finisher = (*Stream)(nil)
)

// A download asked for ahead (Config.Ahead) drains into the folder while
// ingest spends more than hungry of its time waiting for bytes, the
// pumps hardly wait for the disk (under diskBound of the time) and the
// machine has processors to spare (idle over spareCPU of the time),
// measured over gaugeEvery: the network, not ingest, the disk nor the
// processors, is then the slowest part, and more connections at once
// help. Otherwise it waits, the server's bytes held back by TCP, and
// ingest reads it as it arrives. A file drained ahead is written and read
// back, which costs more than it saves on a fast link: measured on a
// 2-core machine pulling the 1 M-patient export over loopback (the
// server sharing the processors), 11-12 s asking for nothing ahead,
// 15.2-18.7 s with 3 ahead on these signs, 12.7-15.1 s without the
// processors' (they took a busy server for a slow network), 15.6 s
// draining always. Hence Ahead is 0 unless asked for.
const (
	hungry     = 0.8
	diskBound  = 0.05
	spareCPU   = 0.6
	gaugeEvery = 100 * time.Millisecond
)

// forceDrain (tests) drains every download asked for ahead.
var forceDrain bool

// A gauge is one pump's view of how long ingest waited.
type gauge struct {
	at              time.Time
	waited, blocked int64
	idle, total     uint64
	hungry          bool
}

// hungry reports whether ingest waited on the network for most of the
// time since the pump last looked, with the disk and processors to
// spare.
func (s *Stream) hungry(g *gauge) bool {
	if forceDrain {
		return true
	}
	now := time.Now()
	if el := now.Sub(g.at); el >= gaugeEvery {
		w, b := s.waited.Load(), s.blocked.Load()
		idle, total, ok := cpuTimes()
		spare := !ok || total > g.total && float64(idle-g.idle) > spareCPU*float64(total-g.total)
		g.hungry = !g.at.IsZero() && spare && float64(w-g.waited) > hungry*float64(el) && float64(b-g.blocked) < diskBound*float64(el)
		g.at, g.waited, g.blocked, g.idle, g.total = now, w, b, idle, total
	}
	return g.hungry
}

// readAhead is how many blocks the writer may hand the reader ahead of
// it (blocks of blockSize).
const readAhead = 4

// Start runs (or resumes) an export's kick-off and polling into cfg.Dir,
// writes its manifest.json there, and returns the export as a source for
// ingest. The caller must Close it.
func Start(ctx context.Context, cfg Config) (*Stream, error) {
	p, err := newPuller(cfg)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	s := &Stream{p: p, ctx: sctx, cancel: cancel, byName: map[string]*download{}}
	want := p.state.Files
	if !p.state.Complete {
		m, err := p.manifest(ctx)
		if err != nil {
			cancel()
			return nil, err
		}
		if m.RequiresAccessToken && p.ts == nil {
			cancel()
			return nil, errors.New("the server requires an access token for its files; pull with SMART Backend Services (--fhir-client-id and --fhir-key-file)")
		}
		s.token = m.RequiresAccessToken
		if want, err = p.files(m); err != nil {
			cancel()
			return nil, err
		}
		if err := p.writeManifest(m); err != nil {
			cancel()
			return nil, err
		}
		if err := p.save(); err != nil {
			cancel()
			return nil, err
		}
	}
	have := map[string]File{}
	for _, f := range p.state.Files {
		have[f.Name] = f
	}
	// Leftovers of a run cut short.
	if parts, _ := filepath.Glob(filepath.Join(cfg.Dir, "*.part")); len(parts) > 0 {
		for _, name := range parts {
			os.Remove(name)
		}
	}
	for _, f := range want {
		d := &download{s: s, f: f, done: make(chan struct{})}
		d.written = sync.NewCond(&d.mu)
		if h, ok := have[f.Name]; ok && h.URL == f.URL && p.whole(h) {
			d.f, d.whole = h, true
			close(d.done)
		}
		s.files = append(s.files, d)
		s.byName[f.Name] = d
	}
	return s, nil
}

// State is the pull's state so far.
func (s *Stream) State() *State {
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	st := s.p.state
	st.Files = slices.Clone(st.Files)
	return &st
}

// Streamed returns the bytes ingest has read as they arrived, and those
// it read back from the folder.
func (s *Stream) Streamed() (streamed, readBack int64) {
	return s.streamed.Load(), s.readBack.Load()
}

// List returns the export's files, its manifest and the pull's state, as
// a listing of the landing folder would when the pull is done.
func (s *Stream) List(context.Context) ([]string, error) {
	names := []string{"manifest.json", "pull.json"}
	for _, d := range s.files {
		names = append(names, d.f.Name)
	}
	return names, nil
}

// Open returns a file of the export: from the folder when it is whole
// there, else as it downloads.
func (s *Stream) Open(_ context.Context, name string) (io.ReadCloser, error) {
	d, ok := s.byName[name]
	if !ok {
		if name == "manifest.json" || name == "pull.json" {
			return os.Open(filepath.Join(s.p.cfg.Dir, name))
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	d.mu.Lock()
	switch {
	case d.whole:
		d.mu.Unlock()
		s.readBack.Add(d.f.Bytes)
		return openLanded(d.path(), -1)
	case d.err != nil:
		d.mu.Unlock()
		return nil, d.err
	case d.ready != nil:
		d.mu.Unlock()
		return nil, fmt.Errorf("%s is already being read", name)
	}
	ready := make(chan *blk, readAhead)
	r := &reader{d: d, prefix: d.dispatched, ready: ready, gone: make(chan struct{})}
	d.ready, d.gone = ready, r.gone
	// The blocks handed on before are read back from the part file, once
	// written: the pump soon waits for the reader, so the writes end.
	for d.pending > 0 {
		d.written.Wait()
	}
	d.mu.Unlock()
	if r.prefix > 0 { // written before ingest came to it
		var err error
		r.disk, err = openLanded(d.partPath(), r.prefix)
		if errors.Is(err, fs.ErrNotExist) { // landed meanwhile
			r.disk, err = openLanded(d.path(), r.prefix)
		}
		if err != nil {
			r.Close()
			return nil, err
		}
		s.readBack.Add(r.prefix)
	}
	d.start(false)
	s.askAhead(d)
	return r, nil
}

// askAhead asks for the files after d, up to the pull's parallelism; they
// download into the folder while ingest waits on the network.
func (s *Stream) askAhead(d *download) {
	i := slices.Index(s.files, d)
	s.mu.Lock()
	defer s.mu.Unlock()
	ahead := 0
	for _, next := range s.files[i+1:] {
		if ahead >= min(s.p.cfg.Ahead, s.p.cfg.Parallel-1) {
			return
		}
		next.mu.Lock()
		over := next.whole || next.err != nil
		next.mu.Unlock()
		if !over {
			next.start(true)
			ahead++
		}
	}
}

// Finish fetches the files ingest did not read, at most Parallel at once,
// and completes the pull: the state says complete, and the server is
// told it may delete the job.
func (s *Stream) Finish(ctx context.Context) error {
	var done atomic.Int64
	var todo []*download
	for _, d := range s.files {
		if d.isWhole() {
			done.Add(1)
		} else {
			todo = append(todo, d)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.p.cfg.Parallel)
	for _, d := range todo {
		g.Go(func() error {
			d.start(false)
			select {
			case <-d.done:
			case <-gctx.Done():
				return gctx.Err()
			}
			if err := d.error(); err != nil {
				return err
			}
			if n := done.Add(1); s.p.cfg.Progress != nil {
				s.mu.Lock()
				fmt.Fprintf(s.p.cfg.Progress, "\r\033[Kbulk export: %d of %d files", n, len(s.files))
				s.mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, d := range s.files {
		if !d.isWhole() {
			return fmt.Errorf("%s did not arrive whole", d.f.Name)
		}
	}
	s.p.mu.Lock()
	s.p.state.Complete = true
	s.p.mu.Unlock()
	if err := s.p.save(); err != nil {
		return err
	}
	s.p.deleteJob(s.ctx)
	return nil
}

// Close stops the downloads; the files not whole are removed, the whole
// ones stay for a resumed pull.
func (s *Stream) Close() error {
	s.closed.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

func (d *download) isWhole() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.whole
}

func (d *download) error() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// A download is one file of the export on its way into the landing
// folder. A pump reads the response into aligned blocks and hashes them,
// and hands each to writers, which write it to NAME.part past the page
// cache (several at once: one O_DIRECT write at a time halves the speed),
// and to the reader that follows the download (ingest), if any; the part
// file is renamed into place when whole. The pump and writers run beside
// ingest's serial reader, which so never waits on the disk, nor on the
// network while the server keeps up. A connection cut short is asked
// again from where it stopped.
type download struct {
	s *Stream
	f File

	// gated holds a download asked for ahead: its pump asks, then reads
	// only while ingest waits on the network.
	gated atomic.Bool
	done  chan struct{} // closed when whole or failed

	mu         sync.Mutex
	written    *sync.Cond // signalled when pending falls to 0
	running    bool       // a pump runs
	whole      bool
	err        error
	dispatched int64     // bytes handed on by the pump
	pending    int       // blocks handed on before a reader followed, not yet written
	ready      chan *blk // the blocks for the reader that follows, when one does
	gone       chan struct{}

	// The pump's alone.
	resp     *http.Response
	ranged   bool // the server may be asked for a Range
	length   int64
	received int64
	h        *xxh3.Hasher128
	attempts int
}

// A blk is a block on its way: written by a writer and read by the
// reader, and given back to the pool when both are done with it.
type blk struct {
	b    []byte
	off  int64
	refs atomic.Int32
	// before says no reader followed when it was handed on: a reader
	// coming later reads it back from the part file, once written.
	before bool
}

func (k *blk) release() {
	if k.refs.Add(-1) == 0 {
		putBlock(k.b[:cap(k.b)])
	}
}

// writers is how many blocks of a download are written at once, and
// queued how many more may wait for them: the pump hands each block to
// the reader first, then queues it, so a disk slower for a moment does
// not hold back ingest. Measured (1 M-patient pull over loopback): with
// 4 queued, the pump waited 4 s for the disk and the pull took 12.5 s;
// with 12, 0.03 s and 11 s, for 16 MB more peak RSS.
const (
	writers = 4
	queued  = 12
)

func (d *download) path() string     { return filepath.Join(d.s.p.cfg.Dir, d.f.Name) }
func (d *download) partPath() string { return d.path() + ".part" }

// start runs the pump unless it runs or the download is over; gated
// says whether it waits for ingest to wait on the network.
func (d *download) start(gated bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !gated {
		d.gated.Store(false)
	}
	if d.running || d.whole || d.err != nil {
		return
	}
	d.gated.Store(gated)
	d.running = true
	d.s.wg.Add(1)
	go func() {
		defer d.s.wg.Done()
		d.pump()
	}()
}

// end records the download's end (err nil: whole) and tells the reader.
func (d *download) end(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.whole, d.err = err == nil, err
	d.running = false
	if d.ready != nil {
		close(d.ready)
		d.ready = nil
	}
	close(d.done)
}

// pump asks for the file and reads it into blocks for the writers and
// the reader, then lands it.
func (d *download) pump() {
	part, direct, err := createDirect(d.partPath())
	if err != nil {
		d.end(fmt.Errorf("download %s: %w", d.f.Name, err))
		return
	}
	d.h, d.length = xxh3.New128(), -1
	queue := make(chan *blk, queued)
	var wg sync.WaitGroup
	var werr atomic.Pointer[error]
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range queue {
				if werr.Load() == nil {
					if _, err := part.WriteAt(k.b, k.off); err != nil {
						err = fmt.Errorf("download %s: %w", d.f.Name, err)
						werr.Store(&err)
					}
				}
				d.wrote(k)
				k.release()
			}
		}()
	}
	last, err := d.fill(queue)
	close(queue)
	wg.Wait()
	if e := werr.Load(); err == nil && e != nil {
		err = *e
	}
	if err == nil {
		err = d.land(part, direct, last)
	} else if last != nil {
		d.wrote(last) // not written
	}
	if last != nil {
		last.release()
	}
	if err != nil {
		part.Close()
		os.Remove(d.partPath())
	}
	d.end(err)
}

// wrote counts a block written (or given up), for a reader that waits
// for the blocks handed on before it came.
func (d *download) wrote(k *blk) {
	if !k.before {
		return
	}
	d.mu.Lock()
	d.pending--
	if d.pending == 0 {
		d.written.Broadcast()
	}
	d.mu.Unlock()
}

// fill reads the response into blocks until the file ends, and returns
// the last block (written by land; it may be empty).
func (d *download) fill(queue chan<- *blk) (*blk, error) {
	var held []byte // a block not yet handed on
	defer func() {
		if d.resp != nil {
			d.resp.Body.Close()
		}
		if held != nil {
			putBlock(held)
		}
	}()
	var g gauge
	for {
		held = getBlock()
		n := 0
		for n < len(held) {
			if err := d.await(&g); err != nil {
				return nil, err
			}
			k, err := d.resp.Body.Read(held[n:])
			d.h.Write(held[n : n+k])
			n += k
			d.received += int64(k)
			if d.length >= 0 && d.received > d.length {
				return nil, fmt.Errorf("download %s: the server sent more than the %d bytes it said", d.f.Name, d.length)
			}
			switch {
			case err == nil:
				continue
			case err == io.EOF && (d.length < 0 || d.received == d.length):
				b := held[:n]
				held = nil
				return d.dispatch(b, nil)
			case err == io.EOF:
				err = io.ErrUnexpectedEOF
			}
			if err := d.retry(err); err != nil {
				return nil, err
			}
		}
		b := held
		held = nil
		if _, err := d.dispatch(b, queue); err != nil {
			return nil, err
		}
	}
}

// await asks for the file (or its rest) when no response is open and,
// for a download asked for ahead, waits until ingest is hungry for it.
func (d *download) await(g *gauge) error {
	for {
		if d.resp == nil {
			if err := d.request(); err != nil {
				return err
			}
		}
		if !d.gated.Load() || d.s.hungry(g) {
			return nil
		}
		if err := sleep(d.s.ctx, gaugeEvery); err != nil {
			return err
		}
	}
}

// dispatch hands a block to the writers (queue; nil for the last block,
// which the pump writes itself and so keeps a reference to) and to the
// reader, if one follows.
func (d *download) dispatch(b []byte, queue chan<- *blk) (*blk, error) {
	d.mu.Lock()
	ready, gone := d.ready, d.gone
	k := &blk{b: b, off: d.dispatched, before: ready == nil}
	d.dispatched += int64(len(b))
	if k.before {
		d.pending++
	}
	d.mu.Unlock()
	k.refs.Store(1)
	if ready != nil {
		k.refs.Add(1)
	}
	if ready != nil {
		select {
		case ready <- k:
		case <-gone:
			k.release()
		case <-d.s.ctx.Done():
			k.release()
			if queue == nil {
				return k, d.s.ctx.Err() // the pump's, as below
			}
			d.wrote(k)
			k.release()
			return nil, d.s.ctx.Err()
		}
	}
	if queue != nil {
		t := time.Now()
		defer func() { d.s.blocked.Add(int64(time.Since(t))) }()
		select {
		case queue <- k:
		case <-d.s.ctx.Done():
			d.wrote(k)
			k.release()
			return nil, d.s.ctx.Err()
		}
	}
	return k, nil
}

// retry closes a response cut short and waits before the rest is asked
// for, unless the retries are spent.
func (d *download) retry(cause error) error {
	d.resp.Body.Close()
	d.resp = nil
	if err := d.s.ctx.Err(); err != nil {
		return err
	}
	d.attempts++
	if d.attempts >= d.s.p.cfg.Retries {
		return fmt.Errorf("download %s: %w: %w (run the pull again to resume)", d.f.Name, ErrTooManyRetries, redactURL(cause))
	}
	d.s.p.log.Warn("download cut short; asking for the rest", "file", d.f.Name, "attempt", d.attempts)
	return sleep(d.s.ctx, backoff(d.attempts-1))
}

// request asks for the file, or for the rest of it from the bytes
// already received.
func (d *download) request() error {
	from := d.received
	op := "download " + d.f.Name
	resp, err := d.s.p.do(d.s.ctx, op, d.s.token, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(d.s.ctx, http.MethodGet, d.f.URL, nil)
		if err == nil {
			req.Header.Set("Accept", "application/fhir+ndjson")
			if from > 0 && d.ranged {
				req.Header.Set("Range", "bytes="+strconv.FormatInt(from, 10)+"-")
			}
		}
		return req, err
	})
	if err != nil {
		return err
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && from > 0 && d.ranged:
		if !strings.HasPrefix(resp.Header.Get("Content-Range"), "bytes "+strconv.FormatInt(from, 10)+"-") {
			resp.Body.Close()
			return fmt.Errorf("%s: the server resumed the file from the wrong place", op)
		}
	case resp.StatusCode == http.StatusOK:
		if from == 0 {
			d.length = resp.ContentLength
			// A transparently gunzipped body's offsets are not the
			// server's: such a file is asked again whole.
			d.ranged = !resp.Uncompressed
		} else if err := d.skip(resp, from); err != nil {
			resp.Body.Close()
			return err
		}
	default:
		resp.Body.Close()
		return &ServerError{Op: op, Status: resp.StatusCode}
	}
	d.resp = resp
	return nil
}

// skip reads past the first n bytes of a file asked again whole, checking
// that they are the bytes already received.
func (d *download) skip(resp *http.Response, n int64) error {
	changed := fmt.Errorf("download %s: the file changed on the server during the pull; run the pull again", d.f.Name)
	if resp.ContentLength >= 0 && d.length >= 0 && resp.ContentLength != d.length {
		return changed
	}
	h := xxh3.New128()
	if _, err := io.CopyN(h, resp.Body, n); err != nil {
		return fmt.Errorf("download %s: %w", d.f.Name, err)
	}
	if h.Sum128() != d.h.Sum128() {
		return changed
	}
	return nil
}

// land writes the last block (padded to the alignment), truncates the
// padding, syncs the file, renames it into place and records it in the
// state.
func (d *download) land(part *os.File, direct bool, last *blk) error {
	out := last.b
	if direct {
		padded := (len(out) + align - 1) &^ (align - 1)
		out = last.b[:padded]
		clear(out[len(last.b):])
	}
	_, err := part.WriteAt(out, last.off)
	d.wrote(last)
	if err == nil {
		err = part.Truncate(d.received)
	}
	if err == nil {
		err = part.Sync()
	}
	if cerr := part.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(d.partPath(), d.path())
	}
	if err != nil {
		return fmt.Errorf("land %s: %w", d.f.Name, err)
	}
	sum := d.h.Sum128().Bytes()
	d.mu.Lock()
	d.f.Bytes, d.f.XXH3 = d.received, hex.EncodeToString(sum[:])
	f := d.f
	d.mu.Unlock()
	d.s.p.mu.Lock()
	d.s.p.state.Files = append(d.s.p.state.Files, f)
	d.s.p.mu.Unlock()
	return d.s.p.save()
}

// A reader follows a download for ingest: the bytes written before it
// came (read back from the part file), then each block as the writer
// hands it over.
type reader struct {
	d      *download
	pos    int64
	prefix int64
	disk   io.ReadCloser
	ready  <-chan *blk
	gone   chan struct{}
	cur    *blk
	off    int
}

func (r *reader) Read(p []byte) (int, error) {
	if r.pos < r.prefix {
		n, err := r.disk.Read(p[:min(int64(len(p)), r.prefix-r.pos)])
		r.pos += int64(n)
		if r.pos == r.prefix {
			r.disk.Close()
			r.disk = nil
			err = nil
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	for r.cur == nil || r.off == len(r.cur.b) {
		if r.cur != nil {
			r.cur.release()
			r.cur = nil
		}
		t := time.Now()
		k, ok := <-r.ready
		r.d.s.waited.Add(int64(time.Since(t)))
		if !ok {
			r.d.mu.Lock()
			err := r.d.err
			r.d.mu.Unlock()
			if err == nil {
				err = io.EOF
			}
			return 0, err
		}
		r.d.s.streamed.Add(int64(len(k.b)))
		r.cur, r.off = k, 0
	}
	n := copy(p, r.cur.b[r.off:])
	r.off += n
	r.pos += int64(n)
	return n, nil
}

// Close lets the rest of the file download in Finish.
func (r *reader) Close() error {
	if r.gone == nil {
		return nil
	}
	if r.disk != nil {
		r.disk.Close()
	}
	if r.cur != nil {
		r.cur.release()
		r.cur = nil
	}
	r.d.mu.Lock()
	if r.d.gone == r.gone {
		r.d.ready, r.d.gone = nil, nil
	}
	r.d.mu.Unlock()
	close(r.gone)
	r.gone = nil
	return nil
}

// downloadOrder sorts an export's files as ingest first reads them: the
// resource types order names, those it does not name first (ingest
// counts them before reading any table), each type's files as the
// manifest lists them.
func downloadOrder(files []File, order []string) {
	rank := func(typ string) int { return slices.Index(order, typ) }
	slices.SortStableFunc(files, func(a, b File) int { return cmp.Compare(rank(a.Type), rank(b.Type)) })
}
