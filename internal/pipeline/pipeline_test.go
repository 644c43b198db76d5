package pipeline_test

import (
	"context"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/nhs-hub/hub/catalog"
	lakefile "github.com/nhs-hub/hub/catalog/file"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/nhs-hub/hub/internal/synth"
	"github.com/nhs-hub/hub/internal/testkey"
	"github.com/nhs-hub/hub/internal/testlake"
)

func key(t *testing.T, b byte) *deid.Key {
	k, err := deid.NewKey(testkey.Bytes(b))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type fixture struct {
	extract string
	lake    *catalog.Lake
	root    string
}

func newFixture(t *testing.T, patients int) *fixture {
	t.Helper()
	dir := t.TempDir()
	if _, err := synth.Generate(t.Context(), dir, synth.Options{Patients: patients, Seed: 11, FaultRate: 0.02}); err != nil {
		t.Fatal(err)
	}
	return newFixtureAt(t, dir)
}

// newFixtureAt is a fixture of the extract in dir and a new lake.
func newFixtureAt(t *testing.T, dir string) *fixture {
	t.Helper()
	root := t.TempDir()
	store, err := lakefile.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{extract: dir, lake: catalog.NewLake(store), root: root}
}

func (f *fixture) config(t *testing.T, k *deid.Key, policy deid.Policy) pipeline.Config {
	o, err := os.Open(filepath.Join(f.extract, "optouts.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	optouts, err := ingest.LoadOptOuts(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	return pipeline.Config{Dataset: "test", Source: ingest.Dir(f.extract), SourceName: f.extract,
		Ingest: ingest.Options{OptOuts: optouts}, OptOutDate: time.Now().Format(time.DateOnly), Policy: policy, Key: k, Lake: f.lake}
}

func policy() deid.Policy {
	p := deid.DefaultPolicy()
	p.ReferenceDate = "2025-01-01"
	return p
}

// identifiers returns every identifiable value of the extract's patients.
func identifiers(t *testing.T, extract string) []string {
	f, err := os.Open(filepath.Join(extract, "patients.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.LazyQuotes, r.FieldsPerRecord = true, -1
	rows, _ := r.ReadAll()
	var ids []string
	for _, row := range rows[1:] {
		if len(row) < 6 {
			continue
		}
		for _, v := range []string{row[0], row[1], row[2], row[3], row[5]} {
			if len(v) >= 5 && len(v) < 100 {
				ids = append(ids, v)
			}
		}
	}
	return ids
}

// isName reports whether an identifier is a name rather than a number,
// date or postcode.
func isName(s string) bool { return !strings.ContainsAny(s, "0123456789") }

// vocabulary lists the closed vocabularies of published columns.
var vocabulary = map[string]string{
	"sex":                 "|male|female|other|unknown|(null)|",
	"age_band":            "|0-4|5-9|10-14|15-19|20-24|25-29|30-34|35-39|40-44|45-49|50-54|55-59|60-64|65-69|70-74|75-79|80-84|85-89|90+|(null)|",
	"ethnicity_group":     "|White|Mixed|Asian|Black|Other|Not stated|(null)|",
	"ethnicity":           "|A|B|C|D|E|F|G|H|J|K|L|M|N|P|R|S|Z|(null)|",
	"type":                "|gp|outpatient|inpatient|ae|",
	"class":               "|ambulatory|emergency|inpatient|(null)|",
	"code_system":         "|snomed|icd10|dmd|loinc|opcs4|" + synth.LocalCodeSystem + "|",
	"clinical_status":     "|(null)|",
	"verification_status": "|(null)|",
}

func TestPublishHoldsNoIdentifier(t *testing.T) {
	f := newFixture(t, 2000)
	res, err := pipeline.Run(t.Context(), f.config(t, key(t, 1), policy()))
	if err != nil {
		t.Fatal(err)
	}
	// Every value of every published file, as text, and every file's bytes.
	// Exact event dates are kept by the default policy, so any date of the
	// window appears among events; dates of birth are looked for in the
	// patients table, where a birth date column would leak.
	var all, patients, raw strings.Builder
	read := map[string]int64{}
	for table := range res.Manifest.Tables {
		for _, rec := range testlake.ReadTable(t, f.lake, res.Manifest, table) {
			read[table] += rec.NumRows()
			for c := 0; c < int(rec.NumCols()); c++ {
				isDate := rec.Column(c).DataType().ID() == arrow.DATE32
				allowed, closed := vocabulary[rec.Schema().Field(c).Name]
				for r := 0; r < int(rec.NumRows()); r++ {
					v := rec.Column(c).ValueStr(r)
					if closed {
						// A closed vocabulary: nothing else can flow through it.
						if !strings.Contains(allowed, "|"+v+"|") {
							t.Fatalf("%s.%s holds %q, outside its vocabulary", table, rec.Schema().Field(c).Name, v)
						}
						continue
					}
					if table == "patients" && isDate && v != "(null)" && !strings.HasSuffix(v, "-01") {
						t.Fatalf("patients.%s holds a date that is not a month: %s", rec.Schema().Field(c).Name, v)
					}
					if table == "patients" && !isDate {
						patients.WriteString(v + "\n")
					}
					if !isDate {
						all.WriteString(v + "\n")
					}
				}
			}
			rec.Release()
		}
		for _, part := range res.Manifest.Tables[table].Parts {
			b, _ := os.ReadFile(filepath.Join(f.root, part.Path))
			raw.Write(b)
		}
	}
	m, _ := os.ReadFile(filepath.Join(f.root, "datasets/test/versions/1/manifest.json"))
	raw.Write(m)
	text, ptext, rtext := all.String(), patients.String(), raw.String()
	ids := identifiers(t, f.extract)
	if len(ids) < 5000 {
		t.Fatalf("only %d identifiers to look for", len(ids))
	}
	for _, id := range ids {
		// Names are looked for among values; numbers, dates and postcodes
		// also in the files' bytes (statistics, dictionaries, footers).
		if strings.Contains(text, id) || strings.Contains(ptext, id) || (!isName(id) && strings.Contains(rtext, id)) {
			t.Fatalf("published data contains an identifier of the extract: %q", id)
		}
	}
	// Row counts match the ingest report, and the parts hold them.
	for table, tm := range res.Manifest.Tables {
		if tm.Rows != res.Ingest.Tables[table].Kept || read[table] != tm.Rows {
			t.Errorf("%s: %d rows published (%d read back), %d kept by ingest", table, tm.Rows, read[table], res.Ingest.Tables[table].Kept)
		}
	}
	// The patients are written in shares, a part each, on every core.
	if got, want := len(res.Manifest.Tables["patients"].Parts), min(runtime.GOMAXPROCS(0), 3); got != want {
		t.Errorf("patients table in %d parts, want %d (one a core, at least 512 patients each)", got, want)
	}
	if err := f.lake.Verify(t.Context(), res.Manifest); err != nil {
		t.Fatal(err)
	}
}

// patientIDs returns the set of patient pseudonyms of a table.
func patientIDs(t *testing.T, lake *catalog.Lake, m *catalog.Manifest, table string) map[string]bool {
	ids := map[string]bool{}
	for _, rec := range testlake.ReadTable(t, lake, m, table) {
		col := rec.Column(rec.Schema().FieldIndices("patient_id")[0]).(*array.FixedSizeBinary)
		for i := 0; i < col.Len(); i++ {
			ids[string(col.Value(i))] = true
		}
		rec.Release()
	}
	return ids
}

func TestPseudonyms(t *testing.T) {
	f := newFixture(t, 500)
	a, err := pipeline.Run(t.Context(), f.config(t, key(t, 1), policy()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := pipeline.Run(t.Context(), f.config(t, key(t, 1), policy())) // same key: version 2
	if err != nil {
		t.Fatal(err)
	}
	other := policy()
	other.Domain = "another-study"
	c, err := pipeline.Run(t.Context(), f.config(t, key(t, 1), other))
	if err != nil {
		t.Fatal(err)
	}
	pa, pb, pc := patientIDs(t, f.lake, a.Manifest, "patients"), patientIDs(t, f.lake, b.Manifest, "patients"), patientIDs(t, f.lake, c.Manifest, "patients")
	if len(pa) == 0 || fmt.Sprint(len(pa)) != fmt.Sprint(a.Manifest.Tables["patients"].Rows) {
		t.Fatalf("%d distinct pseudonyms for %d patients", len(pa), a.Manifest.Tables["patients"].Rows)
	}
	for id := range pa {
		if !pb[id] {
			t.Fatal("pseudonyms differ under the same key and domain")
		}
		if pc[id] {
			t.Fatal("a pseudonym is shared across domains")
		}
	}
	// Events link to patients by the same pseudonym.
	for _, table := range []string{"encounters", "conditions", "medications", "observations"} {
		for id := range patientIDs(t, f.lake, a.Manifest, table) {
			if !pa[id] {
				t.Fatalf("%s holds a pseudonym with no patient", table)
			}
		}
	}
	if a.Manifest.Version != 1 || b.Manifest.Version != 2 || c.Manifest.Version != 3 {
		t.Errorf("versions %d, %d, %d", a.Manifest.Version, b.Manifest.Version, c.Manifest.Version)
	}
}

func TestTamperedPartDetected(t *testing.T) {
	f := newFixture(t, 300)
	res, err := pipeline.Run(t.Context(), f.config(t, key(t, 2), policy()))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(f.root, res.Manifest.Tables["observations"].Parts[0].Path)
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 1
	os.WriteFile(p, b, 0o644)
	if err := f.lake.Verify(t.Context(), res.Manifest); !errors.Is(err, catalog.ErrTampered) {
		t.Fatalf("err = %v, want ErrTampered", err)
	}
}

// failingStore fails the n-th object write, as a full disk would.
type failingStore struct {
	catalog.Store
	mu sync.Mutex // parts are created from several goroutines
	n  int
}

type failingWriter struct {
	io.WriteCloser
	fail bool
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.fail {
		return 0, errors.New("no space left on device")
	}
	return w.WriteCloser.Write(p)
}

func (s *failingStore) Create(ctx context.Context, p string) (io.WriteCloser, error) {
	w, err := s.Store.Create(ctx, p)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n--
	return &failingWriter{WriteCloser: w, fail: s.n == 0}, err
}

// A run that fails at any part leaves no visible version; gc then removes
// its files and the next run publishes.
func TestCrashLeavesNothingVisible(t *testing.T) {
	f := newFixture(t, 300)
	for n := 1; n <= 5; n++ {
		cfg := f.config(t, key(t, 3), policy())
		cfg.Lake = catalog.NewLake(&failingStore{Store: f.lake.Store(), n: n})
		if _, err := pipeline.Run(t.Context(), cfg); err == nil {
			t.Fatalf("run failing at object %d succeeded", n)
		}
		if ds, _ := f.lake.Datasets(t.Context()); len(ds) != 0 {
			t.Fatalf("a failed run left a visible dataset: %v", ds)
		}
	}
	removed, err := f.lake.GC(t.Context(), "test", 0)
	if err != nil || len(removed) == 0 {
		t.Fatalf("gc removed %d objects: %v", len(removed), err)
	}
	left, _ := f.lake.Store().List(t.Context(), "datasets/")
	if len(left) != 0 {
		t.Fatalf("gc left %v", left)
	}
	res, err := pipeline.Run(t.Context(), f.config(t, key(t, 3), policy()))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.lake.Verify(t.Context(), res.Manifest); err != nil {
		t.Fatal(err)
	}
}

func TestKeyRules(t *testing.T) {
	if _, err := deid.NewKey([]byte("short")); !errors.Is(err, deid.ErrKeyTooShort) {
		t.Errorf("short key: err = %v", err)
	}
	// Hex text is decoded: 32 bytes of 0xab are one value, refused.
	if _, err := deid.NewKey([]byte(strings.Repeat("ab", 32) + "\n")); !errors.Is(err, deid.ErrKeyWeak) {
		t.Errorf("a hex key of one byte value: err = %v", err)
	}
	hexKey := []byte(hex.EncodeToString(testkey.Bytes(5)) + "\n")
	k, err := deid.NewKey(hexKey)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(k.String(), string(hexKey[:8])) || len(k.Fingerprint()) != 16 {
		t.Errorf("key prints %q", k.String())
	}
}

// TestEventDatePolicies publishes one extract with exact, month and
// shifted event dates and compares them encounter by encounter: months are
// the first of the true month, and each patient's dates move by one
// offset of their own, never zero, within the policy's bound.
func TestEventDatePolicies(t *testing.T) {
	f := newFixture(t, 400)
	type enc struct {
		patient    string
		start, end arrow.Date32
		hasEnd     bool
	}
	encounters := func(p deid.Policy) map[string]enc {
		res, err := pipeline.Run(t.Context(), f.config(t, key(t, 1), p))
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]enc{}
		for _, rec := range testlake.ReadTable(t, f.lake, res.Manifest, "encounters") {
			ids, pids := rec.Column(0).(*array.FixedSizeBinary), rec.Column(1).(*array.FixedSizeBinary)
			start, end := rec.Column(3).(*array.Date32), rec.Column(4).(*array.Date32)
			for i := 0; i < int(rec.NumRows()); i++ {
				out[string(ids.Value(i))] = enc{string(pids.Value(i)), start.Value(i), end.Value(i), end.IsValid(i)}
			}
			rec.Release()
		}
		return out
	}
	keep := encounters(policy())
	month := policy()
	month.EventDates = deid.DatesMonth
	monthly := encounters(month)
	shift := policy()
	shift.EventDates, shift.ShiftDays = deid.DatesShift, 30
	shifted := encounters(shift)
	if len(keep) < 1000 || len(monthly) != len(keep) || len(shifted) != len(keep) {
		t.Fatalf("encounters: %d kept, %d by month, %d shifted", len(keep), len(monthly), len(shifted))
	}
	first := func(d arrow.Date32) arrow.Date32 {
		tm := d.ToTime()
		return arrow.Date32FromTime(tm.AddDate(0, 0, 1-tm.Day()))
	}
	offsets := map[string]arrow.Date32{}
	distinct := map[arrow.Date32]bool{}
	for id, k := range keep {
		m, s := monthly[id], shifted[id]
		if m.patient != k.patient || s.patient != k.patient {
			t.Fatal("an encounter changed patient between policies")
		}
		if m.start != first(k.start) || m.hasEnd != k.hasEnd || (k.hasEnd && m.end != first(k.end)) {
			t.Fatalf("month policy: %v..%v published as %v..%v", k.start, k.end, m.start, m.end)
		}
		off := s.start - k.start
		if off == 0 || off < -30 || off > 30 {
			t.Fatalf("shift of %d days, want 1..30 either way", off)
		}
		if s.hasEnd != k.hasEnd || (k.hasEnd && s.end-k.end != off) {
			t.Fatal("an encounter's end moved by another offset than its start")
		}
		if o, ok := offsets[k.patient]; ok && o != off {
			t.Fatalf("one patient's dates moved by %d and %d days", o, off)
		}
		offsets[k.patient] = off
		distinct[off] = true
	}
	if len(distinct) < 20 {
		t.Errorf("only %d distinct offsets over %d patients", len(distinct), len(offsets))
	}
}
