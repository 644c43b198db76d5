// Package ingest reads LHCRE extracts (CSV or FHIR R4 bulk NDJSON, plain or
// gzip-compressed), validates every row, applies the patient opt-out (the
// National Data Opt-out list and type 1 dissent) and streams the surviving
// rows as Arrow record batches, one table after another, with bounded
// memory. Bad rows are quarantined by file, line and reason; nothing
// identifiable is written to disk, logged or reported.
package ingest

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/compute"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"golang.org/x/sync/errgroup"
)

// A Source holds an extract's files.
type Source interface {
	// Open opens the named file, returning an error wrapping
	// fs.ErrNotExist when there is none.
	Open(ctx context.Context, name string) (io.ReadCloser, error)
}

// Dir is a Source on a local folder.
type Dir string

// Open opens name inside the folder.
func (d Dir) Open(_ context.Context, name string) (io.ReadCloser, error) {
	return os.Open(filepath.Join(string(d), name))
}

// Size returns a file's size, for progress.
func (d Dir) Size(_ context.Context, name string) (int64, error) {
	st, err := os.Stat(filepath.Join(string(d), name))
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// A Sizer is a Source that can tell a file's size; progress then shows a
// percentage and an ETA.
type Sizer interface {
	Size(ctx context.Context, name string) (int64, error)
}

var _ Source = Dir("")
var _ Sizer = Dir("")

// Format is an extract's file format.
type Format uint8

const (
	CSV Format = iota
	FHIR
)

func (f Format) String() string { return [...]string{"csv", "fhir"}[f] }

// ErrNoExtract is returned when a source holds no recognisable extract.
var ErrNoExtract = errors.New("no extract found: expected patients.csv[.gz] or Patient.ndjson[.gz]")

// Options configure [Run].
type Options struct {
	// OptOuts is the National Data Opt-out list; nil means an empty list.
	OptOuts *OptOuts
	// Workers parse in parallel; 0 means GOMAXPROCS.
	Workers int
	// Allocator for Arrow buffers; nil means the Go allocator.
	Allocator memory.Allocator
	// Quarantine, when set, receives one JSON line per quarantined row.
	Quarantine io.Writer
	// Progress, when set, receives a progress line about twice a second.
	Progress io.Writer
	Logger   *slog.Logger
}

// An Emit function receives each batch of kept rows, table by table in
// the order of [Tables] and in file order within a table. It owns rec and
// must release it. An error stops the run.
type Emit func(ctx context.Context, t Table, rec arrow.RecordBatch) error

// Run ingests the extract in src, calling emit with the surviving rows,
// and returns the report. A file-level fault (a missing table, a header
// without a required column, an unreadable or over-expanding gzip stream)
// stops the run with an error; a row-level fault is quarantined.
func Run(ctx context.Context, src Source, opts Options, emit Emit) (*Report, error) {
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Allocator == nil {
		opts.Allocator = memory.DefaultAllocator
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OptOuts == nil {
		opts.OptOuts = &OptOuts{set: newIDSet(16)}
	}
	r := &run{src: src, opts: opts, st: newState(opts.OptOuts), log: opts.Logger.With("component", "ingest")}
	if err := r.findFiles(ctx); err != nil {
		return nil, err
	}
	rep := &Report{Format: r.format.String(), Tables: map[string]*TableReport{}, OptOuts: opts.OptOuts.Stats}
	r.rep = rep
	if opts.Progress != nil {
		stop := r.startProgress(opts.Progress)
		defer stop()
	}
	if err := r.type1Pass(ctx); err != nil {
		return nil, err
	}
	rep.Type1 = r.st.type1Stats()
	for _, t := range Tables {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := r.table(ctx, t, opts.Workers, emit); err != nil {
			return nil, err
		}
		if t == Patients {
			pc := &r.st.counts
			pc.Kept = int64(r.st.kept.Len())
			pc.Quarantined = int64(r.st.seen.Len() - r.st.kept.Len())
			tr := rep.Tables[Patients.String()]
			pc.ExcludedInvalid = tr.Reasons[ReasonMissingNHSNumber.String()] + tr.Reasons[ReasonInvalidNHSNumber.String()]
			rep.Patients = *pc
		}
	}
	return rep, nil
}

type run struct {
	src    Source
	opts   Options
	st     *state
	rep    *Report
	log    *slog.Logger
	format Format
	files  [len(columns)]string

	progTable atomic.Value // string
	progRows  atomic.Int64
	progBytes atomic.Int64
	progSize  atomic.Int64 // the current file's size, 0 if unknown
}

func (r *run) findFiles(ctx context.Context) error {
	exists := func(name string) (bool, error) {
		f, err := r.src.Open(ctx, name)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("open %s: %w", name, err)
		}
		f.Close()
		return true, nil
	}
	var found bool
	for _, f := range []Format{CSV, FHIR} {
		for _, t := range Tables {
			base := t.String() + ".csv"
			if f == FHIR {
				base = t.FHIRResource() + ".ndjson"
			}
			for _, name := range []string{base, base + ".gz"} {
				ok, err := exists(name)
				if err != nil {
					return err
				}
				if ok {
					r.files[t] = name
					break
				}
			}
			if t == Patients && r.files[t] == "" {
				break
			}
			if r.files[t] == "" {
				return fmt.Errorf("the %s extract lacks its %s table (%s or %s.gz)", f, t, base, base)
			}
			found = true
		}
		if found {
			r.format = f
			return nil
		}
	}
	return ErrNoExtract
}

// tableReader yields the chunks of one table's file, header parsed.
type tableReader struct {
	t      Table
	file   string
	rc     io.ReadCloser
	count  *countingReader
	ch     *chunker
	header *csvHeader
	first  *chunk
}

func (r *run) open(ctx context.Context, t Table, hashed bool) (*tableReader, error) {
	name := r.files[t]
	rc, err := r.src.Open(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	stream, count, err := openStream(rc, filepath.Ext(name) == ".gz", hashed)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	tr := &tableReader{t: t, file: name, rc: rc, count: count, ch: newChunker(stream, count, r.format == CSV)}
	if r.format == FHIR {
		return tr, nil
	}
	c, err := tr.ch.next()
	if err == io.EOF {
		rc.Close()
		return nil, fmt.Errorf("%s: empty file; expected a header row", name)
	}
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if c.skipped != nil {
		rc.Close()
		return nil, fmt.Errorf("%s: header row longer than %d bytes", name, MaxRecord)
	}
	rec, _, n, lines, err := csvRecord(c.data, nil, nil)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%s: malformed header row", name)
	}
	if tr.header, err = parseHeader(t, rec, name); err != nil {
		rc.Close()
		return nil, err
	}
	c.data = c.data[n:]
	c.line += lines
	tr.first = c
	return tr, nil
}

func (tr *tableReader) next() (*chunk, error) {
	if c := tr.first; c != nil {
		tr.first = nil
		return c, nil
	}
	return tr.ch.next()
}

// records calls fn for each non-blank record of c with its first line,
// the lines it spans and its fields in contract order (nil when the
// record is malformed). The slices are reused between calls.
func (tr *tableReader) records(c *chunk, fn func(line, lines int, f [][]byte)) {
	data, line := c.data, c.line
	proj := make([][]byte, len(columns[tr.t]))
	if tr.header == nil { // NDJSON: a record a line
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			var l []byte
			if i < 0 {
				l, data = data, nil
			} else {
				l, data = data[:i], data[i+1:]
			}
			l = bytes.TrimSuffix(l, []byte{'\r'})
			if len(bytes.TrimSpace(l)) > 0 {
				if fhirFields(tr.t, l, proj) {
					fn(line, 1, proj)
				} else {
					fn(line, 1, nil)
				}
			}
			line++
		}
		return
	}
	var fields [][]byte
	var scratch []byte
	for len(data) > 0 {
		var n, lines int
		var err error
		fields, scratch, n, lines, err = csvRecord(data, fields, scratch)
		start := line
		data = data[n:]
		line += lines
		if err == nil && len(fields) == 1 && len(bytes.TrimSpace(fields[0])) == 0 {
			continue // a blank line is not a row
		}
		if err != nil || len(fields) != tr.header.width {
			fn(start, max(lines, 1), nil)
			continue
		}
		tr.header.project(fields, proj)
		fn(start, max(lines, 1), proj)
	}
}

