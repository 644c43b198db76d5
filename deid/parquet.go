package deid

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// A Sink receives the Parquet parts of a dataset. Implementations must be
// safe for concurrent use: the tables' writers create parts at once.
type Sink interface {
	// Create opens part k of table for writing; Close commits the part's
	// bytes (not the dataset: that is the manifest's job).
	Create(ctx context.Context, table string, part int) (io.WriteCloser, error)
}

// Parquet layout defaults.
const (
	DefaultRowGroupRows = 256 * 1024
	DefaultPartRows     = 4 * 1024 * 1024
	DefaultZstdLevel    = 1
)

// tableWriter writes one table's batches into Parquet parts. It gathers
// batches until they fill a row group, then writes the row group column by
// column: a vocabulary column's batches then share one dictionary, which
// the Parquet writer takes as it is (pqarrow's buffered writer would hash
// every value), and pages stream to the sink instead of waiting in memory.
type tableWriter struct {
	ctx    context.Context
	sink   Sink
	table  string
	schema *arrow.Schema
	props  *parquet.WriterProperties
	aprops pqarrow.ArrowWriterProperties

	part     int // the next part's index: first + k*stride
	stride   int
	partRows int64
	rows     int64
	fw       *pqarrow.FileWriter // closes the sink's writer when it closes
	out      io.WriteCloser      // the sink's writer of the open part

	pending     []arrow.RecordBatch // batches of the next row group
	pendingRows int64

	maxGroup, maxPart int64            // rows a row group, rows a part
	mem               memory.Allocator // for the dictionaries it builds
}

// An aborter is a sink writer that can be dropped without committing its
// part (the lake's writers are); others are closed instead, leaving a
// part that no manifest lists, for gc.
type aborter interface{ Abort() }

func drop(w io.WriteCloser) {
	if a, ok := w.(aborter); ok {
		a.Abort()
		return
	}
	w.Close()
}

// newTableWriter writes parts first, first+stride, first+2*stride, ... so
// that several writers of one table never share a part number.
func newTableWriter(ctx context.Context, sink Sink, mem memory.Allocator, table string, schema *arrow.Schema, first, stride int) *tableWriter {
	opts := []parquet.WriterProperty{
		parquet.WithCompression(compress.Codecs.Zstd),
		parquet.WithCompressionLevel(DefaultZstdLevel),
		parquet.WithMaxRowGroupLength(DefaultRowGroupRows),
		parquet.WithDictionaryDefault(false),
		parquet.WithCreatedBy("hub"),
	}
	for _, c := range dictionaryColumns {
		if _, ok := schema.FieldsByName(c); ok {
			opts = append(opts, parquet.WithDictionaryFor(c, true))
		}
	}
	// Keyed pseudonyms are random bytes that zstd cannot shrink: the
	// encounter ids, and the patient ids of the patients table (one row a
	// patient). Events repeat their patient's id row after row, which
	// compresses, so theirs stay compressed.
	// Their min/max statistics prune nothing either, so none are kept.
	opts = append(opts, parquet.WithCompressionFor("encounter_id", compress.Codecs.Uncompressed),
		parquet.WithStatsFor("encounter_id", false), parquet.WithStatsFor("patient_id", false))
	// Nor do the vocabularies' (three or four values), and computing them
	// costs the dictionary path a distinct-values pass over every batch.
	for _, c := range []string{"type", "code_system", "class", "clinical_status", "verification_status", "type_system"} {
		opts = append(opts, parquet.WithStatsFor(c, false))
	}
	if table == "patients" {
		opts = append(opts, parquet.WithCompressionFor("patient_id", compress.Codecs.Uncompressed))
	}
	return &tableWriter{ctx: ctx, sink: sink, table: table, schema: schema, part: first, stride: stride,
		maxGroup: DefaultRowGroupRows, maxPart: DefaultPartRows, mem: mem,
		props:  parquet.NewWriterProperties(opts...),
		aprops: pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema())}
}

// write appends a batch, whose columns have the table's types or are
// dictionary arrays of them. Full row groups are written; a part closes
// once it holds maxPart rows.
func (w *tableWriter) write(rec arrow.RecordBatch) error {
	if err := w.check(rec); err != nil {
		return err
	}
	if rec.NumRows() == 0 {
		return nil
	}
	rec.Retain()
	w.pending = append(w.pending, rec)
	w.pendingRows += rec.NumRows()
	for w.pendingRows >= w.maxGroup {
		if err := w.flushRowGroup(w.maxGroup); err != nil {
			return err
		}
	}
	return nil
}

func (w *tableWriter) check(rec arrow.RecordBatch) error {
	if int(rec.NumCols()) != w.schema.NumFields() {
		return fmt.Errorf("write %s: a batch of %d columns for %d", w.table, rec.NumCols(), w.schema.NumFields())
	}
	for i, f := range w.schema.Fields() {
		typ := rec.Column(i).DataType()
		if d, ok := typ.(*arrow.DictionaryType); ok {
			typ = d.ValueType
		}
		if !arrow.TypeEqual(typ, f.Type) {
			return fmt.Errorf("write %s: column %s is %s, not %s", w.table, f.Name, rec.Column(i).DataType(), f.Type)
		}
	}
	return nil
}

