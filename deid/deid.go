package deid

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
	"golang.org/x/sync/errgroup"
)

// Report says what de-identification did; it holds counts and hashes only.
type Report struct {
	Domain         string           `json:"domain"`
	KeyFingerprint string           `json:"key_fingerprint"`
	PolicyHash     string           `json:"policy_hash"`
	Policy         Policy           `json:"policy"`
	Rows           map[string]int64 `json:"rows"`
	KAnonymity     KAnonymity       `json:"k_anonymity"`
	// RareCodes says, per coded table, what the rare-code check did (none
	// with the policy's rare_codes "keep").
	RareCodes map[string]*RareCodeReport `json:"rare_codes,omitempty"`
	// EventsFrom and EventsTo span the published event dates.
	EventsFrom string `json:"events_from,omitempty"`
	EventsTo   string `json:"events_to,omitempty"`
}

// A Deidentifier consumes ingest's batches (its Emit method is an
// [ingest.Emit]) and writes de-identified Parquet parts to a Sink.
// Patients are held, without identifiers, until the k-anonymity check has
// seen them all. Event batches go round-robin to workers, each with its
// own HMAC and its own Parquet parts, so the output is the same for the
// same input whatever the timing.
type Deidentifier struct {
	policy  Policy
	key     *Key
	sink    Sink
	log     *slog.Logger
	ctx     context.Context
	mem     memory.Allocator
	schemas map[ingest.Table]*arrow.Schema

	tr       *transformer // for patients, on the caller's goroutine
	patients []patientRow // gathered from the workers' parts
	names    *names       // of the patients' places and practices
	pseq     int          // patients batches dealt to the workers
	kanon    KAnonymity
	flushed  bool
	rows     map[ingest.Table]int64

	workers []*worker
	cur     ingest.Table
	// rareMap is the current table's rare codes' published codes, set
	// after every worker has counted the table (see rare.go); rareRep,
	// what the check did to each table.
	rareMap map[string]map[string]string
	rareRep map[string]*RareCodeReport
	active  bool
	seq     int

	mu  sync.Mutex
	err error
}

type job struct {
	rec      arrow.RecordBatch
	patients bool            // rec is a patients batch, to hold as rows
	close    chan<- struct{} // a barrier: close the table's writer, then signal
	sync     chan<- struct{} // a barrier: signal, having done every job before
}

type worker struct {
	d   *Deidentifier
	id  int
	tr  *transformer
	w   *tableWriter
	in  chan job
	wg  sync.WaitGroup
	cur ingest.Table

	// The patients batches this worker was dealt, in order, as rows whose
	// places are numbers of its own names table.
	parts []patientPart
	names *names
	// rare counts the current table's codes (nil for a table without
	// codes, or with rare_codes "keep").
	rare *rareState
}

