package deid

import (
	"slices"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/bitutil"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// transformer turns identifiable event batches into published ones. It
// is used from one goroutine.
type transformer struct {
	policy  Policy
	ps      *Pseudonymiser
	schemas map[ingest.Table]*arrow.Schema
	batch   map[ingest.Table]*arrow.Schema // schemas of the event batches
	mem     memory.Allocator

	lastNHS  uint64 // cache: events come grouped by patient
	lastPID  [32]byte
	lastSh   int32
	haveLast bool // 0000000000 is a valid NHS number, so 0 is a number

	known *knownPatients // set once the patients are all in
	hits  int            // pseudonyms found in known (for tests)

	// minDate and maxDate span the published event dates.
	minDate, maxDate arrow.Date32
	dated            bool
}

func (t *transformer) seen(d arrow.Date32) {
	if !t.dated || d < t.minDate {
		t.minDate = d
	}
	if !t.dated || d > t.maxDate {
		t.maxDate = d
	}
	t.dated = true
}

// knownPatients are the patients table's kept patients in the order they
// came, with their pseudonyms: an event row names its patient's place
// here (ingest's patient_place column), so it needs no HMAC. Each
// patient's events are in four tables, so this saves four pseudonyms in
// five (0.5 CPU-s for a million patients). The NHS numbers check each
// place, so a wrong one costs an HMAC, never a wrong pseudonym; they are
// held in memory for the run only, as ingest's patient sets are, and
// nothing of it is written.
type knownPatients struct {
	nhs  []uint64
	pids []byte // PseudonymBytes each
	// noPractice says which patients' practice the k-anonymity check
	// withheld (nil when practices are not published).
	noPractice []bool
}

// add appends patients and their pseudonyms (PseudonymBytes each).
func (k *knownPatients) add(nhs []uint64, pids []byte) {
	k.nhs = append(k.nhs, nhs...)
	k.pids = append(k.pids, pids...)
}

// patient returns the pseudonym of the patient nhs, whose place among the
// known patients is place (or any wrong number); the slice is reused.
func (t *transformer) patient(nhs uint64, place int) []byte {
	n := t.policy.PseudonymBytes
	if !t.haveLast || nhs != t.lastNHS {
		if k := t.known; k != nil && place >= 0 && place < len(k.nhs) && k.nhs[place] == nhs {
			copy(t.lastPID[:n], k.pids[place*n:(place+1)*n])
			t.hits++
		} else {
			copy(t.lastPID[:n], t.ps.Patient(nhs))
		}
		if t.policy.EventDates == DatesShift {
			t.lastSh = t.ps.Shift(nhs, t.policy.ShiftDays)
		}
		t.lastNHS, t.haveLast = nhs, true
	}
	return t.lastPID[:n]
}

// date applies the policy to an event date of the current patient.
func (t *transformer) date(d arrow.Date32) arrow.Date32 {
	switch t.policy.EventDates {
	case DatesMonth:
		return firstOfMonth(d)
	case DatesShift:
		return d + arrow.Date32(t.lastSh)
	}
	return d
}

func firstOfMonth(d arrow.Date32) arrow.Date32 {
	tm := d.ToTime()
	return arrow.Date32FromTime(tm.AddDate(0, 0, 1-tm.Day()))
}

// event transforms one batch of an event table. Columns that the policy
// leaves as they are (codes, units, values, types, and dates when kept)
// are the input's own arrays, shared rather than copied; only the
// pseudonyms and changed dates are built.
func (t *transformer) event(tb ingest.Table, rec arrow.RecordBatch) arrow.RecordBatch {
	n := int(rec.NumRows())
	schema := t.schemas[tb]
	cols := make([]arrow.Array, 0, schema.NumFields())
	defer func() {
		for _, c := range cols {
			c.Release()
		}
	}()
	keep := func(in int) { c := rec.Column(in); c.Retain(); cols = append(cols, c) }
	nhsCol := 0
	if tb == ingest.Encounters {
		nhsCol = 1
	}
	nhs := rec.Column(nhsCol).(*array.Uint64)
	places := rec.Column(int(rec.NumCols()) - 1).(*array.Uint32) // ingest's patient_place
	pids := func() {
		w := t.policy.PseudonymBytes
		cols = append(cols, t.fixed(n, nil, 0, func(out []byte) {
			for i, v := range nhs.Uint64Values() {
				copy(out[i*w:(i+1)*w], t.patient(v, int(places.Value(i))))
			}
		}))
	}
	dates := func(in int) { cols = append(cols, t.dates(nhs, places, rec.Column(in).(*array.Date32))) }
	tokens := func(in int) { cols = append(cols, t.tokens(rec.Column(in).(*array.String))) }
	switch tb {
	case ingest.Encounters:
		tokens(0)
		pids()
		keep(2)
		dates(3)
		dates(4)
		if t.policy.KeepOrganisation {
			keep(5)
		}
		for c := 6; c <= 10; c++ {
			keep(c)
		}
	case ingest.Conditions:
		pids()
		keep(1)
		keep(2)
		dates(3)
		tokens(4)
		keep(5)
		keep(6)
	case ingest.Medications:
		pids()
		keep(1)
		keep(2)
		dates(3)
		dates(4)
	case ingest.Observations:
		pids()
		keep(1)
		keep(2)
		keep(3)
		keep(4)
		dates(5)
		keep(6)
	case ingest.Procedures:
		pids()
		keep(1)
		keep(2)
		dates(3)
		dates(4)
		tokens(5)
	case ingest.Immunizations:
		pids()
		keep(1)
		keep(2)
		dates(3)
		tokens(4)
	case ingest.Registrations:
		pids()
		if t.policy.KeepGPPractice {
			cols = append(cols, t.practices(nhs, places, rec.Column(1)))
		}
		dates(2)
		dates(3)
	}
	return array.NewRecordBatch(t.batchSchema(tb, cols), cols, int64(n))
}

// practices is a registrations batch's practice column with the
// practices of patients the k-anonymity check withheld practices from,
// and of patients not among the known, made null: the same buffers under
// a new validity bitmap.
func (t *transformer) practices(nhs *array.Uint64, places *array.Uint32, col arrow.Array) arrow.Array {
	n, k, off := col.Len(), t.known, col.Data().Offset()
	valid := memory.NewResizableBuffer(t.mem)
	valid.Resize(int(bitutil.BytesForBits(int64(off + n))))
	bits, nulls := valid.Bytes(), 0
	for i := range n {
		p := int(places.Value(i))
		ok := col.IsValid(i) && k != nil && p >= 0 && p < len(k.noPractice) && k.nhs[p] == nhs.Value(i) && !k.noPractice[p]
		bitutil.SetBitTo(bits, off+i, ok)
		if !ok {
			nulls++
		}
	}
	in := col.Data()
	bufs := slices.Clone(in.Buffers())
	bufs[0] = valid
	out := array.NewData(in.DataType(), n, bufs, in.Children(), nulls, in.Offset())
	if d := in.Dictionary(); d != nil {
		out.SetDictionary(d)
	}
	valid.Release()
	defer out.Release()
	return array.MakeFromData(out)
}

// batchSchema is the published schema of tb with the types of cols: the
// vocabulary columns stay dictionary arrays (see ingest.Vocabulary), which
// the Parquet writer stores as the published strings.
func (t *transformer) batchSchema(tb ingest.Table, cols []arrow.Array) *arrow.Schema {
	if s, ok := t.batch[tb]; ok {
		return s
	}
	fields := t.schemas[tb].Fields()
	for i := range fields {
		fields[i].Type = cols[i].DataType()
	}
	s := arrow.NewSchema(fields, nil)
	if t.batch == nil {
		t.batch = map[ingest.Table]*arrow.Schema{}
	}
	t.batch[tb] = s
	return s
}

// tokens pseudonymises a column of encounter ids, nulls kept.
func (t *transformer) tokens(ids *array.String) arrow.Array {
	var valid *memory.Buffer
	if ids.NullN() > 0 {
		valid = memory.NewResizableBuffer(t.mem)
		valid.Resize(int(bitutil.BytesForBits(int64(ids.Len()))))
		bitutil.CopyBitmap(ids.NullBitmapBytes(), ids.Data().Offset(), ids.Len(), valid.Bytes(), 0)
		defer valid.Release()
	}
	w := t.policy.PseudonymBytes
	return t.fixed(ids.Len(), valid, ids.NullN(), func(out []byte) {
		for i := 0; i < ids.Len(); i++ {
			if ids.IsValid(i) {
				copy(out[i*w:(i+1)*w], t.ps.Token("encounter", unsafeBytes(ids.Value(i))))
			}
		}
	})
}

// fixed returns n pseudonyms that fill writes in place (value i at
// out[i*PseudonymBytes:]), with the validity bitmap valid (nil for none)
// holding nulls nulls. Filling a buffer once saves the builder's checks at
// every value.
func (t *transformer) fixed(n int, valid *memory.Buffer, nulls int, fill func(out []byte)) arrow.Array {
	w := t.policy.PseudonymBytes
	buf := memory.NewResizableBuffer(t.mem)
	defer buf.Release()
	buf.Resize(n * w)
	fill(buf.Bytes())
	data := array.NewData(&arrow.FixedSizeBinaryType{ByteWidth: w}, n, []*memory.Buffer{valid, buf}, nil, nulls, 0)
	defer data.Release()
	return array.MakeFromData(data)
}

// dates applies the policy to a column of event dates of the patients in
// nhs (at places among the known), noting their span. Kept dates are the input array itself.
func (t *transformer) dates(nhs *array.Uint64, places *array.Uint32, col *array.Date32) arrow.Array {
	vals := col.Date32Values()
	if t.policy.EventDates == DatesKeep {
		for i, d := range vals {
			if col.IsValid(i) {
				t.seen(d)
			}
		}
		col.Retain()
		return col
	}
	b := array.NewDate32Builder(t.mem)
	defer b.Release()
	b.Reserve(len(vals))
	for i, d := range vals {
		if col.IsNull(i) {
			b.UnsafeAppendBoolToBitmap(false)
			continue
		}
		t.patient(nhs.Value(i), int(places.Value(i))) // the shift is the row's patient's
		d = t.date(d)
		t.seen(d)
		b.UnsafeAppend(d)
	}
	return b.NewArray()
}

// unsafeBytes views a string's bytes without copying; the caller must not
// modify them.
func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
