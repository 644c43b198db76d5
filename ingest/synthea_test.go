package ingest_test

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// syntheaDirs are real bulk FHIR exports that nobody on this project
// wrote: Synthea's public 10-patient sample, with an NHS number added to
// each Patient as a UK export carries it and nothing else changed, and
// two patients of a later run of it with their Observations (the first's
// Observation file was out of reach; see each README).
var syntheaDirs = []string{"testdata/synthea-bulk", "testdata/synthea-bulk-obs"}

// exportOracle reads an export with encoding/json, apart from ingest:
// resources by type, each event's patient id, and each patient's NHS
// number.
type exportOracle struct {
	byType    map[string]int
	eventsOf  map[string]map[string]int // resource type → patient id → count
	nhsOf     map[string]string         // patient id → NHS number
	rowsOfObs map[string]int            // patient id → observation rows (1 + components)
	strings   []string                  // every valueString of an observation or component
}

func readExport(t *testing.T, dir string) *exportOracle {
	t.Helper()
	o := &exportOracle{byType: map[string]int{}, eventsOf: map[string]map[string]int{}, nhsOf: map[string]string{}, rowsOfObs: map[string]int{}}
	files, err := filepath.Glob(filepath.Join(dir, "*.ndjson.gz"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no export files in %s: %v", dir, err)
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(zr)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			var r struct {
				ResourceType string `json:"resourceType"`
				ID           string `json:"id"`
				Identifier   []struct{ System, Value string }
				Subject      *struct{ Reference string }
				Patient      *struct{ Reference string }
				Component    []struct{ ValueString string }
				ValueString  string
			}
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.ResourceType == "" {
				continue // the export log
			}
			o.byType[r.ResourceType]++
			if r.ResourceType == "Patient" {
				for _, id := range r.Identifier {
					if id.System == ingest.SystemNHSNumber {
						o.nhsOf[r.ID] = id.Value
					}
				}
				continue
			}
			ref := ""
			if r.Subject != nil {
				ref = r.Subject.Reference
			} else if r.Patient != nil {
				ref = r.Patient.Reference
			}
			if id, ok := strings.CutPrefix(ref, "Patient/"); ok {
				if o.eventsOf[r.ResourceType] == nil {
					o.eventsOf[r.ResourceType] = map[string]int{}
				}
				o.eventsOf[r.ResourceType][id]++
				if r.ResourceType == "Observation" {
					o.rowsOfObs[id] += 1 + len(r.Component)
					for _, c := range r.Component {
						if c.ValueString != "" {
							o.strings = append(o.strings, c.ValueString)
						}
					}
					if r.ValueString != "" {
						o.strings = append(o.strings, r.ValueString)
					}
				}
			}
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
		zr.Close()
		f.Close()
	}
	return o
}

// TestSyntheaBulkExport takes a real export as it comes: numbered parts,
// events that name their patient by reference, MedicationRequest, codes
// in LOINC, RxNorm and CVX, US postcodes. Every resource of the types the
// hub reads is accounted for, at least 99% of each type's valid records
// are published, and one patient's opt-out removes every record that
// names them.
func TestSyntheaBulkExport(t *testing.T) {
	for _, dir := range syntheaDirs {
		t.Run(filepath.Base(dir), func(t *testing.T) { syntheaExport(t, dir) })
	}
}

func syntheaExport(t *testing.T, syntheaDir string) {
	want := readExport(t, syntheaDir)
	if want.byType["Observation"] > 0 && len(want.strings) == 0 {
		t.Fatal("oracle: no free-text observation values to look for")
	}
	if len(want.nhsOf) != want.byType["Patient"] || len(want.nhsOf) < 2 {
		t.Fatalf("oracle: %d NHS numbers for %d patients", len(want.nhsOf), want.byType["Patient"])
	}
	// The patient with the most records opts out.
	records := map[string]int{}
	for _, byPatient := range want.eventsOf {
		for id, n := range byPatient {
			records[id] += n
		}
	}
	var out string
	for id, n := range records {
		if out == "" || n > records[out] || n == records[out] && id < out {
			out = id
		}
	}
	o, err := ingest.LoadOptOuts(t.Context(), strings.NewReader(want.nhsOf[out]+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rows := map[ingest.Table]int64{}
	values := map[ingest.Table]map[string]map[string]int{} // column values of the kept rows
	var places []uint64
	var q strings.Builder
	rep, err := ingest.Run(t.Context(), ingest.Dir(syntheaDir), ingest.Options{OptOuts: o, Allocator: mem, Quarantine: &q},
		func(_ context.Context, tb ingest.Table, rec arrow.RecordBatch) error {
			defer rec.Release()
			rows[tb] += rec.NumRows()
			for c := range int(rec.NumCols()) {
				for i := range int(rec.NumRows()) {
					if v := rec.Column(c).ValueStr(i); v != "" && slices.Contains(want.strings, v) {
						return fmt.Errorf("%s: a free-text value reached column %s", tb, rec.Schema().Field(c).Name)
					}
				}
			}
			for _, name := range []string{"code_system", "class", "type_system"} {
				if idx := rec.Schema().FieldIndices(name); len(idx) > 0 {
					if values[tb] == nil {
						values[tb] = map[string]map[string]int{}
					}
					if values[tb][name] == nil {
						values[tb][name] = map[string]int{}
					}
					for i := range int(rec.NumRows()) {
						values[tb][name][rec.Column(idx[0]).ValueStr(i)]++
					}
				}
			}
			nhs := rec.Column(rec.Schema().FieldIndices("nhs_number")[0]).(*array.Uint64)
			if tb == ingest.Patients {
				places = append(places, nhs.Uint64Values()...)
				return nil
			}
			place := rec.Column(int(rec.NumCols()) - 1).(*array.Uint32)
			for i := range int(rec.NumRows()) {
				if p := place.Value(i); int(p) >= len(places) || places[p] != nhs.Value(i) {
					return fmt.Errorf("%s row %d: patient_place %d names another patient", tb, i, p)
				}
			}
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Format != "fhir" {
		t.Fatalf("format %s", rep.Format)
	}
	tables := map[string]ingest.Table{"Patient": ingest.Patients, "Encounter": ingest.Encounters, "Condition": ingest.Conditions,
		"MedicationRequest": ingest.Medications, "Observation": ingest.Observations, "Procedure": ingest.Procedures, "Immunization": ingest.Immunizations}
	for typ, n := range want.byType {
		tb, read := tables[typ]
		if !read {
			// Present but not ingested: listed with its count.
			if rep.NotIngested[typ] != int64(n) {
				t.Errorf("%s: %d resources not ingested, report says %d", typ, n, rep.NotIngested[typ])
			}
			continue
		}
		tr := rep.Tables[tb.String()]
		if got := tr.Resources[typ]; got != int64(n) {
			t.Errorf("%s: read %d resources, the export holds %d", typ, got, n)
		}
		if tr.Read != tr.Kept+tr.Quarantined+tr.OptedOut+tr.Excluded {
			t.Errorf("%s: counts do not add up", tb)
		}
		if rows[tb] != tr.Kept {
			t.Errorf("%s: emitted %d rows, report says %d kept", tb, rows[tb], tr.Kept)
		}
		// The opted-out patient's records, and only theirs, are out.
		optedOut := int64(want.eventsOf[typ][out])
		if typ == "Patient" {
			optedOut = 1
		}
		if typ == "Observation" {
			optedOut = int64(want.rowsOfObs[out])
		}
		if tr.OptedOut != optedOut || tr.Reasons["ndop"] != optedOut {
			t.Errorf("%s: %d opted out (reasons %v), want %d", typ, tr.OptedOut, tr.Reasons, optedOut)
		}
		valid := tr.Read - optedOut - tr.Excluded // statuses that say it did not happen are not valid records
		if tr.Kept*100 < valid*99 {
			t.Errorf("%s: kept %d of %d valid records (reasons %v)", typ, tr.Kept, valid, tr.Reasons)
		}
		for reason := range tr.Reasons {
			if !slices.Contains([]string{"ndop", "entered_in_error", "refuted", "cancelled", "not_done"}, reason) {
				t.Errorf("%s: %d records %s", typ, tr.Reasons[reason], reason)
			}
		}
	}
	// Every US postcode (a ZIP code) is nulled with a quarantine entry;
	// the patient stays.
	pt := rep.Tables["patients"]
	if pt.Kept != int64(want.byType["Patient"])-1 || pt.Nulled["invalid_postcode"] != pt.Kept {
		t.Errorf("patients: kept %d, nulled %v", pt.Kept, pt.Nulled)
	}
	if n := strings.Count(q.String(), `"reason":"invalid_postcode","field":"postcode","nulled":true`); int64(n) != pt.Nulled["invalid_postcode"] {
		t.Errorf("quarantine list: %d nulled postcodes, report %d", n, pt.Nulled["invalid_postcode"])
	}
	for _, nhs := range want.nhsOf {
		if strings.Contains(q.String(), nhs) || strings.Contains(fmt.Sprint(rep), nhs) {
			t.Fatal("an NHS number reached the report or the quarantine list")
		}
	}
	// The codes come as they are, their systems named; every encounter has
	// its class.
	for tb, wantSys := range map[ingest.Table]string{ingest.Medications: "rxnorm", ingest.Immunizations: "cvx",
		ingest.Conditions: "snomed", ingest.Procedures: "snomed", ingest.Observations: "loinc"} {
		if rows[tb] > 0 && fmt.Sprint(values[tb]["code_system"]) != "map["+wantSys+":"+fmt.Sprint(rows[tb])+"]" {
			t.Errorf("%s: code systems %v, want %d %s", tb, values[tb]["code_system"], rows[tb], wantSys)
		}
	}
	if classes := values[ingest.Encounters]["class"]; rows[ingest.Encounters] > 0 && (classes["(null)"] != 0 || classes["ambulatory"] == 0) {
		t.Errorf("encounter classes %v", classes)
	}
	if types := values[ingest.Encounters]["type_system"]; rows[ingest.Encounters] > 0 && types["snomed"] != int(rows[ingest.Encounters]) {
		t.Errorf("encounter types coded in %v, want every one in SNOMED CT", types)
	}
}
