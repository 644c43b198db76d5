package ingest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
)

// fhirPatient is a UK Core Patient with an NHS number (empty for none).
func fhirPatient(id, nhs, birth string) string {
	ident := ""
	if nhs != "" {
		ident = `"identifier":[{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"` + nhs + `"}],`
	}
	return `{"resourceType":"Patient","id":"` + id + `",` + ident + `"name":[{"use":"old","family":"Old","given":["X"]},{"use":"official","family":"Smith","given":["Ann"]}],"gender":"female","birthDate":"` + birth + `","address":[{"use":"home","postalCode":"LS1 1AA","period":{"end":"2010-01-01"}},{"use":"home","postalCode":"LS6 2AB"}]}`
}

// runBulk ingests the export files given and returns the report and each
// table's kept rows as text.
func runBulk(t *testing.T, files map[string]string, optouts string) (*ingest.Report, map[ingest.Table][]string, error) {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o, err := ingest.LoadOptOuts(t.Context(), strings.NewReader(optouts))
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	got := map[ingest.Table][]string{}
	rep, err := ingest.Run(t.Context(), ingest.Dir(dir), ingest.Options{OptOuts: o, Allocator: mem},
		func(_ context.Context, tb ingest.Table, rec arrow.RecordBatch) error {
			defer rec.Release()
			for r := range int(rec.NumRows()) {
				var cells []string
				for c := range int(rec.NumCols()) {
					cells = append(cells, rec.Column(c).ValueStr(r))
				}
				got[tb] = append(got[tb], strings.Join(cells, "|"))
			}
			return nil
		})
	return rep, got, err
}

func lines(rs ...string) string { return strings.Join(rs, "\n") + "\n" }

