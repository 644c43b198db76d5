package ingest_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// The batches carry the validated, normalised values.
func TestBatchContent(t *testing.T) {
	dir := writeExtract(t, map[string]string{
		"patients.csv": headers["patients.csv"] + "943-476-5919, Alice ,Smith,1970-05-01,FEMALE,ls62ab,A,B86011,2024-02-29\n" +
			"9876543210,Bob,Jones,1980-01-31,male,,,,\n" + "4010232137,Cy,Ray,1990-12-31,other,BD1 1HY,,B86012,\n",
		"encounters.csv": headers["encounters.csv"] +
			"E1,9434765919,GP,2022-01-02,2022-01-02,GP practice B86011\n" +
			"E2,9434765919,inpatient,2022-02-01,,\n" +
			"E3,9876543210,ae,2022-03-01,2022-03-02,\n" +
			"E4,4010232137,outpatient,2022-04-01,,Leeds Teaching Hospitals\n" +
			"E5,9434765919,gp,2022-05-01,,\n", // out of the patients' order
		"observations.csv": headers["observations.csv"] +
			"9434765919,SNOMED,60621009,27.5,kg/m2,2023-04-05T10:00:00Z\n" +
			"9434765919,snomed,827241000000103,,,2020-01-01\n" +
			"9434765919,snomed,827261000000102,,,2021-01-01\n",
	})
	o, _ := ingest.LoadOptOuts(t.Context(), strings.NewReader(""))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	got := map[ingest.Table][]string{}
	_, err := ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: o, Allocator: mem},
		func(_ context.Context, tb ingest.Table, rec arrow.RecordBatch) error {
			defer rec.Release()
			for r := 0; r < int(rec.NumRows()); r++ {
				var cells []string
				for c := 0; c < int(rec.NumCols()); c++ {
					cells = append(cells, rec.Column(c).ValueStr(r))
				}
				got[tb] = append(got[tb], strings.Join(cells, "|"))
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	want := map[ingest.Table][]string{
		ingest.Patients: {
			"9434765919|Alice|Smith|1970-05-01|female|LS6 2AB|A|B86011|2024-02-29",
			"9876543210|Bob|Jones|1980-01-31|male|(null)|(null)|(null)|(null)",
			"4010232137|Cy|Ray|1990-12-31|other|BD1 1HY|(null)|B86012|(null)",
		},
		ingest.Encounters: {
			"E1|9434765919|gp|2022-01-02|2022-01-02|GP practice B86011|(null)|(null)|(null)|(null)|(null)|0",
			"E2|9434765919|inpatient|2022-02-01|(null)|(null)|(null)|(null)|(null)|(null)|(null)|0",
			"E3|9876543210|ae|2022-03-01|2022-03-02|(null)|(null)|(null)|(null)|(null)|(null)|1",
			"E4|4010232137|outpatient|2022-04-01|(null)|Leeds Teaching Hospitals|(null)|(null)|(null)|(null)|(null)|2",
			"E5|9434765919|gp|2022-05-01|(null)|(null)|(null)|(null)|(null)|(null)|(null)|0",
		},
		// Alice's dissent and its withdrawal are not published: they say
		// that she once objected.
		ingest.Observations: {
			"9434765919|snomed|60621009|27.5|kg/m2|2023-04-05|(null)|0",
		},
	}
	for tb, rows := range want {
		if strings.Join(got[tb], "\n") != strings.Join(rows, "\n") {
			t.Errorf("%s:\n got %q\nwant %q", tb, got[tb], rows)
		}
	}
}

// An error from the next stage stops the run, is returned as is, and
// leaks no Arrow memory.
func TestEmitErrorStops(t *testing.T) {
	dir, _ := generate(t, syntheticSmall())
	o, _ := ingest.LoadOptOuts(t.Context(), strings.NewReader(""))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	stop := errors.New("disk full")
	calls := 0
	_, err := ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: o, Allocator: mem, Workers: 2},
		func(_ context.Context, tb ingest.Table, rec arrow.RecordBatch) error {
			rec.Release()
			calls++
			if tb == ingest.Encounters {
				return stop
			}
			return nil
		})
	if !errors.Is(err, stop) {
		t.Fatalf("err = %v, want the emit error", err)
	}
	if calls == 0 {
		t.Fatal("emit never called")
	}
}

func TestCancel(t *testing.T) {
	dir, _ := generate(t, syntheticSmall())
	o, _ := ingest.LoadOptOuts(t.Context(), strings.NewReader(""))
	ctx, cancel := context.WithCancel(t.Context())
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	_, err := ingest.Run(ctx, ingest.Dir(dir), ingest.Options{OptOuts: o, Allocator: mem},
		func(_ context.Context, _ ingest.Table, rec arrow.RecordBatch) error {
			rec.Release()
			cancel()
			return nil
		})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