// type1Pass gathers the type 1 dissent entries of the observations table
// before any table is read, so that a patient's objection applies to every
// table. Only records that contain one of the two codes are parsed.
func (r *run) type1Pass(ctx context.Context) error {
	tr, err := r.open(ctx, Observations, false)
	if err != nil {
		return err
	}
	defer tr.rc.Close()
	r.progTable.Store("type 1 dissent scan")
	chunks := make(chan *chunk, r.opts.Workers)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(chunks)
		for {
			if err := gctx.Err(); err != nil {
				return err
			}
			c, err := tr.next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", tr.file, err)
			}
			select {
			case chunks <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
	})
	for range r.opts.Workers {
		g.Go(func() error {
			for c := range chunks {
				r.type1Chunk(tr, c)
				r.progBytes.Store(c.in)
				chunkPool.Put(c.buf)
			}
			return nil
		})
	}
	return g.Wait()
}

func (r *run) type1Chunk(tr *tableReader, c *chunk) {
	if c.unquoted && tr.header != nil {
		// Every record is one line: parse only the lines holding a code,
		// not the whole chunk, though most chunks hold one (the pass took
		// 0.35 CPU-s on the benchmark extract, now 0.2).
		data, pos := c.data, 0 // data[pos:] is left to search
		for {
			i := bytes.Index(data[pos:], type1Prefix)
			if i < 0 {
				return
			}
			i += pos
			if !bytes.HasPrefix(data[i:], []byte(CodeType1Dissent)) && !bytes.HasPrefix(data[i:], []byte(CodeType1Withdrawn)) {
				pos = i + 1
				continue
			}
			start, end := bytes.LastIndexByte(data[:i], '\n')+1, len(data)
			if k := bytes.IndexByte(data[i:], '\n'); k >= 0 {
				end = i + k + 1
			}
			r.type1Records(tr, &chunk{data: data[start:end]})
			pos = end
		}
	}
	if bytes.Contains(c.data, []byte(CodeType1Dissent)) || bytes.Contains(c.data, []byte(CodeType1Withdrawn)) {
		r.type1Records(tr, c) // record by record: a line may lie inside a quoted field
	}
}

