package deid

import (
	"context"
	"fmt"
	"io"

	"github.com/apache/arrow-go/v18/arrow"
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
	DefaultRowGroupRows = 512 * 1024
	DefaultPartRows     = 4 * 1024 * 1024
	DefaultZstdLevel    = 1
)

// tableWriter writes one table's batches into Parquet parts.
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
func newTableWriter(ctx context.Context, sink Sink, table string, schema *arrow.Schema, first, stride int) *tableWriter {
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
	if table == "patients" {
		opts = append(opts, parquet.WithCompressionFor("patient_id", compress.Codecs.Uncompressed))
	}
	return &tableWriter{ctx: ctx, sink: sink, table: table, schema: schema, part: first, stride: stride,
		props:  parquet.NewWriterProperties(opts...),
		aprops: pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema())}
}

// write appends a batch, rolling to a new part past DefaultPartRows.
func (w *tableWriter) write(rec arrow.RecordBatch) error {
	if w.fw == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	if err := w.fw.WriteBuffered(rec); err != nil {
		return fmt.Errorf("write %s part %d: %w", w.table, w.part, err)
	}
	w.partRows += rec.NumRows()
	w.rows += rec.NumRows()
	if w.partRows >= DefaultPartRows {
		if err := w.closePart(); err != nil {
			return err
		}
		w.part += w.stride
	}
	return nil
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
	if w.fw != nil {
		w.fw = nil
		drop(w.out)
	}
}

// close finishes the writer's last part. With empty set, a writer that
// wrote nothing still writes one empty part, so the table's schema is
// published.
func (w *tableWriter) close(empty bool) error {
	if w.rows == 0 && w.fw == nil && empty {
		if err := w.open(); err != nil {
			return err
		}
	}
	return w.closePart()
}