func TestBulkExportAsServersWriteIt(t *testing.T) {
	files := map[string]string{
		// Parts named three ways, one gzip-free part per style.
		"Patient.000.ndjson": lines(fhirPatient("p1", "9434765919", "1970-05-01"), fhirPatient("p2", "", "1980-01-01")),
		"Patient.001.ndjson": lines(fhirPatient("p3", "9876543210", "1990-02-03"), fhirPatient("p4", "4010232137", "1960-07-08"),
			fhirPatient("p5", "9990000018", "1950-01-01")),
		"1.Encounter.ndjson": lines(
			`{"resourceType":"Encounter","id":"e1","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"EMER"},"type":[{"coding":[{"system":"http://snomed.info/sct","code":"50849002","display":"Emergency room admission"}]}],"hospitalization":{"admitSource":{"coding":[{"code":"emd"}]},"dischargeDisposition":{"coding":[{"code":"home"}]}},"subject":{"reference":"Patient/p1"},"period":{"start":"2023-01-01T10:00:00+01:00","end":"2023-01-02"}}`,
			`{"resourceType":"Encounter","id":"e2","status":"cancelled","class":{"code":"AMB"},"subject":{"reference":"urn:uuid:p1"},"period":{"start":"2023-02-01"}}`,
			`{"resourceType":"Encounter","id":"e3","status":"finished","class":[{"coding":[{"code":"VR"}]}],"subject":{"reference":"https://lhcre.example.nhs.uk/fhir/Patient/p3/_history/2"},"period":{"start":"2023-03-01","end":"2022-01-01"}}`,
			`{"resourceType":"Encounter","id":"e4","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p2"},"period":{"start":"2023-03-01"}}`,
			`{"resourceType":"Encounter","id":"e5","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/nobody"},"period":{"start":"2023-03-01"}}`,
			`{"resourceType":"Encounter","id":"e6","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p4"},"period":{"start":"2023-03-01"}}`),
		"Condition-1.ndjson": lines(
			`{"resourceType":"Condition","clinicalStatus":{"coding":[{"code":"active"}]},"verificationStatus":{"coding":[{"code":"confirmed"}]},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]},"subject":{"reference":"Patient/p1"},"recordedDate":"2020-01-01"}`,
			`{"resourceType":"Condition","verificationStatus":{"coding":[{"code":"refuted"}]},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]},"subject":{"reference":"Patient/p1"},"onsetDateTime":"2020-01-01"}`,
			`{"resourceType":"Condition","verificationStatus":{"coding":[{"code":"entered-in-error"}]},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006"}]},"subject":{"reference":"Patient/p1"},"onsetDateTime":"2020-01-01"}`,
			`{"resourceType":"Condition","code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10","code":"E11.9"}]},"subject":{"reference":"Patient/p3"},"onsetPeriod":{"start":"2019-05-05"},"encounter":{"reference":"Encounter/e3"}}`,
			`{"resourceType":"Condition","code":{"coding":[{"system":"http://read.info/readv2","code":"C10.."}]},"subject":{"reference":"Patient/p3"},"onsetDateTime":"2019-05-05"}`,
			`{"resourceType":"Condition","code":{"coding":[{"system":"https://example.org/local-codes","code":"X1"}]},"subject":{"reference":"Patient/p3"},"onsetDateTime":"2019-05-05"}`),
		"MedicationRequest.000.ndjson": lines(
			`{"resourceType":"MedicationRequest","status":"active","intent":"order","medicationReference":{"reference":"#m"},"contained":[{"resourceType":"Medication","id":"m","code":{"coding":[{"system":"https://dmd.nhs.uk","code":"39113611000001102"}]}}],"subject":{"reference":"Patient/p1"},"authoredOn":"2023-01-05"}`,
			`{"resourceType":"MedicationRequest","status":"entered-in-error","intent":"order","medicationCodeableConcept":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"314076"}]},"subject":{"reference":"Patient/p1"},"authoredOn":"2023-01-05"}`,
			`{"resourceType":"MedicationRequest","status":"stopped","intent":"order","medicationReference":{"reference":"Medication/med-9"},"subject":{"reference":"Patient/p3"},"authoredOn":"2023-01-06"}`),
		"Medication.000.ndjson": lines(`{"resourceType":"Medication","id":"med-9","code":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"860975"}]}}`),
		"MedicationStatement.000.ndjson": lines(
			`{"resourceType":"MedicationStatement","status":"not-taken","medicationCodeableConcept":{"coding":[{"system":"https://dmd.nhs.uk","code":"39113611000001102"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2023-01-05"}`),
		"Observation.000.ndjson": lines(
			`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"85354-9"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2023-01-01","component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"unit":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":80,"code":"mm[Hg]"}}]}`,
			`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"72166-2"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2023-01-01","valueCodeableConcept":{"coding":[{"system":"http://snomed.info/sct","code":"266919005"}]}}`,
			`{"resourceType":"Observation","status":"cancelled","code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2023-01-01","valueQuantity":{"value":50}}`,
			`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://snomed.info/sct","code":"827241000000103"}]},"subject":{"reference":"Patient/p4"},"effectiveDateTime":"2021-01-01"}`,
			`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://snomed.info/sct","code":"827241000000103"}]},"subject":{"reference":"Patient/p5"},"effectiveDateTime":"2021-01-01"}`,
			`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://snomed.info/sct","code":"827261000000102"}]},"subject":{"reference":"Patient/p5"},"effectiveDateTime":"2022-01-01"}`,
			`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2023-01-01","valueQuantity":{"value":"heavy"}}`),
		"Procedure.000.ndjson": lines(
			`{"resourceType":"Procedure","status":"completed","code":{"coding":[{"system":"http://snomed.info/sct","code":"80146002"}]},"subject":{"reference":"Patient/p1"},"performedPeriod":{"start":"2022-01-01T09:00:00Z","end":"2022-01-03T09:00:00Z"},"encounter":{"reference":"Encounter/e1"}}`,
			`{"resourceType":"Procedure","status":"not-done","code":{"coding":[{"system":"http://snomed.info/sct","code":"80146002"}]},"subject":{"reference":"Patient/p1"},"performedDateTime":"2022-01-01"}`),
		"Immunization.000.ndjson": lines(
			`{"resourceType":"Immunization","status":"completed","vaccineCode":{"coding":[{"system":"http://hl7.org/fhir/sid/cvx","code":"208"}]},"patient":{"reference":"Patient/p1"},"occurrenceDateTime":"2021-03-01"}`,
			`{"resourceType":"Immunization","status":"not-done","vaccineCode":{"coding":[{"system":"http://hl7.org/fhir/sid/cvx","code":"208"}]},"patient":{"reference":"Patient/p3"},"occurrenceDateTime":"2021-03-01"}`),
		"EpisodeOfCare.000.ndjson": lines(
			`{"resourceType":"EpisodeOfCare","status":"finished","type":[{"coding":[{"system":"https://hub.nhs.example/registration-type","code":"gp"}]}],"patient":{"reference":"Patient/p1"},"managingOrganization":{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"B86001"}},"period":{"start":"2001-01-01","end":"2015-06-30"}}`,
			`{"resourceType":"EpisodeOfCare","status":"active","type":[{"coding":[{"system":"https://hub.nhs.example/registration-type","code":"gp"}]}],"patient":{"reference":"Patient/p1"},"managingOrganization":{"identifier":{"system":"https://fhir.nhs.uk/Id/ods-organization-code","value":"B86002"}},"period":{"start":"2015-07-01"}}`,
			`{"resourceType":"EpisodeOfCare","status":"active","type":[{"coding":[{"system":"http://snomed.info/sct","code":"1234"}]}],"patient":{"reference":"Patient/p1"},"period":{"start":"2015-07-01"}}`),
		"AllergyIntolerance.000.ndjson": lines(`{"resourceType":"AllergyIntolerance","patient":{"reference":"Patient/p1"}}`, `{"resourceType":"AllergyIntolerance"}`),
		"log.ndjson":                    lines(`{"event":"kickoff"}`),
	}
	// p4 objected by type 1 dissent, named by reference; p5 withdrew.
	rep, got, err := runBulk(t, files, "9990000026\n")
	if err != nil {
		t.Fatal(err)
	}
	check := func(tb ingest.Table, reasons map[string]int64, rows ...string) {
		t.Helper()
		tr := rep.Tables[tb.String()]
		delete(tr.Reasons, "")
		if len(tr.Reasons) != len(reasons) {
			t.Errorf("%s: reasons %v, want %v", tb, tr.Reasons, reasons)
		}
		for k, v := range reasons {
			if tr.Reasons[k] != v {
				t.Errorf("%s: reasons %v, want %v", tb, tr.Reasons, reasons)
			}
		}
		if strings.Join(got[tb], "\n") != strings.Join(rows, "\n") {
			t.Errorf("%s rows:\n got %q\nwant %q", tb, got[tb], rows)
		}
	}
	check(ingest.Patients, map[string]int64{"missing_nhs_number": 1, "type1_dissent": 1},
		"9434765919|Ann|Smith|1970-05-01|female|LS6 2AB|(null)|(null)|(null)",
		"9876543210|Ann|Smith|1990-02-03|female|LS6 2AB|(null)|(null)|(null)",
		"9990000018|Ann|Smith|1950-01-01|female|LS6 2AB|(null)|(null)|(null)")
	check(ingest.Encounters, map[string]int64{"cancelled": 1, "patient_excluded": 1, "unknown_patient": 1, "type1_dissent": 1},
		"e1|9434765919|(null)|2023-01-01|2023-01-02|(null)|emergency|snomed|50849002|emd|home|0",
		"e3|9876543210|(null)|2023-03-01|(null)|(null)|virtual|(null)|(null)|(null)|(null)|1")
	if n := rep.Tables["encounters"].Nulled["invalid_date"]; n != 1 {
		t.Errorf("encounters: an end before the start is nulled, got %v", rep.Tables["encounters"].Nulled)
	}
	check(ingest.Conditions, map[string]int64{"refuted": 1, "entered_in_error": 1},
		"9434765919|snomed|44054006|2020-01-01|(null)|active|confirmed|0",
		"9876543210|icd10|E11.9|2019-05-05|e3|(null)|(null)|1",
		"9876543210|read2|C10..|2019-05-05|(null)|(null)|(null)|1",
		"9876543210|https://example.org/local-codes|X1|2019-05-05|(null)|(null)|(null)|1")
	check(ingest.Medications, map[string]int64{"entered_in_error": 1, "not_done": 1},
		"9434765919|dmd|39113611000001102|2023-01-05|(null)|0",
		"9876543210|rxnorm|860975|2023-01-06|(null)|1")
	check(ingest.Observations, map[string]int64{"cancelled": 1, "type1_dissent": 1, "optout_code": 2},
		"9434765919|loinc|85354-9|(null)|(null)|2023-01-01|(null)|0",
		"9434765919|loinc|8480-6|120|mm[Hg]|2023-01-01|(null)|0",
		"9434765919|loinc|8462-4|80|mm[Hg]|2023-01-01|(null)|0",
		"9434765919|loinc|72166-2|(null)|(null)|2023-01-01|266919005|0",
		"9434765919|loinc|29463-7|(null)|(null)|2023-01-01|(null)|0")
	if n := rep.Tables["observations"].Nulled["invalid_value"]; n != 1 {
		t.Errorf("observations: a value that is not a number is nulled, got %v", rep.Tables["observations"].Nulled)
	}
	check(ingest.Procedures, map[string]int64{"not_done": 1}, "9434765919|snomed|80146002|2022-01-01|2022-01-03|e1|0")
	check(ingest.Immunizations, map[string]int64{"not_done": 1}, "9434765919|cvx|208|2021-03-01|(null)|0")
	check(ingest.Registrations, map[string]int64{"not_gp_registration": 1},
		"9434765919|B86001|2001-01-01|2015-06-30|0",
		"9434765919|B86002|2015-07-01|(null)|0")
	if rep.Type1.Dissenting != 1 || rep.Type1.Withdrawn != 1 || rep.Patients.OptedOutType1 != 1 {
		t.Errorf("type 1: %+v, patients %+v", rep.Type1, rep.Patients)
	}
	if got := rep.Tables["medications"].Resources; got["MedicationRequest"] != 3 || got["MedicationStatement"] != 1 {
		t.Errorf("medication resources %v", got)
	}
	if rep.NotIngested["AllergyIntolerance"] != 2 || !strings.Contains(fmt.Sprint(rep.NotIngested), "Medication") || !slices.Contains(rep.OtherFiles, "log.ndjson") {
		t.Errorf("not ingested %v, other files %v", rep.NotIngested, rep.OtherFiles)
	}
	if !slices.Contains(rep.CodeSystems, "https://example.org/local-codes") || rep.Tables["conditions"].OtherCodeSystems != 1 {
		t.Errorf("unknown code systems: %v, counted %d", rep.CodeSystems, rep.Tables["conditions"].OtherCodeSystems)
	}
	if len(rep.Tables["patients"].Files) != 2 || rep.Tables["patients"].Files[1].Name != "Patient.001.ndjson" {
		t.Errorf("patients files %+v", rep.Tables["patients"].Files)
	}
}

