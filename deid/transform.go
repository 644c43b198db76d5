package deid

import (
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// transformer turns identifiable event batches into published ones. It
// is used from one goroutine.
type transformer struct {
	policy  Policy
	ps      *Pseudonymiser
	schemas map[ingest.Table]*arrow.Schema
	mem     memory.Allocator

	lastNHS uint64 // cache: events come grouped by patient
	lastPID [32]byte
	lastSh  int32

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

func (t *transformer) patient(nhs uint64) []byte {
	n := t.policy.PseudonymBytes
	if nhs != t.lastNHS {
		copy(t.lastPID[:n], t.ps.Patient(nhs))
		if t.policy.EventDates == DatesShift {
			t.lastSh = t.ps.Shift(nhs, t.policy.ShiftDays)
		}
		t.lastNHS = nhs
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

// event transforms one batch of an event table.
func (t *transformer) event(tb ingest.Table, rec arrow.RecordBatch) arrow.RecordBatch {
	b := array.NewRecordBuilder(t.mem, t.schemas[tb])
	defer b.Release()
	n := int(rec.NumRows())
	b.Reserve(n)
	nhsCol := 0
	if tb == ingest.Encounters {
		nhsCol = 1
	}
	nhs := rec.Column(nhsCol).(*array.Uint64)
	pid := func(i int) *array.FixedSizeBinaryBuilder { return b.Field(i).(*array.FixedSizeBinaryBuilder) }
	dates := func(out int, in int, i int) {
		col := rec.Column(in).(*array.Date32)
		if col.IsNull(i) {
			b.Field(out).AppendNull()
			return
		}
		d := t.date(col.Value(i))
		t.seen(d)
		b.Field(out).(*array.Date32Builder).Append(d)
	}
	strs := func(out, in, i int) {
		col := rec.Column(in).(*array.String)
		if col.IsNull(i) {
			b.Field(out).AppendNull()
			return
		}
		b.Field(out).(*array.StringBuilder).Append(col.Value(i))
	}
	for i := 0; i < n; i++ {
		p := t.patient(nhs.Value(i))
		switch tb {
		case ingest.Encounters:
			ids := rec.Column(0).(*array.String)
			pid(0).Append(t.ps.Token("encounter", []byte(ids.Value(i))))
			pid(1).Append(p)
			strs(2, 2, i)
			dates(3, 3, i)
			dates(4, 4, i)
			if t.policy.KeepOrganisation {
				strs(5, 5, i)
			}
			continue
		}
		pid(0).Append(p)
		strs(1, 1, i)
		strs(2, 2, i)
		switch tb {
		case ingest.Conditions:
			dates(3, 3, i)
			if ids := rec.Column(4).(*array.String); ids.IsValid(i) {
				pid(4).Append(t.ps.Token("encounter", []byte(ids.Value(i))))
			} else {
				b.Field(4).AppendNull()
			}
		case ingest.Medications:
			dates(3, 3, i)
			dates(4, 4, i)
		case ingest.Observations:
			if v := rec.Column(3).(*array.Float64); v.IsValid(i) {
				b.Field(3).(*array.Float64Builder).Append(v.Value(i))
			} else {
				b.Field(3).AppendNull()
			}
			strs(4, 4, i)
			dates(5, 5, i)
		}
	}
	return b.NewRecordBatch()
}
