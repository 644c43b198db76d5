package ingest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nhs-hub/hub/ingest"
)

var headers = map[string]string{
	"patients.csv":     "nhs_number,given_name,family_name,date_of_birth,sex,postcode,ethnicity,gp_practice,date_of_death\n",
	"encounters.csv":   "encounter_id,nhs_number,type,start_date,end_date,organisation\n",
	"conditions.csv":   "nhs_number,code_system,code,onset_date,encounter_id\n",
	"medications.csv":  "nhs_number,code_system,code,start_date,end_date\n",
	"observations.csv": "nhs_number,code_system,code,value,unit,effective_date\n",
}

// writeExtract writes a CSV extract whose tables hold only a header except
// for those given.
func writeExtract(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, h := range headers {
		body, ok := files[name]
		if !ok {
			body = h
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, body := range files {
		if _, ok := headers[name]; !ok {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func run(t *testing.T, dir string, optouts string) (*ingest.Report, error) {
	t.Helper()
	o, err := ingest.LoadOptOuts(t.Context(), strings.NewReader(optouts))
	if err != nil {
		t.Fatal(err)
	}
	return ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: o, Workers: 2},
		func(_ context.Context, _ ingest.Table, rec arrow.RecordBatch) error { rec.Release(); return nil })
}

const (
	alice = "9434765919,Alice,Smith,1970-05-01,female,LS6 2AB,A,B86011,\n"
	bob   = "9876543210,Bob,Jones,1980-01-31,male,BD1 1HY,J,B86012,\n"
)

func TestHostileInput(t *testing.T) {
	deep := `{"resourceType":"Patient","x":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + "}\n"
	tests := []struct {
		name    string
		files   map[string]string
		optouts string
		wantErr string
		table   string
		reasons map[string]int64
		nulled  map[string]int64 // optional fields left empty in kept rows
		kept    int64
	}{
		{name: "header lacks a required column", files: map[string]string{"patients.csv": "nhs_number,given_name\n" + alice},
			wantErr: "lacks required column family_name"},
		{name: "empty patients file", files: map[string]string{"patients.csv": ""}, wantErr: "empty file"},
		{name: "no extract at all", files: map[string]string{}, wantErr: "no extract found"},
		{name: "truncated last line", files: map[string]string{"patients.csv": headers["patients.csv"] + alice + "9876543210,Bob,Jo"},
			table: "patients", reasons: map[string]int64{"malformed_row": 1}, kept: 1},
		{name: "unterminated quote swallows the rest", files: map[string]string{"patients.csv": headers["patients.csv"] + alice + "9876543210,\"Bob,Jones\n"},
			table: "patients", reasons: map[string]int64{"malformed_row": 1}, kept: 1},
		{name: "text after a closing quote", files: map[string]string{"patients.csv": headers["patients.csv"] + `9876543210,"Bob"x,Jones,1980-01-31,male,,,,` + "\n" + alice},
			table: "patients", reasons: map[string]int64{"malformed_row": 1}, kept: 1},
		{name: "quoted commas, quotes and newlines are data", files: map[string]string{"patients.csv": headers["patients.csv"] + "\"9434765919\",\"Anne,\nMarie\",\"O\"\"Brien\",1970-05-01,female,,,,\r\n"},
			table: "patients", reasons: map[string]int64{}, kept: 1},
		{name: "columns in any order and any case", files: map[string]string{"patients.csv": "SEX,Date_Of_Birth,family_name,given_name,NHS_NUMBER,extra\r\nfemale,1970-05-01,Smith,Alice,943 476 5919,ignored\r\n"},
			table: "patients", reasons: map[string]int64{}, kept: 1},
		{name: "byte order mark", files: map[string]string{"patients.csv": "\xEF\xBB\xBF" + headers["patients.csv"] + alice},
			table: "patients", reasons: map[string]int64{}, kept: 1},
		{name: "NUL bytes and binary junk", files: map[string]string{"patients.csv": headers["patients.csv"] + "\x00\x01\x02,\xff\xfe\n" + alice},
			table: "patients", reasons: map[string]int64{"malformed_row": 1}, kept: 1},
		{name: "bad values", files: map[string]string{"patients.csv": headers["patients.csv"] +
			"9434765919,Alice,Smith,1970-02-30,female,,,,\n" +
			"9876543210,Bob,Jones,1980-01-31,robot,,,,\n" +
			"9990000018,,Jones,1980-01-31,male,,,,\n" +
			"9990000026,Cy,Jones,1980-01-31,male,NOT A POSTCODE,,,\n" +
			"9990000034,Di,Jones,1980-01-31,male,,Q,,\n" +
			"9990000042,Ed,Jones,1980-01-31,male,,,12345,\n" +
			"9990000050,Flo,Jones,1980-01-31,female,,,,1979-01-01\n"},
			// A bad optional field is nulled and its row kept; a bad required one quarantines the row.
			table: "patients", reasons: map[string]int64{"invalid_date": 1, "invalid_sex": 1, "missing_field": 1}, kept: 4,
			nulled: map[string]int64{"invalid_postcode": 1, "invalid_ethnicity": 1, "invalid_practice": 1, "invalid_date": 1}},
		{name: "opt-out wins before anything is read", files: map[string]string{"patients.csv": headers["patients.csv"] + "9434765919,,,garbage,robot,,,,\n" + bob},
			optouts: "943 476 5919\njunk line\n", table: "patients", reasons: map[string]int64{"ndop": 1}, kept: 1},
		{name: "type 1 dissent, latest entry wins", files: map[string]string{
			"patients.csv": headers["patients.csv"] + alice + bob,
			"observations.csv": headers["observations.csv"] +
				"9434765919,snomed,827241000000103,,,2020-01-01\n" + // Alice dissents...
				"9434765919,snomed,827261000000102,,,2021-01-01\n" + // ...then withdraws: kept
				"9876543210,snomed,827261000000102,,,2019-01-01\n" + // Bob withdraws first...
				"9876543210,snomed,827241000000103,,,2020-01-01\n"}, // ...then dissents: out
			table: "patients", reasons: map[string]int64{"type1_dissent": 1}, kept: 1},
		{name: "type 1 codes read line by line: another column, both on a line, no last newline", files: map[string]string{
			"patients.csv": headers["patients.csv"] + alice + bob,
			"observations.csv": headers["observations.csv"] +
				"9434765919,snomed,44054006,827241000000103,,2020-01-01\n" + // Alice: the code is a value, not hers
				"9876543210,8272,827241000000103,827261000000102,,2020-01-01\n" + // Bob dissents (after a decoy)...
				"9876543210,snomed,8272,82726100000010,8272 827261000000102,2019-01-01\n" + // ...a decoy, no code column...
				"9876543210,snomed,827261000000102,8272,,2018-01-01"}, // ...and an older withdrawal: out
			table: "patients", reasons: map[string]int64{"type1_dissent": 1}, kept: 1},
		{name: "type 1 codes in a quoted chunk: records, not lines", files: map[string]string{
			"patients.csv": headers["patients.csv"] + alice + bob,
			"observations.csv": headers["observations.csv"] +
				"9434765919,snomed,44054006,1,\"mm\n9434765919,snomed,827241000000103,,,2020-01-01\n\",2020-01-01\n" + // a line that is not a record
				"\"9876543210\",\"snomed\",\"827241000000103\",,,\"2020-01-01\"\n"},
			table: "patients", reasons: map[string]int64{"type1_dissent": 1}, kept: 1},
		{name: "a dissent of unreadable date stands", files: map[string]string{
			"patients.csv": headers["patients.csv"] + alice,
			"observations.csv": headers["observations.csv"] +
				"9434765919,snomed,827241000000103,,,not a date\n" +
				"9434765919,snomed,827261000000102,,,2024-01-01\n"},
			table: "patients", reasons: map[string]int64{"type1_dissent": 1}, kept: 0},
		{name: "events of unknown and excluded patients", files: map[string]string{
			"patients.csv": headers["patients.csv"] + alice + "9876543210,Bob,Jones,never,male,,,,\n",
			"conditions.csv": headers["conditions.csv"] +
				"9434765919,snomed,44054006,2020-01-01,\n" +
				"9876543210,snomed,44054006,2020-01-01,\n" +
				"9990000018,snomed,44054006,2020-01-01,\n" +
				"9434765919,snomed,44054007,2020-01-01,\n" +
				"9434765919,icd10,E11.9,2020-01-01,\n" +
				"9434765919,read,C10..,2020-01-01,\n" + // a system the hub does not know: kept as it is
				"9434765919,,C10..,2020-01-01,\n"},
			table: "conditions", reasons: map[string]int64{"patient_excluded": 1, "unknown_patient": 1, "invalid_code": 1, "invalid_code_system": 1}, kept: 3},
		{name: "JSON nested 100,000 deep", files: map[string]string{"Patient.ndjson": deep + `{"resourceType":"Patient","identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}],"name":[{"family":"Smith","given":["Alice"]}],"gender":"female","birthDate":"1970-05-01"}` + "\n",
			"Encounter.ndjson": "", "Condition.ndjson": "", "MedicationStatement.ndjson": "", "Observation.ndjson": "",
			"patients.csv": "", "encounters.csv": "", "conditions.csv": "", "medications.csv": "", "observations.csv": ""},
			table: "patients", reasons: map[string]int64{"malformed_row": 1}, kept: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeExtract(t, tt.files)
			if strings.HasPrefix(tt.name, "JSON") || strings.HasPrefix(tt.name, "no extract") {
				for name := range headers {
					os.Remove(filepath.Join(dir, name))
				}
			}
			rep, err := run(t, dir, tt.optouts)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tr := rep.Tables[tt.table]
			if len(tr.Reasons) != len(tt.reasons) {
				t.Errorf("reasons = %v, want %v", tr.Reasons, tt.reasons)
			}
			for k, v := range tt.reasons {
				if tr.Reasons[k] != v {
					t.Errorf("reasons = %v, want %v", tr.Reasons, tt.reasons)
				}
			}
			if fmt.Sprint(tr.Nulled) != fmt.Sprint(tt.nulled) {
				t.Errorf("nulled fields = %v, want %v", tr.Nulled, tt.nulled)
			}
			if tt.kept >= 0 && tr.Kept != tt.kept {
				t.Errorf("kept = %d, want %d", tr.Kept, tt.kept)
			}
			if tr.Read != tr.Kept+tr.Quarantined+tr.OptedOut+tr.Excluded {
				t.Error("counts do not add up")
			}
		})
	}
}

