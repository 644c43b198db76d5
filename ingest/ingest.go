// Package ingest reads LHCRE extracts (CSV or FHIR R4 bulk NDJSON, plain or
// gzip-compressed), validates every row, applies the patient opt-out (the
// National Data Opt-out list and type 1 dissent) and streams the surviving
// rows as Arrow record batches, one table after another, with bounded
// memory. Bad rows are quarantined by file, line and reason; nothing
// identifiable is written to disk, logged or reported.
package ingest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
var ErrNoExtract = errors.New("no extract found: expected patients.csv[.gz], or a FHIR bulk export with Patient resources (Patient.ndjson, Patient.000.ndjson, 1.Patient.ndjson, ..., .gz too)")

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
	r := &run{src: src, opts: opts, st: newState(opts.OptOuts), log: opts.Logger.With("component", "ingest"), otherSystems: map[int16]bool{}}
	ef, err := findFiles(ctx, src)
	if err != nil {
		return nil, err
	}
	r.files, r.format = ef, ef.format
	rep := &Report{Format: r.format.String(), Tables: map[string]*TableReport{}, OptOuts: opts.OptOuts.Stats, Manifest: ef.manifest}
	r.rep = rep
	for _, t := range Tables {
		if len(ef.tables[t]) == 0 {
			rep.Absent = append(rep.Absent, t.String())
		}
	}
	if err := r.countNotIngested(ctx); err != nil {
		return nil, err
	}
	if opts.Progress != nil {
		stop := r.startProgress(opts.Progress)
		defer stop()
	}
	if err := r.medicationPass(ctx); err != nil {
		return nil, err
	}
	if err := r.type1Pass(ctx); err != nil {
		return nil, err
	}
	if err := r.patientPrePass(ctx); err != nil {
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
			r.st.followLinks()
			pc := &r.st.counts
			pc.Kept = int64(r.st.kept.Len())
			pc.Quarantined = int64(r.st.seen.Len() - r.st.kept.Len())
			tr := rep.Tables[Patients.String()]
			pc.ExcludedInvalid = tr.Reasons[ReasonMissingNHSNumber.String()] + tr.Reasons[ReasonInvalidNHSNumber.String()]
			rep.Patients = *pc
		}
	}
	if f, ok := src.(Finisher); ok {
		if err := f.Finish(ctx); err != nil {
			return nil, err
		}
	}
	vals := r.st.codeSystems.Values()
	for i := range vals {
		if r.otherSystems[int16(i)] {
			rep.CodeSystems = append(rep.CodeSystems, vals[i])
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
	files  *extractFiles
	// otherSystems are the code systems met that the hub does not know
	// (indices in the run's vocabulary); written by the
	// ordered emitters.
	otherSystems map[int16]bool

	progTable atomic.Value // string
	progRows  atomic.Int64
	progBytes atomic.Int64
	progSize  atomic.Int64 // the current table's size, 0 if unknown
}

// countNotIngested counts the resources of the FHIR types the hub does
// not read, so that the report lists them.
func (r *run) countNotIngested(ctx context.Context) error {
	r.rep.OtherFiles = r.files.otherFiles
	if len(r.files.notIngested) == 0 {
		return nil
	}
	r.rep.NotIngested = map[string]int64{}
	for typ, names := range r.files.notIngested {
		for _, name := range names {
			if typ == "OperationOutcome" {
				if err := r.exportErrors(ctx, name); err != nil {
					return err
				}
			}
			n, err := countResources(ctx, r.src, name)
			if err != nil {
				return err
			}
			r.rep.NotIngested[typ] += n
		}
	}
	return nil
}

// exportErrors counts the issues of an export's error file (the
// OperationOutcomes a server lists under the manifest's error) by issue
// code. Their diagnostics may name records, so only the codes are kept.
func (r *run) exportErrors(ctx context.Context, name string) error {
	rc, err := r.src.Open(ctx, name)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	defer rc.Close()
	stream, _, err := openStream(rc, strings.HasSuffix(name, ".gz"), false)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	br := bufio.NewReaderSize(stream, 1<<20)
	for {
		line, err := readLine(br, MaxRecord)
		if err == io.EOF {
			return nil
		}
		if err != nil && err != errLineTooLong {
			return fmt.Errorf("read %s: %w", name, err)
		}
		var oo struct {
			Issue []struct {
				Code string `json:"code"`
			} `json:"issue"`
		}
		if r.rep.ExportErrors == nil {
			r.rep.ExportErrors = map[string]int64{}
		}
		if err != nil || json.Unmarshal(line, &oo) != nil || len(oo.Issue) == 0 {
			if len(bytes.TrimSpace(line)) > 0 || err != nil {
				r.rep.ExportErrors["unreadable"]++
			}
			continue
		}
		for _, is := range oo.Issue {
			code := is.Code
			if code == "" || len(code) > 40 {
				code = "unknown"
			}
			r.rep.ExportErrors[code]++
		}
	}
}

// medicationPass reads the export's Medication resources, so that a
// MedicationRequest's medicationReference finds its code. They are few
// (one per product), and hold nothing identifiable.
func (r *run) medicationPass(ctx context.Context) error {
	for _, name := range r.files.medications {
		tr, err := r.open(ctx, Medications, tableFile{name: name, resource: "Medication"}, false)
		if err != nil {
			return err
		}
		for {
			c, err := tr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				tr.rc.Close()
				return fmt.Errorf("read %s: %w", name, err)
			}
			dec := newFHIRDecoder(r.st, Medications)
			for line := range bytes.Lines(c.data) {
				if !dec.scan(bytes.TrimSpace(line)) || string(dec.r.typ) != "Medication" || len(dec.r.id) == 0 || len(dec.r.code) == 0 {
					continue
				}
				r.st.medications[string(dec.r.id)] = coding{string(dec.r.sys), string(dec.r.code)}
			}
			chunkPool.Put(c.buf)
		}
		tr.rc.Close()
		r.rep.NotIngested = addCount(r.rep.NotIngested, "Medication (read for medicationReference)", int64(len(r.st.medications)))
	}
	return nil
}