// type1Prefix is what the two type 1 codes begin with: one search finds
// both (searching for each in turn rescanned the chunk for the rarer one).
var type1Prefix = func() []byte {
	a, b := CodeType1Dissent, CodeType1Withdrawn
	n := 0
	for n < min(len(a), len(b)) && a[n] == b[n] {
		n++
	}
	return []byte(a[:n])
}()

// type1Records notes the type 1 dissent entries among c's records.
func (r *run) type1Records(tr *tableReader, c *chunk) {
	tr.records(c, func(_, _ int, f [][]byte) {
		if f == nil {
			return
		}
		code := trimSpace(f[2])
		dissent := string(code) == CodeType1Dissent
		if !dissent && string(code) != CodeType1Withdrawn {
			return
		}
		n, err := ParseNHSNumber(f[0])
		if err != nil {
			return
		}
		d, ok := parseDate(f[5])
		r.st.noteType1(n, dissent, d, ok)
	})
}

// result is what a worker makes of one chunk.
type result struct {
	seq        int
	rec        arrow.RecordBatch
	counts     [numReasons]int64
	quarantine []QuarantineEntry
	in         int64
	patients   []patientNote // patients table: rows with a valid number
}

// A patientNote is a patients-table row with a valid number, as a worker
// decided it without knowing the rows of other chunks.
type patientNote struct {
	nhs    uint64
	reason Reason
	row    int // the row in the batch when kept, else -1
	q      int // its quarantine entry when quarantined, else -1
	line   int
	lines  int
}

// maxSamples is how many quarantine entries per table the report keeps.
const maxSamples = 20

