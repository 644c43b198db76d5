package ingest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/synth"
)

// ingestDir runs ingest on dir with its optouts.txt, checking that every
// emitted batch has the table's schema and that every Arrow buffer is
// released, and returns the report and the rows emitted per table.
func ingestDir(t *testing.T, dir string, workers int) (*ingest.Report, map[ingest.Table]int64) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "optouts.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	optouts, err := ingest.LoadOptOuts(t.Context(), f)
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rows := map[ingest.Table]int64{}
	var patients []uint64 // emitted, in order
	rep, err := ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: optouts, Workers: workers, Allocator: mem},
		func(_ context.Context, tb ingest.Table, rec arrow.RecordBatch) error {
			defer rec.Release()
			if !rec.Schema().Equal(ingest.Schemas[tb]) {
				t.Errorf("%s: batch schema differs", tb)
			}
			rows[tb] += rec.NumRows()
			if tb == ingest.Patients {
				patients = append(patients, rec.Column(0).(*array.Uint64).Uint64Values()...)
				return nil
			}
			// Each event row's patient_place names its patient's row.
			nhs := rec.Column(ingest.Schemas[tb].FieldIndices("nhs_number")[0]).(*array.Uint64)
			place := rec.Column(int(rec.NumCols()) - 1).(*array.Uint32)
			for i := range int(rec.NumRows()) {
				if p := int(place.Value(i)); p >= len(patients) || patients[p] != nhs.Value(i) {
					t.Errorf("%s row %d: patient_place %d does not name its patient", tb, i, p)
					return nil
				}
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return rep, rows
}

func generate(t *testing.T, opts synth.Options) (string, *synth.Truth) {
	t.Helper()
	dir := t.TempDir()
	truth, err := synth.Generate(t.Context(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return dir, truth
}

// checkTruth compares a report with the generator's ground truth.
func checkTruth(t *testing.T, rep *ingest.Report, rows map[ingest.Table]int64, truth *synth.Truth) {
	t.Helper()
	for _, tb := range ingest.Tables {
		got, want := rep.Tables[tb.String()], truth.Tables[tb.String()]
		if want == nil { // a table the generator does not write
			want = &ingest.TableReport{Reasons: map[string]int64{}}
			if !slices.Contains(rep.Absent, tb.String()) {
				t.Errorf("%s: not reported absent", tb)
			}
		}
		if got.Read != want.Read || got.Kept != want.Kept || got.Quarantined != want.Quarantined ||
			got.OptedOut != want.OptedOut || got.Excluded != want.Excluded {
			t.Errorf("%s: read/kept/quarantined/opted out/excluded = %d/%d/%d/%d/%d, want %d/%d/%d/%d/%d", tb,
				got.Read, got.Kept, got.Quarantined, got.OptedOut, got.Excluded,
				want.Read, want.Kept, want.Quarantined, want.OptedOut, want.Excluded)
		}
		if !reflect.DeepEqual(got.Reasons, want.Reasons) {
			t.Errorf("%s: reasons = %v, want %v", tb, got.Reasons, want.Reasons)
		}
		if got.Read != got.Kept+got.Quarantined+got.OptedOut+got.Excluded {
			t.Errorf("%s: counts do not add up to rows read", tb)
		}
		if rows[tb] != got.Kept {
			t.Errorf("%s: emitted %d rows, report says %d kept", tb, rows[tb], got.Kept)
		}
	}
	if rep.Patients != truth.Patients {
		t.Errorf("patients = %+v, want %+v", rep.Patients, truth.Patients)
	}
	if rep.Type1 != truth.Type1 {
		t.Errorf("type 1 = %+v, want %+v", rep.Type1, truth.Type1)
	}
	if rep.OptOuts.Numbers != truth.OptOuts.Numbers || rep.OptOuts.Invalid != truth.OptOuts.Invalid {
		t.Errorf("opt-out list numbers/invalid = %d/%d, want %d/%d", rep.OptOuts.Numbers, rep.OptOuts.Invalid, truth.OptOuts.Numbers, truth.OptOuts.Invalid)
	}
}

func TestGroundTruth(t *testing.T) {
	tests := []struct {
		name    string
		opts    synth.Options
		workers int
	}{
		{"csv with faults", synth.Options{Patients: 3000, Seed: 7, FaultRate: 0.03}, 2},
		{"csv clean", synth.Options{Patients: 1000, Seed: 8}, 2},
		{"csv one worker", synth.Options{Patients: 2000, Seed: 9, FaultRate: 0.02}, 1},
		{"fhir with faults", synth.Options{Patients: 3000, Seed: 7, FaultRate: 0.03, Format: ingest.FHIR}, 2},
		{"csv gzip", synth.Options{Patients: 1500, Seed: 10, FaultRate: 0.02, Gzip: true}, 3},
		{"fhir gzip", synth.Options{Patients: 1500, Seed: 10, FaultRate: 0.02, Gzip: true, Format: ingest.FHIR}, 2},
		{"fhir in numbered parts", synth.Options{Patients: 2000, Seed: 3, FaultRate: 0.02, Format: ingest.FHIR, PartRows: 700}, 2},
		{"no patients", synth.Options{Patients: 0, Seed: 1}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, truth := generate(t, tt.opts)
			rep, rows := ingestDir(t, dir, tt.workers)
			checkTruth(t, rep, rows, truth)
			if tt.opts.PartRows > 0 {
				for _, tb := range ingest.Tables {
					tr := rep.Tables[tb.String()]
					var resources int64
					for _, n := range tr.Resources {
						resources += n
					}
					if want := (resources + int64(tt.opts.PartRows) - 1) / int64(tt.opts.PartRows); int64(len(tr.Files)) != want {
						t.Errorf("%s: %d parts for %d resources, want %d", tb, len(tr.Files), resources, want)
					}
				}
			}
			if tt.opts.FaultRate > 0 && rep.Tables["patients"].Quarantined == 0 {
				t.Error("a faulty extract produced no quarantined patient")
			}
		})
	}
}

// Both formats of the same seed carry the same content, so their reports
// agree on every count.
func TestFormatsAgree(t *testing.T) {
	opts := synth.Options{Patients: 2000, Seed: 42, FaultRate: 0.03}
	csvDir, _ := generate(t, opts)
	opts.Format = ingest.FHIR
	fhirDir, _ := generate(t, opts)
	a, _ := ingestDir(t, csvDir, 2)
	b, _ := ingestDir(t, fhirDir, 2)
	strip := func(r *ingest.Report) string {
		c := *r
		c.Format = ""
		c.OptOuts.SHA256 = ""
		c.Tables = map[string]*ingest.TableReport{}
		c.NotIngested = nil // the FHIR export's Medication resources
		for k, v := range r.Tables {
			v2 := *v
			v2.Files, v2.Samples, v2.Resources = nil, nil, nil
			c.Tables[k] = &v2
		}
		out, _ := json.Marshal(c)
		return string(out)
	}
	if strip(a) != strip(b) {
		t.Errorf("CSV and FHIR reports differ:\n%s\n%s", strip(a), strip(b))
	}
}

// The generator is deterministic for a seed.
func TestSynthDeterministic(t *testing.T) {
	opts := synth.Options{Patients: 500, Seed: 3, FaultRate: 0.05}
	a, _ := generate(t, opts)
	b, _ := generate(t, opts)
	for _, name := range []string{"patients.csv", "encounters.csv", "observations.csv", "optouts.txt"} {
		x, _ := os.ReadFile(filepath.Join(a, name))
		y, _ := os.ReadFile(filepath.Join(b, name))
		if string(x) != string(y) || len(x) == 0 {
			t.Errorf("%s differs between two runs with one seed", name)
		}
	}
}

func syntheticSmall() synth.Options { return synth.Options{Patients: 3000, Seed: 5, FaultRate: 0.01} }

// Events that do not follow the patients table's order are decided the
// same: the look-ahead along the kept patients misses and the hash set
// answers.
func TestShuffledEvents(t *testing.T) {
	dir, truth := generate(t, synth.Options{Patients: 3000, Seed: 12})
	rng := rand.New(rand.NewPCG(12, 12))
	for _, tb := range ingest.Tables[1:5] {
		p := filepath.Join(dir, tb.String()+".csv")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		body := lines[1:]
		rng.Shuffle(len(body), func(i, j int) { body[i], body[j] = body[j], body[i] })
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rep, rows := ingestDir(t, dir, 2)
	checkTruth(t, rep, rows, truth)
}

// The patients table is parsed on every worker, and duplicates are found
// in file order afterwards: a patients file of several chunks, with
// duplicates across and within chunks (of kept, opted-out and quarantined
// rows), gives the same report, quarantine list and rows whatever the
// number of workers.
func TestPatientsAcrossChunks(t *testing.T) {
	var valid []string
	for base := uint64(999000000); len(valid) < 120000; base++ {
		if c, ok := ingest.NHSCheckDigit(base); ok {
			valid = append(valid, fmt.Sprintf("%d%d", base, c))
		}
	}
	var b strings.Builder
	b.WriteString(headers["patients.csv"])
	row := func(nhs, dob string) { fmt.Fprintf(&b, "%s,Ann,Lee,%s,female,LS6 2AB,A,B86011,\n", nhs, dob) }
	row(valid[7], "not a date") // quarantined first, then a valid duplicate below
	for i, nhs := range valid {
		row(nhs, "1970-05-01")
		if i == 100 {
			row(valid[3], "1970-05-01") // a duplicate within the first chunk
		}
	}
	for _, i := range []int{5, 10, 7, 119990, 2} { // duplicates in the last chunk
		row(valid[i], "1970-05-01")
	}
	if b.Len() < 5<<20 {
		t.Fatalf("patients file of %d bytes: want at least two chunks", b.Len())
	}
	dir := writeExtract(t, map[string]string{"patients.csv": b.String()})
	optouts := valid[2] + "\n" + valid[100000] + "\n"

	var want string
	for _, workers := range []int{1, 2, 3} {
		o, err := ingest.LoadOptOuts(t.Context(), strings.NewReader(optouts))
		if err != nil {
			t.Fatal(err)
		}
		var q bytes.Buffer
		var got []string
		rep, err := ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: o, Workers: workers, Quarantine: &q},
			func(_ context.Context, tb ingest.Table, rec arrow.RecordBatch) error {
				defer rec.Release()
				for i := range int(rec.NumRows()) {
					got = append(got, rec.Column(0).ValueStr(i))
				}
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
		pr := rep.Tables["patients"]
		if pr.Reasons["duplicate_patient"] != 6 || pr.Reasons["invalid_date"] != 1 || pr.Reasons["ndop"] != 3 ||
			rep.Patients.Kept != 120000-3 || int64(len(got)) != rep.Patients.Kept {
			t.Errorf("%d workers: reasons %v, patients %+v, %d rows emitted", workers, pr.Reasons, rep.Patients, len(got))
		}
		if !strings.Contains(q.String(), `"line":2,"reason":"invalid_date"`) || !strings.Contains(q.String(), `"reason":"duplicate_patient","field":"nhs_number"`) {
			t.Errorf("%d workers: quarantine list:\n%.500s", workers, q.String())
		}
		rep.Tables["patients"].Files = nil
		js, _ := json.Marshal(rep)
		this := string(js) + "\n" + q.String() + "\n" + strings.Join(got, ",")
		if want == "" {
			want = this
		} else if this != want {
			t.Errorf("%d workers: report, quarantine list or rows differ from one worker's", workers)
		}
	}
}

// Ten equal digits pass Modulus 11 but are placeholders for an unknown
// number: such a patient row is quarantined as invalid_nhs_number, so are
// its events, and an opt-out list line of one is counted invalid.
func TestPlaceholderNHSNumbers(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"patients.csv": "nhs_number,given_name,family_name,date_of_birth,sex,postcode,ethnicity,gp_practice,date_of_death\n" +
			"0000000000,Ann,Smith,1980-01-02,female,LS6 2AB,A,B86001,\n" +
			"9434765919,Bob,Jones,1970-03-04,male,LS1 1AA,A,B86001,\n" +
			"999 999 9999,Cat,Smith,1980-01-02,female,LS6 2AB,A,B86001,\n",
		"encounters.csv": "encounter_id,nhs_number,type,start_date,end_date,organisation\n" +
			"E1,0000000000,gp,2023-01-01,2023-01-01,x\nE2,9434765919,gp,2023-01-01,,x\nE3,1111111111,gp,2023-02-01,,x\n",
		"conditions.csv":   "nhs_number,code_system,code,onset_date,encounter_id\n",
		"medications.csv":  "nhs_number,code_system,code,start_date,end_date\n",
		"observations.csv": "nhs_number,code_system,code,value,unit,effective_date\n",
		"optouts.txt":      "0000000000\n9434765919\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for d := range 10 {
		if _, err := ingest.ParseNHSNumber([]byte(strings.Repeat(string(rune('0'+d)), 10))); err != ingest.ErrNHSPlaceholder {
			t.Errorf("%d repeated: err %v, want ErrNHSPlaceholder", d, err)
		}
	}
	rep, rows := ingestDir(t, dir, 2)
	p, e := rep.Tables["patients"], rep.Tables["encounters"]
	if p.Reasons["invalid_nhs_number"] != 2 || p.OptedOut != 1 || rows[ingest.Patients] != 0 {
		t.Errorf("patients: reasons %v, opted out %d, emitted %d; want 2 invalid, 1 opted out, none", p.Reasons, p.OptedOut, rows[ingest.Patients])
	}
	if e.Reasons["invalid_nhs_number"] != 2 || e.OptedOut != 1 || rows[ingest.Encounters] != 0 {
		t.Errorf("encounters: reasons %v, emitted %d; want 2 invalid, 1 opted out", e.Reasons, rows[ingest.Encounters])
	}
	if rep.OptOuts.Numbers != 1 || rep.OptOuts.Invalid != 1 {
		t.Errorf("opt-out list: %d numbers, %d invalid; want 1, 1", rep.OptOuts.Numbers, rep.OptOuts.Invalid)
	}
}