func TestBulkManifest(t *testing.T) {
	manifest := `{"transactionTime":"2026-11-30T00:00:00Z","request":"https://x/fhir/$export","requiresAccessToken":true,
		"output":[{"type":"Patient","url":"https://x/files/Patient.000.ndjson"},{"type":"Patient","url":"https://x/files/Patient.001.ndjson"},
		{"type":"Encounter","url":"https://x/files/4f2a9c"}],"error":[]}`
	files := map[string]string{
		"manifest.json":        manifest,
		"Patient.000.ndjson":   lines(fhirPatient("p1", "9434765919", "1970-05-01")),
		"Patient.001.ndjson":   lines(fhirPatient("p3", "9876543210", "1990-02-03")),
		"Encounter.002.ndjson": lines(`{"resourceType":"Encounter","id":"e1","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p3"},"period":{"start":"2023-01-01"}}`),
	}
	rep, got, err := runBulk(t, files, "9990000026\n")
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Manifest || len(got[ingest.Patients]) != 2 || len(got[ingest.Encounters]) != 1 {
		t.Errorf("manifest %v, rows %v", rep.Manifest, got)
	}
	// A file the manifest names but the folder lacks: a partial download.
	delete(files, "Patient.001.ndjson")
	if _, _, err := runBulk(t, files, "9990000026\n"); err == nil || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("err = %v, want the download called incomplete", err)
	}
}