// A 100 MB field is skipped with bounded memory, its row quarantined with
// the right line, and the rows after it are read.
func TestHugeFieldBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100 MB")
	}
	dir := writeExtract(t, nil)
	f, err := os.Create(filepath.Join(dir, "patients.csv"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(headers["patients.csv"] + alice + "9876543210,\"")
	chunk := bytes.Repeat([]byte("x,\n"), 1<<20/3)
	for i := 0; i < 100; i++ {
		f.Write(chunk)
	}
	f.WriteString("\",Jones,1980-01-31,male,,,,\n9990000018,Cy,Jones,1980-01-31,male,,,,\n")
	f.Close()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var q bytes.Buffer
	rep := runQuarantine(t, dir, &q)
	runtime.ReadMemStats(&after)
	tr := rep.Tables["patients"]
	if tr.Kept != 2 || tr.Reasons["record_too_long"] != 1 || tr.Read != 3 {
		t.Errorf("kept %d, read %d, reasons %v; want 2 kept of 3 and one record_too_long", tr.Kept, tr.Read, tr.Reasons)
	}
	if !strings.Contains(q.String(), `"line":3,`) {
		t.Errorf("quarantine entry lacks line 3: %s", q.String())
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 80<<20 {
		t.Errorf("allocated %d MB reading a 100 MB field; memory is not bounded", got>>20)
	}
}

func TestGzipBomb(t *testing.T) {
	if testing.Short() {
		t.Skip("compresses 400 MB")
	}
	dir := writeExtract(t, nil)
	os.Remove(filepath.Join(dir, "patients.csv"))
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zw.Write([]byte(headers["patients.csv"]))
	zeros := make([]byte, 1<<20)
	for i := 0; i < 400; i++ {
		zw.Write(zeros)
	}
	zw.Close()
	os.WriteFile(filepath.Join(dir, "patients.csv.gz"), buf.Bytes(), 0o644)
	_, err := run(t, dir, "")
	if !errors.Is(err, ingest.ErrGzipBomb) {
		t.Fatalf("err = %v, want ErrGzipBomb", err)
	}
}

// No report, quarantine entry or error names a patient.
func TestNoIdentifiersInReport(t *testing.T) {
	dir := writeExtract(t, map[string]string{"patients.csv": headers["patients.csv"] +
		alice + "9434765918,Zebedee,Quixote,1970-05-01,female,LS6 2AB,,,\n" + "9876543210,Bob,Jones,1980-13-31,male,BD1 1HY,,,\n"})
	var q bytes.Buffer
	rep := runQuarantine(t, dir, &q)
	var out bytes.Buffer
	rep.WriteJSON(&out)
	rep.WriteText(&out)
	out.Write(q.Bytes())
	for _, v := range []string{"9434765918", "943476591", "987654321", "Zebedee", "Quixote", "Bob", "Jones", "1980-13", "LS6", "BD1", "1970-05-01"} {
		if strings.Contains(out.String(), v) {
			t.Errorf("report or quarantine contains %q", v)
		}
	}
	if rep.Tables["patients"].Quarantined != 2 {
		t.Errorf("quarantined = %d, want 2", rep.Tables["patients"].Quarantined)
	}
}

// runQuarantine ingests dir with an empty opt-out list, writing the
// quarantine list to q.
func runQuarantine(t *testing.T, dir string, q *bytes.Buffer) *ingest.Report {
	t.Helper()
	o, _ := ingest.LoadOptOuts(t.Context(), strings.NewReader(""))
	rep, err := ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: o, Quarantine: q},
		func(_ context.Context, _ ingest.Table, rec arrow.RecordBatch) error { rec.Release(); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return rep
}