func addCount(m map[string]int64, k string, n int64) map[string]int64 {
	if m == nil {
		m = map[string]int64{}
	}
	m[k] = n
	return m
}

// tableReader yields the chunks of one file of a table, header parsed.
type tableReader struct {
	t        Table
	file     string
	resource string // the file's FHIR resource type
	rc       io.ReadCloser
	count    *countingReader
	ch       *chunker
	header   *csvHeader
	first    *chunk
}

func (r *run) open(ctx context.Context, t Table, f tableFile, hashed bool) (*tableReader, error) {
	name := f.name
	rc, err := r.src.Open(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	stream, count, err := openStream(rc, filepath.Ext(name) == ".gz", hashed)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	tr := &tableReader{t: t, file: name, resource: f.resource, rc: rc, count: count, ch: newChunker(stream, count, r.format == CSV)}
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

// records calls fn for each row of c with its first line, the lines it
// spans, its fields in contract order (nil when the record is malformed)
// and, in a FHIR export, the key of the Patient it names by reference (a
// Patient's own id). A FHIR line of another resource type is malformed;
// a resource that gives no row (an EpisodeOfCare that is not a GP
// registration) is passed with other set. The slices are reused between
// calls. resources, when set, counts the lines of each resource type.
func (tr *tableReader) records(c *chunk, dec *fhirDecoder, resources *[2]int64, fn func(line, lines int, f [][]byte, ref []byte, other bool)) {
	data, line := c.data, c.line
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
				typ, ok := dec.decode(tr.t, l, func(f [][]byte, ref []byte) {
					fn(line, 1, f, ref, false)
				})
				k := slices.Index(fhirTypes[tr.t], typ)
				switch {
				case ok:
					if resources != nil {
						resources[k]++
					}
				case k >= 0:
					if resources != nil {
						resources[k]++
					}
					fn(line, 1, nil, nil, true)
				default:
					fn(line, 1, nil, nil, false)
				}
			}
			line++
		}
		return
	}
	proj := make([][]byte, len(columns[tr.t]))
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
			fn(start, max(lines, 1), nil, nil, false)
			continue
		}
		tr.header.project(fields, proj)
		fn(start, max(lines, 1), proj, nil, false)
	}
}