func TestBulkFileNames(t *testing.T) {
	for _, c := range []struct {
		names []string
		err   string
	}{
		{names: []string{"Patient.ndjson"}},
		{names: []string{"Patient-1.ndjson", "Patient-2.ndjson"}},
		{names: []string{"1.Patient.ndjson", "2.Patient.ndjson"}},
		{names: []string{"Patient_000.ndjson"}},
		{names: []string{"patients.csv", "Patient.ndjson"}, err: "mixes CSV and NDJSON"},
		{names: []string{"Encounter.ndjson"}, err: "no extract found"},
	} {
		files := map[string]string{}
		for i, n := range c.names {
			if strings.HasSuffix(n, ".csv") {
				files[n] = strings.Join(ingest.Patients.Columns(), ",") + "\n"
				continue
			}
			files[n] = lines(fhirPatient("p"+n, []string{"9434765919", "9876543210"}[i%2], "1970-05-01"))
		}
		rep, got, err := runBulk(t, files, "9990000026\n")
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: err = %v, want %q", c.names, err, c.err)
			}
			continue
		}
		if err != nil || len(got[ingest.Patients]) != len(c.names) || len(rep.Tables["patients"].Files) != len(c.names) {
			t.Errorf("%v: err %v, %d patients", c.names, err, len(got[ingest.Patients]))
		}
	}
}