// New returns a Deidentifier writing to sink. ctx bounds its writes.
func New(ctx context.Context, policy Policy, key *Key, sink Sink, mem memory.Allocator, logger *slog.Logger) (*Deidentifier, error) {
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if key == nil {
		return nil, fmt.Errorf("no pseudonymisation key")
	}
	if mem == nil {
		mem = memory.DefaultAllocator
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Deidentifier{policy: policy, key: key, sink: sink, ctx: ctx, mem: mem, log: logger.With("component", "deid"),
		names: newNames(), rows: map[ingest.Table]int64{}, schemas: Schemas(policy), rareRep: map[string]*RareCodeReport{}}
	d.tr = d.newTransformer()
	d.tr.known = &knownPatients{}
	n := runtime.GOMAXPROCS(0)
	for i := 0; i < n; i++ {
		w := &worker{d: d, id: i, tr: d.newTransformer(), in: make(chan job, 2)}
		w.wg.Add(1)
		go w.run()
		d.workers = append(d.workers, w)
	}
	return d, nil
}

func (d *Deidentifier) newTransformer() *transformer {
	return &transformer{policy: d.policy, ps: NewPseudonymiser(d.key, d.policy.Domain, d.policy.PseudonymBytes), schemas: d.schemas, mem: d.mem}
}

// tableWriter returns a writer of t's parts first, first+stride, ...
func (d *Deidentifier) tableWriter(t ingest.Table, first, stride int) *tableWriter {
	return newTableWriter(d.ctx, d.sink, d.mem, t.String(), d.schemas[t], first, stride)
}

func (d *Deidentifier) fail(err error) {
	d.mu.Lock()
	if d.err == nil {
		d.err = err
	}
	d.mu.Unlock()
}

func (d *Deidentifier) failed() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (w *worker) run() {
	defer w.wg.Done()
	for j := range w.in {
		if j.sync != nil {
			j.sync <- struct{}{}
			continue
		}
		if j.close != nil {
			if w.rare != nil {
				w.writeHeld()
			}
			switch {
			case w.w == nil:
			case w.d.failed() != nil:
				w.w.abort() // a failed run commits no more parts
			default:
				if err := w.w.close(false); err != nil {
					w.d.fail(err)
				}
				w.d.mu.Lock()
				w.d.rows[w.cur] += w.w.rows
				w.d.mu.Unlock()
			}
			w.w = nil
			j.close <- struct{}{}
			continue
		}
		if w.d.failed() != nil {
			j.rec.Release()
			continue
		}
		if j.patients {
			if w.names == nil {
				w.names = newNames()
			}
			w.parts = append(w.parts, w.tr.patientPart(j.rec, w.names))
			j.rec.Release()
			continue
		}
		out := w.tr.event(w.cur, j.rec)
		recs := []arrow.RecordBatch{out}
		if w.rare != nil {
			var err error
			recs, err = w.rare.split(j.rec, out)
			out.Release()
			if err != nil {
				w.d.fail(err)
			}
		}
		j.rec.Release()
		w.write(recs)
	}
}

// write writes recs to the current table's parts and releases them.
func (w *worker) write(recs []arrow.RecordBatch) {
	for _, r := range recs {
		if w.w == nil {
			n := len(w.d.workers)
			w.w = w.d.tableWriter(w.cur, w.id, n)
		}
		if w.d.failed() == nil {
			if err := w.w.write(r); err != nil {
				w.d.fail(err)
			}
		}
		r.Release()
	}
}

// writeHeld writes the rows the rare-code check held, their codes as the
// table's mapping says (none after a failure: they are released).
func (w *worker) writeHeld() {
	recs, changed := w.rare.publishHeld(w.d.rareMap)
	w.rare = nil
	w.write(recs)
	w.d.mu.Lock()
	if rep := w.d.rareRep[w.cur.String()]; rep != nil {
		rep.Rows += changed
	}
	w.d.mu.Unlock()
}

// Emit takes one identifiable batch from ingest and releases it.
func (d *Deidentifier) Emit(_ context.Context, t ingest.Table, rec arrow.RecordBatch) error {
	if err := d.failed(); err != nil {
		rec.Release()
		return err
	}
	if t == ingest.Patients {
		// Dealt round-robin like the events: turning them into rows (an
		// HMAC each) on the ingest's ordered emitter left a core idle at
		// the end of the table (0.2 s).
		w := d.workers[d.pseq%len(d.workers)]
		d.pseq++
		select {
		case w.in <- job{rec: rec, patients: true}:
		case <-d.ctx.Done():
			rec.Release()
			return d.ctx.Err()
		}
		return d.failed()
	}
	if err := d.flushPatients(); err != nil {
		rec.Release()
		return err
	}
	if !d.active || t != d.cur {
		d.finishTable()
		d.cur, d.active, d.seq = t, true, 0
		for _, w := range d.workers {
			w.cur = t
			if codedTables[t] && d.policy.RareCodes != RareKeep {
				w.rare = newRareState(d.policy.K)
			}
		}
	}
	w := d.workers[d.seq%len(d.workers)]
	d.seq++
	select {
	case w.in <- job{rec: rec}:
	case <-d.ctx.Done():
		rec.Release()
		return d.ctx.Err()
	}
	return d.failed()
}

// finishTable waits until every worker has closed the current table's
// parts, freeing their buffered row groups before the next table.
func (d *Deidentifier) finishTable() {
	if !d.active {
		return
	}
	if d.workers[0].rare != nil {
		// Every worker has counted the table: decide its rare codes,
		// which the workers' held rows are written with as they close.
		d.barrier(false)
		states := make([]*rareState, len(d.workers))
		for i, w := range d.workers {
			states[i] = w.rare
		}
		m, rep := rareMapping(states, d.policy.K)
		d.mu.Lock()
		d.rareMap, d.rareRep[d.cur.String()] = m, &rep
		d.mu.Unlock()
	}
	d.barrier(true)
	d.active = false
}

// barrier waits until every worker has done the jobs sent it so far,
// closing the current table's writer if it has one.
func (d *Deidentifier) barrier(close bool) {
	done := make(chan struct{}, len(d.workers))
	for _, w := range d.workers {
		if close {
			w.in <- job{close: done}
		} else {
			w.in <- job{sync: done}
		}
	}
	for range d.workers {
		<-done
	}
}

// gatherPatients waits for the workers' patient rows and joins them in the
// order ingest emitted them: one names table for their places, and the
// known patients in file order.
func (d *Deidentifier) gatherPatients() {
	d.barrier(true)
	total := 0
	remap := make([][]uint32, len(d.workers))
	for i, w := range d.workers {
		for _, p := range w.parts {
			total += len(p.rows)
		}
		if w.names != nil {
			remap[i] = make([]uint32, len(w.names.list))
			for j, s := range w.names.list {
				remap[i][j] = d.names.id(s)
			}
		}
	}
	n := d.policy.PseudonymBytes
	d.patients = make([]patientRow, 0, total)
	k := d.tr.known
	k.nhs, k.pids = make([]uint64, 0, total), make([]byte, 0, total*n)
	for seq := 0; ; seq++ {
		wi := seq % len(d.workers)
		w := d.workers[wi]
		if seq/len(d.workers) >= len(w.parts) {
			break // dealt round-robin: the first missing part is the end
		}
		p := w.parts[seq/len(d.workers)]
		for i := range p.rows {
			r := &p.rows[i]
			r.district, r.area, r.gp = remap[wi][r.district], remap[wi][r.area], remap[wi][r.gp]
		}
		d.patients = append(d.patients, p.rows...)
		k.add(p.nhs, p.pids)
	}
	for _, w := range d.workers {
		w.parts, w.names = nil, nil
	}
}

// flushPatients gathers the patients, runs the k-anonymity check and
// writes the patients table, before any event: the events wait on it.
// (Run beside the events, the check and the table's writers saved 0.2-0.4
// s of a million patients' 6 s publish but raised its peak RSS by 170 MB,
// 27%, growing with the patients: memory is what a region runs short of.)
func (d *Deidentifier) flushPatients() error {
	if d.flushed {
		return nil
	}
	d.flushed = true
	d.gatherPatients()
	if err := d.failed(); err != nil {
		return err // a worker dropped batches: the rows are not all there
	}
	if err := d.writePatients(); err != nil {
		return err
	}
	for _, w := range d.workers {
		w.tr.known = d.tr.known // read only from now on; the events come after this
	}
	return nil
}

// writePatients runs the k-anonymity check and writes the patients table.
func (d *Deidentifier) writePatients() error {
	path := newPath(d.policy)
	d.kanon = kanonymise(d.patients, path, d.policy.K)
	k := d.tr.known
	if d.policy.KeepGPPractice {
		// A registration's practice is the patient's practice: where
		// the check withheld one, the registrations withhold it too.
		k.noPractice = make([]bool, len(d.patients))
		for i := range d.patients {
			k.noPractice[i] = path.levels[d.patients[i].level][qiPractice] != 0
		}
	}
	d.log.Info("k-anonymity", "k", d.policy.K, "patients", d.kanon.Patients, "generalised", d.kanon.Generalised, "suppressed", d.kanon.Suppressed)
	// The patients are written in contiguous shares, one per worker (a
	// part each), at once: nothing else runs meanwhile, so one writer
	// would leave a core idle. Shares are at least 512 patients; fewer
	// make tiny parts for no gain.
	const batch = 64 * 1024
	parts := min(len(d.workers), max(1, len(d.patients)/512))
	n := d.policy.PseudonymBytes
	writers := make([]*tableWriter, parts)
	var g errgroup.Group
	for i := range writers {
		w := d.tableWriter(ingest.Patients, i, parts)
		writers[i] = w
		first := len(d.patients) * i / parts
		share := d.patients[first : len(d.patients)*(i+1)/parts]
		g.Go(func() error {
			for from := 0; from < len(share); from += batch {
				to := min(from+batch, len(share))
				rec := d.tr.patientBatch(share[from:to], path, k.pids[(first+from)*n:(first+to)*n], d.names)
				err := w.write(rec)
				rec.Release()
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := g.Wait()
	for _, w := range writers {
		if err != nil {
			w.abort()
			continue
		}
		if err = w.close(true); err != nil {
			w.abort()
			continue
		}
		d.rows[ingest.Patients] += w.rows
	}
	if err != nil {
		return err
	}
	d.patients, d.names = nil, nil
	return nil
}

// Close finishes every table and returns the report. Publishing (the
// manifest) is the caller's next step.
func (d *Deidentifier) Close() (*Report, error) {
	err := d.flushPatients()
	d.finishTable()
	d.stop()
	if err != nil {
		return nil, err
	}
	if err := d.failed(); err != nil {
		return nil, err
	}
	rep := &Report{Domain: d.policy.Domain, KeyFingerprint: d.key.Fingerprint(), PolicyHash: d.policy.Hash(),
		Policy: d.policy, Rows: map[string]int64{}, KAnonymity: d.kanon}
	if len(d.rareRep) > 0 {
		rep.RareCodes = d.rareRep
	}
	for _, t := range ingest.Tables {
		if t != ingest.Patients && d.rows[t] == 0 {
			// No rows: one empty part publishes the table's schema (the
			// patients table always has its part from flushPatients).
			w := d.tableWriter(t, 0, 1)
			if err := w.close(true); err != nil {
				return nil, err
			}
		}
		rep.Rows[t.String()] = d.rows[t]
	}
	// d.tr sees no event dates itself; it gathers the workers' spans.
	for _, w := range d.workers {
		if w.tr.dated {
			d.tr.seen(w.tr.minDate)
			d.tr.seen(w.tr.maxDate)
		}
	}
	if d.tr.dated {
		rep.EventsFrom, rep.EventsTo = d.tr.minDate.FormattedString(), d.tr.maxDate.FormattedString()
	}
	return rep, nil
}

// Abort stops the workers and closes any open part without finishing the
// dataset; nothing is committed.
func (d *Deidentifier) Abort() {
	d.fail(fmt.Errorf("aborted"))
	d.finishTable()
	d.stop()
}

func (d *Deidentifier) stop() {
	for _, w := range d.workers {
		if w.in != nil {
			close(w.in)
			w.wg.Wait()
			w.in = nil
		}
	}
}

// Schemas returns the published schemas of this Deidentifier's policy.
func (d *Deidentifier) Schemas() map[ingest.Table]*arrow.Schema { return d.schemas }