// flushRowGroup writes the first n pending rows as one row group.
func (w *tableWriter) flushRowGroup(n int64) error {
	if w.fw == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	if err := w.fw.NewRowGroupChecked(); err != nil {
		return fmt.Errorf("write %s part %d: %w", w.table, w.part, err)
	}
	chunks := make([]arrow.Array, len(w.pending))
	for i, f := range w.schema.Fields() {
		for k, rec := range w.pending {
			chunks[k] = rec.Column(i)
		}
		var col *arrow.Chunked
		switch {
		case chunks[0].DataType().ID() == arrow.DICTIONARY:
			same, release := sameDictionary(chunks)
			col = arrow.NewChunked(same[0].DataType(), same)
			release()
		case isDictionaryColumn(f.Name) && chunks[0].DataType().ID() == arrow.STRING:
			d := dictionaryEncode(w.mem, chunks, n)
			col = arrow.NewChunked(d.DataType(), []arrow.Array{d})
			d.Release()
		default:
			col = arrow.NewChunked(chunks[0].DataType(), chunks)
		}
		err := w.fw.WriteColumnChunked(col, 0, n)
		col.Release()
		if err != nil {
			return fmt.Errorf("write %s part %d: %w", w.table, w.part, err)
		}
	}
	// Keep what follows the n rows.
	done := int64(0)
	for len(w.pending) > 0 && done+w.pending[0].NumRows() <= n {
		done += w.pending[0].NumRows()
		w.pending[0].Release()
		w.pending = w.pending[1:]
	}
	if done < n {
		rest := w.pending[0].NewSlice(n-done, w.pending[0].NumRows())
		w.pending[0].Release()
		w.pending[0] = rest
	}
	w.pendingRows -= n
	w.partRows += n
	w.rows += n
	if w.partRows >= w.maxPart {
		if err := w.closePart(); err != nil {
			return err
		}
		w.part += w.stride
	}
	return nil
}

func isDictionaryColumn(name string) bool { return slices.Contains(dictionaryColumns, name) }

// sameDictionary gives every chunk of a vocabulary column the longest of
// their dictionaries. An open vocabulary (code systems) grows as an
// extract is read, and each of its snapshots extends the ones before with
// the same indices, so the longest holds every chunk's values; Parquet
// then writes one dictionary for the row group. The chunks returned are
// released by release (a new Chunked retains what it keeps).
func sameDictionary(chunks []arrow.Array) ([]arrow.Array, func()) {
	first := chunks[0].Data().Dictionary()
	longest, same := chunks[0].(*array.Dictionary).Dictionary(), true
	for _, c := range chunks[1:] {
		if c.Data().Dictionary() != first {
			same = false
		}
		if d := c.(*array.Dictionary).Dictionary(); d.Len() > longest.Len() {
			longest = d
		}
	}
	if same {
		return chunks, func() {}
	}
	out := make([]arrow.Array, len(chunks))
	for i, c := range chunks {
		d := c.(*array.Dictionary)
		out[i] = array.NewDictionaryArray(d.DataType(), d.Indices(), longest)
	}
	return out, func() {
		for _, c := range out {
			c.Release()
		}
	}
}

// stringDictionary is the type of a row group's dictionary-encoded strings.
var stringDictionary = &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}

// dictionaryEncode returns the first n rows of a string column's chunks as
// one dictionary array, values in order of first appearance. pqarrow
// would build the same dictionary itself, but its memo table allocates at
// every value (a closure that captures it escapes; fixed upstream in
// arrow-go#1310, not released): a Go map costs less than half as much.
func dictionaryEncode(mem memory.Allocator, chunks []arrow.Array, n int64) arrow.Array {
	ids := make(map[string]int32, 256)
	vals := array.NewStringBuilder(mem)
	defer vals.Release()
	idx := array.NewInt32Builder(mem)
	defer idx.Release()
	idx.Reserve(int(n))
	for _, c := range chunks {
		s := c.(*array.String)
		m := int(min(int64(s.Len()), n))
		for i := range m {
			if s.IsNull(i) {
				idx.UnsafeAppendBoolToBitmap(false)
				continue
			}
			v := s.Value(i)
			k, ok := ids[v]
			if !ok {
				k = int32(len(ids))
				ids[strings.Clone(v)] = k
				vals.Append(v)
			}
			idx.UnsafeAppend(k)
		}
		if n -= int64(m); n == 0 {
			break
		}
	}
	dict, indices := vals.NewArray(), idx.NewArray()
	defer dict.Release()
	defer indices.Release()
	return array.NewDictionaryArray(stringDictionary, indices, dict)
}

func (w *tableWriter) releasePending() {
	for _, rec := range w.pending {
		rec.Release()
	}
	w.pending, w.pendingRows = nil, 0
}

func (w *tableWriter) open() error {
	out, err := w.sink.Create(w.ctx, w.table, w.part)
	if err != nil {
		return err
	}
	fw, err := pqarrow.NewFileWriter(w.schema, out, w.props, w.aprops)
	if err != nil {
		out.Close()
		return fmt.Errorf("start %s part %d: %w", w.table, w.part, err)
	}
	w.fw, w.out, w.partRows = fw, out, 0
	return nil
}

func (w *tableWriter) closePart() error {
	if w.fw == nil {
		return nil
	}
	// pqarrow's FileWriter.Close closes the sink writer too, unless it
	// fails first: then the part is dropped, and its file with it.
	err := w.fw.Close()
	w.fw = nil
	if err != nil {
		drop(w.out)
		return fmt.Errorf("finish %s part %d: %w", w.table, w.part, err)
	}
	return nil
}

// abort drops the open part, if any, without committing it.
func (w *tableWriter) abort() {
	w.releasePending()
	if w.fw != nil {
		w.fw = nil
		drop(w.out)
	}
}

// close finishes the writer's last part; on error the part is dropped.
// With empty set, a writer that wrote nothing still writes one empty
// part, so the table's schema is published.
func (w *tableWriter) close(empty bool) error {
	if w.pendingRows > 0 {
		if err := w.flushRowGroup(w.pendingRows); err != nil {
			w.abort()
			return err
		}
	}
	if w.rows == 0 && w.fw == nil && empty {
		if err := w.open(); err != nil {
			return err
		}
	}
	return w.closePart()
}