// A type 1 dissent that names one Patient resource by reference opts out
// the person, whatever other Patient resource carries the same NHS number
// and whichever comes first: entries by reference are turned into NHS
// numbers before any table is read.
func TestType1ByReferenceCoversEveryRecordOfTheNumber(t *testing.T) {
	files := map[string]string{
		"Patient.000.ndjson": lines(fhirPatient("old", "9434765919", "1970-05-01"), fhirPatient("p9", "9876543210", "1970-05-01")),
		"Patient.001.ndjson": lines(fhirPatient("new", "9434765919", "1970-05-01")),
		"Encounter.000.ndjson": lines(
			`{"resourceType":"Encounter","id":"e1","status":"finished","subject":{"reference":"Patient/old"},"period":{"start":"2023-01-01"}}`,
			`{"resourceType":"Encounter","id":"e2","status":"finished","subject":{"identifier":{"system":"https://fhir.nhs.uk/Id/nhs-number","value":"9434765919"}},"period":{"start":"2023-01-01"}}`,
			`{"resourceType":"Encounter","id":"e3","status":"finished","subject":{"reference":"Patient/p9"},"period":{"start":"2023-01-01"}}`),
		"Observation.000.ndjson": lines(
			`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://snomed.info/sct","code":"827241000000103"}]},"subject":{"reference":"Patient/new"},"effectiveDateTime":"2021-01-01"}`),
	}
	rep, got, err := runBulk(t, files, "9990000026\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(got[ingest.Patients]) != 1 || !strings.HasPrefix(got[ingest.Patients][0], "9876543210|") {
		t.Errorf("patients published: %q", got[ingest.Patients])
	}
	if e := rep.Tables["encounters"]; e.Reasons["type1_dissent"] != 2 || len(got[ingest.Encounters]) != 1 {
		t.Errorf("encounters: reasons %v, published %q", e.Reasons, got[ingest.Encounters])
	}
	if rep.Type1.Dissenting != 1 || rep.Patients.OptedOutType1 != 1 {
		t.Errorf("type 1 %+v, patients %+v", rep.Type1, rep.Patients)
	}
}