// chunks sends the chunks of every file of table t down out, numbered in
// one sequence across the files, each taking a token first; done records
// each file's report when it has been read whole.
func (r *run) chunks(ctx context.Context, t Table, hashed bool, tokens chan struct{}, out chan<- *chunk, done func(*tableReader)) error {
	defer close(out)
	seq := 0
	var base int64 // bytes of the files already read, for progress
	for _, f := range r.files.tables[t] {
		tr, err := r.open(ctx, t, f, hashed)
		if err != nil {
			return err
		}
		err = func() error {
			defer tr.rc.Close()
			for {
				if tokens != nil {
					select {
					case tokens <- struct{}{}:
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				c, err := tr.next()
				if err == io.EOF {
					if tokens != nil {
						<-tokens
					}
					return nil
				}
				if err != nil {
					return fmt.Errorf("read %s: %w", tr.file, err)
				}
				c.seq, c.tr, c.in = seq, tr, base+c.in
				seq++
				select {
				case out <- c:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}()
		if err != nil {
			return err
		}
		base += tr.count.n
		if done != nil {
			done(tr)
		}
	}
	return nil
}

// type1Pass gathers the type 1 dissent entries of the observations table
// before any table is read, so that a patient's objection applies to every
// table. Only records that contain one of the two codes are parsed.
func (r *run) type1Pass(ctx context.Context) error {
	if len(r.files.tables[Observations]) == 0 {
		return nil
	}
	r.progTable.Store("type 1 dissent scan")
	chunks := make(chan *chunk, r.opts.Workers)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.chunks(gctx, Observations, false, nil, chunks, nil) })
	for range r.opts.Workers {
		g.Go(func() error {
			dec := newFHIRDecoder(r.st, Observations)
			for c := range chunks {
				r.type1Chunk(c.tr, dec, c)
				r.progBytes.Store(c.in)
				chunkPool.Put(c.buf)
			}
			return nil
		})
	}
	return g.Wait()
}

// patientPrePass reads what of the Patient files must be known before
// any table is: the NHS numbers of the Patients that type 1 entries named
// by reference, so that every table decides them by number (a second
// Patient resource with the same number and another id is opted out too,
// whichever comes first); and the links between Patients (replaced-by,
// replaces), so that a replaced Patient is not published, its events
// are its successor's, and an opt-out of either is an opt-out of both.
// It decodes only the lines that can matter: none, in an export without
// such entries and links.
func (r *run) patientPrePass(ctx context.Context) error {
	if r.format != FHIR {
		return nil
	}
	needType1 := len(r.st.type1Ref) > 0
	r.progTable.Store("patients: type 1 dissent and links")
	type numbered struct {
		k refKey
		n uint64
	}
	var (
		mu    sync.Mutex
		found []numbered
		links []patientLink
		nums  = map[refKey]uint64{} // link ends' numbers
	)
	hasLinks := func(b []byte) bool {
		return bytes.Contains(b, []byte(`"replaced-by"`)) || bytes.Contains(b, []byte(`"replaces"`))
	}
	err := r.eachPatientLine(ctx, func(c *chunk) bool {
		return needType1 || hasLinks(c.data)
	}, func(line []byte) bool {
		return hasLinks(line) || (needType1 && r.st.mayName(line))
	}, func(dec *fhirDecoder) {
		k := keyOf(dec.r.id)
		n, err := ParseNHSNumber(dec.r.nhs)
		_, t1 := r.st.type1Ref[k]
		if !t1 && len(dec.r.links) == 0 {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if t1 && err == nil {
			found = append(found, numbered{k, n})
		}
		for _, l := range dec.r.links {
			links = append(links, patientLink{k, keyOf(l.other), l.replacedBy})
		}
	})
	if err != nil {
		return err
	}
	for _, f := range found {
		e := r.st.type1Ref[f.k]
		r.st.mergeType1(f.n, type1Entry{date: e.date, dissent: e.dissent})
		e.merged = true
		r.st.type1Ref[f.k] = e
	}
	if len(links) == 0 {
		return nil
	}
	// The numbers of every Patient a link names.
	ends := map[refKey]bool{}
	for _, l := range links {
		ends[l.from], ends[l.to] = true, true
	}
	err = r.eachPatientLine(ctx, func(*chunk) bool { return true }, func([]byte) bool { return true }, func(dec *fhirDecoder) {
		k := keyOf(dec.r.id)
		if !ends[k] {
			return
		}
		if n, err := ParseNHSNumber(dec.r.nhs); err == nil {
			mu.Lock()
			nums[k] = n
			mu.Unlock()
		}
	})
	if err != nil {
		return err
	}
	r.st.linkPatients(links, nums)
	return nil
}

// eachPatientLine decodes, on every worker, the Patient lines of the
// chunks that want says to read that wantLine says to, and calls fn with
// each.
func (r *run) eachPatientLine(ctx context.Context, want func(*chunk) bool, wantLine func([]byte) bool, fn func(*fhirDecoder)) error {
	chunks := make(chan *chunk, r.opts.Workers)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.chunks(gctx, Patients, false, nil, chunks, nil) })
	for range r.opts.Workers {
		g.Go(func() error {
			dec := newFHIRDecoder(r.st, Patients)
			for c := range chunks {
				if want(c) {
					for line := range bytes.Lines(c.data) {
						if wantLine(line) && dec.scan(bytes.TrimSpace(line)) && string(dec.r.typ) == "Patient" && len(dec.r.id) > 0 {
							fn(dec)
						}
					}
				}
				chunkPool.Put(c.buf)
			}
			return nil
		})
	}
	return g.Wait()
}

func (r *run) type1Chunk(tr *tableReader, dec *fhirDecoder, c *chunk) {
	if (c.unquoted && tr.header != nil) || tr.header == nil {
		// Every record is one line (NDJSON's always are): parse only the
		// lines holding a code, not the whole chunk, though most chunks
		// hold one (the pass took 0.35 CPU-s on the benchmark extract,
		// now 0.2; on the FHIR export, decoding every line of the
		// observations was 2 CPU-s).
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
			r.type1Records(tr, dec, &chunk{data: data[start:end]})
			pos = end
		}
	}
	if bytes.Contains(c.data, []byte(CodeType1Dissent)) || bytes.Contains(c.data, []byte(CodeType1Withdrawn)) {
		r.type1Records(tr, dec, c) // record by record: a line may lie inside a quoted field
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

// type1Records notes the type 1 dissent entries among c's records: by NHS
// number, or in a FHIR export by the Patient the entry names.
func (r *run) type1Records(tr *tableReader, dec *fhirDecoder, c *chunk) {
	tr.records(c, dec, nil, func(_, _ int, f [][]byte, ref []byte, _ bool) {
		if f == nil {
			return
		}
		code := trimSpace(f[2])
		dissent := string(code) == CodeType1Dissent
		if !dissent && string(code) != CodeType1Withdrawn {
			return
		}
		d, ok := parseDate(f[5])
		if n, err := ParseNHSNumber(f[0]); err == nil {
			r.st.noteType1(n, dissent, d, ok)
		} else if ref != nil {
			r.st.noteType1Ref(keyOf(ref), dissent, d, ok)
		}
	})
}

// result is what a worker makes of one chunk.
type result struct {
	seq          int
	rec          arrow.RecordBatch
	counts       [numReasons]int64
	nulled       [numReasons]int64
	other        int64
	otherSystems map[int16]bool
	verified     map[string]int64
	resources    [2]int64 // FHIR resources read, by their place in the table's types
	quarantine   []QuarantineEntry
	in           int64
	file         string
	patients     []patientNote // patients table: every row
}

// A patientNote is a patients-table row, as a worker decided it without
// knowing the rows of other chunks.
type patientNote struct {
	nhs    uint64
	ok     bool // nhs is a valid number
	ref    refKey
	hasRef bool
	reason Reason
	row    int // the row in the batch when kept, else -1
	q      int // its quarantine entry when quarantined, else -1
	line   int
	lines  int
}

// maxSamples is how many quarantine entries per table the report keeps.
const maxSamples = 20

func (r *run) table(ctx context.Context, t Table, workers int, emit Emit) error {
	rep := &TableReport{Reasons: map[string]int64{}}
	r.rep.Tables[t.String()] = rep
	r.progRows.Store(0)
	r.progBytes.Store(0)
	var size int64
	if sz, ok := r.src.(Sizer); ok {
		for _, f := range r.files.tables[t] {
			if strings.HasSuffix(f.name, ".gz") {
				size = 0
				break
			}
			n, _ := sz.Size(ctx, f.name)
			size += n
		}
	}
	r.progSize.Store(size)
	r.progTable.Store(t.String())
	start := time.Now()

	// tokens bound the chunks in flight, queued or awaiting their turn.
	tokens := make(chan struct{}, 2*workers+2)
	chunks := make(chan *chunk, workers)
	results := make(chan *result, workers)
	g, gctx := errgroup.WithContext(ctx)
	var files []FileReport // written by the reader goroutine until g.Wait
	g.Go(func() error {
		return r.chunks(gctx, t, true, tokens, chunks, func(tr *tableReader) {
			sum := tr.count.h.Sum128().Bytes()
			files = append(files, FileReport{Name: tr.file, Bytes: tr.count.n, XXH3: hex.EncodeToString(sum[:])})
		})
	})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		g.Go(func() error {
			defer wg.Done()
			rb := newRowBuilder(t, r.st)
			dec := newFHIRDecoder(r.st, t)
			for c := range chunks {
				res := r.work(rb, dec, c)
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
					if err := r.settlePatients(res); err != nil {
						return err
					}
				}
				for reason, n := range res.counts {
					if n > 0 {
						rep.Add(Reason(reason), n)
					}
				}
				for reason, n := range res.nulled {
					if n > 0 {
						if rep.Nulled == nil {
							rep.Nulled = map[string]int64{}
						}
						rep.Nulled[Reason(reason).String()] += n
					}
				}
				rep.OtherCodeSystems += res.other
				for code, n := range res.verified {
					if rep.NHSVerification == nil {
						rep.NHSVerification = map[string]int64{}
					}
					rep.NHSVerification[code] += n
				}
				for i := range res.otherSystems {
					r.otherSystems[i] = true
				}
				for k, n := range res.resources {
					if n > 0 {
						if rep.Resources == nil {
							rep.Resources = map[string]int64{}
						}
						rep.Resources[fhirTypes[t][k]] += n
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
	rep.Files = files
	r.log.Info("table ingested", "table", t.String(), "files", len(files), "read", rep.Read, "kept", rep.Kept,
		"quarantined", rep.Quarantined, "opted_out", rep.OptedOut, "excluded", rep.Excluded,
		"seconds", time.Since(start).Seconds())
	return nil
}

// work validates one chunk's rows into a batch and counts their fates.
func (r *run) work(rb *rowBuilder, dec *fhirDecoder, c *chunk) *result {
	tr := c.tr
	res := &result{seq: c.seq, in: c.in, file: tr.file}
	var resources *[2]int64
	if tr.header == nil {
		resources = &res.resources
	}
	if q := c.skipped; q != nil {
		q.Table, q.File = tr.t.String(), tr.file
		res.counts[ReasonRecordTooLong]++
		res.quarantine = append(res.quarantine, *q)
	}
	var nhs []byte // a referenced patient's number, written for the row
	// Events come grouped by patient: the same reference as the row
	// before needs no look-up (a random read of a map the size of the
	// patients table).
	var lastRef []byte // copied: the line it came from is gone by the next row of another chunk
	var lastN uint64
	var lastFate Reason
	haveLast := false
	tr.records(c, dec, resources, func(line, lines int, f [][]byte, ref []byte, other bool) {
		reason, col := ReasonMalformedRow, -1
		if other {
			reason = ReasonNotRegistration
		}
		if f != nil {
			fate := ReasonNone
			var own *refKey // a Patient's own id
			if tr.t == Patients {
				if ref != nil {
					k := keyOf(ref)
					own = &k
				}
			} else if ref != nil && len(f[nhsColumn[tr.t]]) == 0 {
				if !haveLast || string(ref) != string(lastRef) {
					lastN, lastFate = r.st.resolve(keyOf(ref), &rb.nextRef)
					lastRef, haveLast = append(lastRef[:0], ref...), true
					if lastFate == ReasonNone {
						nhs = appendNHS(nhs, lastN)
					}
				}
				if fate = lastFate; fate == ReasonNone {
					f[nhsColumn[tr.t]] = nhs
				}
			}
			reason, col = rb.add(f, fate, own)
		}
		res.counts[reason]++
		qi := -1
		if reason.Outcome() == Quarantined {
			qi = len(res.quarantine)
			res.quarantine = append(res.quarantine, quarantineEntry(tr, line, lines, reason, col))
		}
		if reason == ReasonNone {
			for _, nf := range rb.nulled {
				res.nulled[nf.reason]++
				q := quarantineEntry(tr, line, lines, nf.reason, nf.col)
				q.Nulled = true
				res.quarantine = append(res.quarantine, q)
			}
		}
		if rb.noted {
			rb.noted = false
			row := -1
			if reason == ReasonNone {
				row = rb.rows() - 1
			}
			res.patients = append(res.patients, patientNote{nhs: rb.noteNHS, ok: rb.noteOK, ref: rb.noteRef, hasRef: rb.hasRef,
				reason: reason, row: row, q: qi, line: line, lines: lines})
		}
	})
	chunkPool.Put(c.buf)
	res.other, rb.other = rb.other, 0
	res.otherSystems, rb.otherSystems = rb.otherSystems, nil
	res.verified, dec.verified = dec.verified, nil
	res.rec = rb.flush(r.opts.Allocator)
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
// patient sets. A FHIR Patient's id is kept with its fate, for the events
// that name it by reference.
func (r *run) settlePatients(res *result) error {
	st := r.st
	var drop []int
	for _, p := range res.patients {
		if p.hasRef {
			st.noteRef(p)
		}
		if !p.ok || p.reason == ReasonReplacedPatient {
			continue // a replaced Patient's number is its successor's
		}
		if p.reason.Outcome() == OptedOut {
			st.countOptedOutPatient(p.nhs)
			continue
		}
		if !st.seen.Add(p.nhs) {
			res.counts[p.reason]--
			res.counts[ReasonDuplicatePatient]++
			q := QuarantineEntry{Table: Patients.String(), File: res.file, Line: p.line, Reason: ReasonDuplicatePatient.String(), Field: "nhs_number"}
			if p.lines > 1 {
				q.Lines = p.lines
			}
			if p.q >= 0 {
				res.quarantine[p.q] = q
			} else {
				// A kept row's nulled-field entries go with it.
				res.quarantine = slices.DeleteFunc(res.quarantine, func(e QuarantineEntry) bool {
					if e.Nulled && e.Line == p.line {
						res.nulled[reasonNamed(e.Reason)]--
						return true
					}
					return false
				})
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
