package deid

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/nhs-hub/hub/ingest"
)

// memSink keeps parts in memory.
type memSink struct {
	mu    sync.Mutex
	parts map[string]*bytes.Buffer
}

type memPart struct{ *bytes.Buffer }

func (memPart) Close() error { return nil }

func (s *memSink) Create(_ context.Context, table string, part int) (io.WriteCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := &bytes.Buffer{}
	s.parts[fmt.Sprintf("%s/%d", table, part)] = b
	return memPart{b}, nil
}

// A table writer splits batches across row groups and parts at the set
// sizes, and what it writes reads back row for row: a vocabulary column
// (dictionary arrays) and a dictionary-encoded string column as strings,
// with the stored schema's types, and nulls where they were.
func TestTableWriterSplits(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "code_system", Type: arrow.BinaryTypes.String},
		{Name: "code", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "start_date", Type: arrow.FixedWidthTypes.Date32},
	}, nil)
	sink := &memSink{parts: map[string]*bytes.Buffer{}}
	w := newTableWriter(t.Context(), sink, mem, "conditions", schema, 0, 1)
	w.maxGroup, w.maxPart = 70, 200

	var want []string
	row := 0
	// An open vocabulary grows as batches come: each batch's dictionary
	// extends the ones before, and a row group mixes them.
	vocab := []string{"snomed", "icd10", "dmd", "loinc", "http://example.org/a", "rxnorm", "http://example.org/b"}
	for b, n := range []int{30, 50, 1, 120, 64, 35} { // 300 rows in batches across every boundary
		dictLen := 2 + b
		idx := array.NewInt16Builder(mem)
		code := array.NewStringBuilder(mem)
		date := array.NewDate32Builder(mem)
		for range n {
			k := int16(row % dictLen)
			idx.Append(k)
			c := fmt.Sprint(1000 + row%13)
			if row%7 == 0 {
				code.AppendNull()
				c = "(null)"
			} else {
				code.Append(c)
			}
			date.Append(arrow.Date32(19000 + row))
			want = append(want, fmt.Sprintf("%s|%s|%s", vocab[k], c, arrow.Date32(19000+row).FormattedString()))
			row++
		}
		db := array.NewStringBuilder(memory.DefaultAllocator)
		db.AppendValues(vocab[:dictLen], nil)
		dict := db.NewArray()
		db.Release()
		ia := idx.NewArray()
		cols := []arrow.Array{array.NewDictionaryArray(ingest.Vocabulary, ia, dict), code.NewArray(), date.NewArray()}
		ia.Release()
		dict.Release()
		fields := schema.Fields()
		fields[0].Type = ingest.Vocabulary
		rec := array.NewRecordBatch(arrow.NewSchema(fields, nil), cols, int64(n))
		for _, c := range cols {
			c.Release()
		}
		idx.Release()
		code.Release()
		date.Release()
		if err := w.write(rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	if err := w.close(false); err != nil {
		t.Fatal(err)
	}

	// A part closes at the first row group boundary past 200 rows: parts of
	// 210 and 90 rows, in row groups of 70 but the last.
	wantGroups := map[string][]int64{"conditions/0": {70, 70, 70}, "conditions/1": {70, 20}}
	var got []string
	for _, name := range []string{"conditions/0", "conditions/1"} {
		b, ok := sink.parts[name]
		if !ok {
			t.Fatalf("no part %s; parts %v", name, len(sink.parts))
		}
		pf, err := file.NewParquetReader(bytes.NewReader(b.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		var groups []int64
		for g := range pf.NumRowGroups() {
			groups = append(groups, pf.MetaData().RowGroup(g).NumRows())
		}
		if fmt.Sprint(groups) != fmt.Sprint(wantGroups[name]) {
			t.Errorf("%s: row groups of %v rows, want %v", name, groups, wantGroups[name])
		}
		for c, col := range []string{"code_system", "code"} { // a vocabulary, and strings encoded here
			for g := range pf.NumRowGroups() {
				cc, _ := pf.MetaData().RowGroup(g).ColumnChunk(c)
				if !cc.HasDictionaryPage() || cc.Encodings()[0] == parquet.Encodings.Plain {
					t.Errorf("%s row group %d: %s encoded %v, want dictionary", name, g, col, cc.Encodings())
				}
			}
		}
		fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1000}, memory.DefaultAllocator)
		if err != nil {
			t.Fatal(err)
		}
		tbl, err := fr.ReadTable(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if !arrow.TypeEqual(tbl.Schema().Field(0).Type, arrow.BinaryTypes.String) {
			t.Errorf("code_system reads back as %s, want the stored string type", tbl.Schema().Field(0).Type)
		}
		tr := array.NewTableReader(tbl, 1000)
		for tr.Next() {
			rec := tr.RecordBatch()
			for r := range int(rec.NumRows()) {
				got = append(got, fmt.Sprintf("%s|%s|%s", rec.Column(0).ValueStr(r), rec.Column(1).ValueStr(r), rec.Column(2).ValueStr(r)))
			}
		}
		tr.Release()
		tbl.Release()
	}
	if len(got) != len(want) {
		t.Fatalf("read back %d rows, wrote %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("row %d reads back %q, wrote %q", i, got[i], want[i])
		}
	}
}