// The NHS number's verification status (UK Core) is counted for the
// report; a Patient is ingested whatever it says.
func TestNHSNumberVerificationCounted(t *testing.T) {
	withStatus := func(id, nhs, code string) string {
		return `{"resourceType":"Patient","id":"` + id + `","identifier":[{"extension":[{"url":"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus","valueCodeableConcept":{"coding":[{"system":"https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland","code":"` + code + `"}]}}],"system":"https://fhir.nhs.uk/Id/nhs-number","value":"` + nhs + `"}],"name":[{"family":"Smith","given":["Ann"]}],"gender":"female","birthDate":"1970-01-01"}`
	}
	rep, got, err := runBulk(t, map[string]string{"Patient.ndjson": lines(withStatus("a", "9434765919", "01"), withStatus("b", "9876543210", "02"),
		withStatus("c", "4010232137", "01"), fhirPatient("d", "9990000018", "1970-01-01"))}, "9990000026\n")
	if err != nil {
		t.Fatal(err)
	}
	if v := rep.Tables["patients"].NHSVerification; v["01"] != 2 || v["02"] != 1 || len(v) != 2 || len(got[ingest.Patients]) != 4 {
		t.Errorf("verification %v, %d patients kept", v, len(got[ingest.Patients]))
	}
}

// Patient.link: a replaced Patient is not published and its events are
// its successor's; an opt-out of either number is an opt-out of both.
func TestPatientLinks(t *testing.T) {
	linked := func(id, nhs, typ, other string) string {
		p := fhirPatient(id, nhs, "1970-05-01")
		return p[:len(p)-1] + `,"link":[{"other":{"reference":"Patient/` + other + `"},"type":"` + typ + `"}]}`
	}
	enc := func(id, patient string) string {
		return `{"resourceType":"Encounter","id":"` + id + `","status":"finished","subject":{"reference":"Patient/` + patient + `"},"period":{"start":"2023-01-01"}}`
	}
	files := map[string]string{
		"Patient.000.ndjson": lines(linked("old", "9434765919", "replaced-by", "new"), fhirPatient("new", "9876543210", "1970-05-01"),
			fhirPatient("tmp", "", "1980-01-01"), linked("c", "4010232137", "replaces", "tmp")),
		"Encounter.000.ndjson": lines(enc("e1", "old"), enc("e2", "new"), enc("e3", "tmp"), enc("e4", "c")),
	}
	rep, got, err := runBulk(t, files, "9990000026\n")
	if err != nil {
		t.Fatal(err)
	}
	p, e := rep.Tables["patients"], rep.Tables["encounters"]
	// tmp has no NHS number, which decides first; its events are still c's.
	if p.Reasons["replaced_patient"] != 1 || p.Reasons["missing_nhs_number"] != 1 || len(got[ingest.Patients]) != 2 || e.Kept != 4 {
		t.Errorf("patients: reasons %v, kept %q; encounters kept %d, reasons %v", p.Reasons, got[ingest.Patients], e.Kept, e.Reasons)
	}
	for _, row := range got[ingest.Encounters] {
		if !strings.Contains(row, "|9876543210|") && !strings.Contains(row, "|4010232137|") {
			t.Errorf("encounter %q is not the successor's", row)
		}
	}
	// The old record's number is on the opt-out list: the successor is out too.
	rep, got, err = runBulk(t, files, "9434765919\n")
	if err != nil {
		t.Fatal(err)
	}
	p, e = rep.Tables["patients"], rep.Tables["encounters"]
	if p.OptedOut != 2 || len(got[ingest.Patients]) != 1 || e.OptedOut != 2 || e.Kept != 2 {
		t.Errorf("opt-out through a link: patients opted out %d, kept %q; encounters opted out %d, kept %d", p.OptedOut, got[ingest.Patients], e.OptedOut, e.Kept)
	}
}