func (r *run) table(ctx context.Context, t Table, workers int, emit Emit) error {
	tr, err := r.open(ctx, t, true)
	if err != nil {
		return err
	}
	defer tr.rc.Close()
	rep := &TableReport{File: tr.file, Reasons: map[string]int64{}}
	r.rep.Tables[t.String()] = rep
	r.progRows.Store(0)
	r.progBytes.Store(0)
	var size int64
	if sz, ok := r.src.(Sizer); ok && !strings.HasSuffix(tr.file, ".gz") {
		size, _ = sz.Size(ctx, tr.file)
	}
	r.progSize.Store(size)
	r.progTable.Store(t.String())
	start := time.Now()

	// tokens bound the chunks in flight, queued or awaiting their turn.
	tokens := make(chan struct{}, 2*workers+2)
	chunks := make(chan *chunk, workers)
	results := make(chan *result, workers)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(chunks)
		for {
			select {
			case tokens <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			if err := gctx.Err(); err != nil {
				return err
			}
			c, err := tr.next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", tr.file, err)
			}
			select {
			case chunks <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
	})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		g.Go(func() error {
			defer wg.Done()
			rb := newRowBuilder(t, r.st, r.opts.Allocator)
			for c := range chunks {
				res := r.work(tr, rb, c)
				select {
				case results <- res:
				case <-gctx.Done():
					if res.rec != nil {
						res.rec.Release()
					}
					return gctx.Err()
				}
			}
			return nil
		})
	}
	go func() { wg.Wait(); close(results) }()

	g.Go(func() error {
		pending := map[int]*result{}
		next := 0
		var qenc *json.Encoder
		if r.opts.Quarantine != nil {
			qenc = json.NewEncoder(r.opts.Quarantine)
		}
		for res := range results {
			pending[res.seq] = res
			for {
				res, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				next++
				<-tokens
				if t == Patients {
					if err := r.settlePatients(tr, res); err != nil {
						return err
					}
				}
				for reason, n := range res.counts {
					if n > 0 {
						rep.Add(Reason(reason), n)
					}
				}
				for _, q := range res.quarantine {
					if len(rep.Samples) < maxSamples {
						rep.Samples = append(rep.Samples, q)
					}
					if qenc != nil {
						if err := qenc.Encode(q); err != nil {
							return fmt.Errorf("write quarantine: %w", err)
						}
					}
				}
				r.progRows.Store(rep.Read)
				r.progBytes.Store(res.in)
				if res.rec != nil {
					if err := emit(gctx, t, res.rec); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		for res := range results {
			if res.rec != nil {
				res.rec.Release()
			}
		}
		return err
	}
	rep.Bytes = tr.count.n
	sum := tr.count.h.Sum128().Bytes()
	rep.XXH3 = hex.EncodeToString(sum[:])
	r.log.Info("table ingested", "table", t.String(), "read", rep.Read, "kept", rep.Kept,
		"quarantined", rep.Quarantined, "opted_out", rep.OptedOut, "excluded", rep.Excluded,
		"seconds", time.Since(start).Seconds())
	return nil
}

// work validates one chunk's rows into a batch and counts their fates.
func (r *run) work(tr *tableReader, rb *rowBuilder, c *chunk) *result {
	res := &result{seq: c.seq, in: c.in}
	if q := c.skipped; q != nil {
		q.Table, q.File = tr.t.String(), tr.file
		res.counts[ReasonRecordTooLong]++
		res.quarantine = append(res.quarantine, *q)
	}
	tr.records(c, func(line, lines int, f [][]byte) {
		reason, col := ReasonMalformedRow, -1
		if f != nil {
			reason, col = rb.add(f)
		}
		res.counts[reason]++
		qi := -1
		if reason.Outcome() == Quarantined {
			qi = len(res.quarantine)
			res.quarantine = append(res.quarantine, quarantineEntry(tr, line, lines, reason, col))
		}
		if rb.noted {
			rb.noted = false
			row := -1
			if reason == ReasonNone {
				row = rb.rows() - 1
			}
			res.patients = append(res.patients, patientNote{nhs: rb.noteNHS, reason: reason, row: row, q: qi, line: line, lines: lines})
		}
	})
	chunkPool.Put(c.buf)
	res.rec = rb.flush()
	return res
}

func quarantineEntry(tr *tableReader, line, lines int, reason Reason, col int) QuarantineEntry {
	q := QuarantineEntry{Table: tr.t.String(), File: tr.file, Line: line, Reason: reason.String(), Field: tr.t.column(col)}
	if lines > 1 {
		q.Lines = lines
	}
	return q
}

// settlePatients takes a patients chunk's rows in file order, after every
// earlier chunk's: a number seen before makes the row a duplicate, whatever
// the worker decided (its kept row leaves the batch); the others fill the
// patient sets.
func (r *run) settlePatients(tr *tableReader, res *result) error {
	st := r.st
	var drop []int
	for _, p := range res.patients {
		if p.reason.Outcome() == OptedOut {
			st.countOptedOutPatient(p.nhs)
			continue
		}
		if !st.seen.Add(p.nhs) {
			res.counts[p.reason]--
			res.counts[ReasonDuplicatePatient]++
			q := quarantineEntry(tr, p.line, p.lines, ReasonDuplicatePatient, 0)
			if p.q >= 0 {
				res.quarantine[p.q] = q
			} else {
				res.quarantine = append(res.quarantine, q)
				drop = append(drop, p.row)
			}
			continue
		}
		if p.reason == ReasonNone {
			st.kept.Add(p.nhs)
		}
	}
	if len(drop) == 0 {
		return nil
	}
	slices.SortStableFunc(res.quarantine, func(a, b QuarantineEntry) int { return a.Line - b.Line })
	rec, err := dropRows(res.rec, drop, r.opts.Allocator)
	if err != nil {
		return err
	}
	res.rec.Release()
	res.rec = rec
	return nil
}

// dropRows returns rec without the given rows (ascending), or nil when
// none is left.
func dropRows(rec arrow.RecordBatch, rows []int, mem memory.Allocator) (arrow.RecordBatch, error) {
	if int64(len(rows)) == rec.NumRows() {
		return nil, nil
	}
	b := array.NewBooleanBuilder(mem)
	defer b.Release()
	for i, k := 0, 0; i < int(rec.NumRows()); i++ {
		keep := k >= len(rows) || rows[k] != i
		if !keep {
			k++
		}
		b.Append(keep)
	}
	mask := b.NewBooleanArray()
	defer mask.Release()
	out, err := compute.FilterRecordBatch(compute.WithAllocator(context.Background(), mem), rec, mask, compute.DefaultFilterOptions())
	if err != nil {
		return nil, fmt.Errorf("drop duplicate patients: %w", err)
	}
	return out, nil
}

func (r *run) startProgress(w io.Writer) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		var table string
		var since time.Time
		for {
			select {
			case <-done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-tick.C:
				name, _ := r.progTable.Load().(string)
				if name != table {
					table, since = name, time.Now()
				}
				fmt.Fprint(w, "\r\033[K"+progressLine(name, r.progRows.Load(), r.progBytes.Load(), r.progSize.Load(), time.Since(since)))
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// progressLine is one table's progress: a bar, the percentage and ETA when
// the file's size is known, and the rates.
func progressLine(table string, rows, read, size int64, elapsed time.Duration) string {
	secs := max(elapsed.Seconds(), 0.001)
	rates := fmt.Sprintf("%8.2f M rows/s %7.1f MB/s", float64(rows)/secs/1e6, float64(read)/secs/1e6)
	if size <= 0 {
		return fmt.Sprintf("ingest: %-20s %12d rows  %8.1f MB read  %s", table, rows, float64(read)/1e6, rates)
	}
	frac := min(float64(read)/float64(size), 1)
	const width = 24
	full := int(frac * width)
	bar := strings.Repeat("=", full) + strings.Repeat(" ", width-full)
	eta := "--:--"
	if read > 0 {
		left := time.Duration(float64(elapsed) * (1 - frac) / max(frac, 1e-9)).Round(time.Second)
		eta = fmt.Sprintf("%d:%02d", int(left.Minutes()), int(left.Seconds())%60)
	}
	return fmt.Sprintf("ingest: %-20s [%s] %3.0f%%  %12d rows  %s  ETA %s", table, bar, 100*frac, rows, rates, eta)
}
