package cohorts

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// importFixture imports a committed OpenCodelists download as name@version.
func importFixture(t *testing.T, store *Codelists, file, name, version string) *Codelist {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "codelists", file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	codes, system, err := ParseOpenCodelistsCSV(f, "")
	if err != nil {
		t.Fatal(err)
	}
	c := &Codelist{Name: name, Version: version, System: system, Codes: codes, Source: file}
	if err := store.Put(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// OpenCodelists downloads parse with their system inferred, duplicates
// (a code once for each source) counted once; what is not a code list of
// ours is refused with the line or the reason.
func TestParseOpenCodelistsCSV(t *testing.T) {
	for _, c := range []struct {
		file, system string
		n            int
		has          string
	}{{"nhsd-primary-care-domain-refsets-dmtype2_cod.csv", SystemSNOMED, 23, "44054006"},
		{"reducehf-type-2-diabetes-icd10.csv", SystemICD10, 11, "E119"}} {
		f, err := os.Open(filepath.Join("testdata", "codelists", c.file))
		if err != nil {
			t.Fatal(err)
		}
		codes, system, err := ParseOpenCodelistsCSV(f, "")
		f.Close()
		if err != nil || system != c.system || len(codes) != c.n || !slices.Contains(codes, c.has) || !slices.IsSorted(codes) {
			t.Errorf("%s: %d codes of %s (%v)", c.file, len(codes), system, err)
		}
	}
	for _, c := range []struct{ csv, system, want string }{
		{"code,term\n44054006,T2D\n44054006,T2D again\n", "", ""},
		{"dmd_type,dmd_id,dmd_name\nVMP,318824000,x\n", "", ""},
		{"CTV3ID,CTV3PreferredTermDesc\nH33..,Asthma\n", "", "no code column"},
		{"code,term\nH33..,Asthma\nX101t,Childhood asthma\n", "", "neither all SNOMED CT nor all ICD-10"},
		{"code,term\n44054006,T2D\n44054007,bad check digit\n", "snomed", "not a valid snomed code"},
		{"code,term\n44054006,T2D\n,empty\n", "", "line 3: an empty code"},
		{"code,term\n", "", "no code"},
		{"code,term\nE11,x\n", "ctv3", "system"},
	} {
		codes, system, err := ParseOpenCodelistsCSV(strings.NewReader(c.csv), c.system)
		if c.want == "" && (err != nil || len(codes) != 1) || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%q: %v %s %v, want %q", c.csv, codes, system, err, c.want)
		}
	}
}

// A stored version never changes: the same codes again are accepted, other
// codes refused; a list is found by name@version and listed without codes.
func TestCodelistStore(t *testing.T) {
	store, err := OpenCodelists(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := importFixture(t, store, "nhsd-primary-care-domain-refsets-dmtype2_cod.csv", "nhsd-primary-care-domain-refsets/dmtype2_cod", "fixture")
	again := importFixture(t, store, "nhsd-primary-care-domain-refsets-dmtype2_cod.csv", "nhsd-primary-care-domain-refsets/dmtype2_cod", "fixture")
	if again.SHA256 != c.SHA256 || len(c.SHA256) != 64 {
		t.Errorf("hashes %s, %s", c.SHA256, again.SHA256)
	}
	changed := &Codelist{Name: c.Name, Version: c.Version, System: SystemSNOMED, Codes: []string{"44054006"}}
	if err := store.Put(changed); !errors.Is(err, ErrCodelistChanged) {
		t.Errorf("a changed version stored: %v", err)
	}
	got, err := store.Get("nhsd-primary-care-domain-refsets/dmtype2_cod@fixture")
	if err != nil || len(got.Codes) != 23 {
		t.Fatalf("get: %v", err)
	}
	for _, ref := range []string{"nhsd-primary-care-domain-refsets/dmtype2_cod@other", "nobody/nothing@1"} {
		if _, err := store.Get(ref); !errors.Is(err, ErrNoCodelist) {
			t.Errorf("%s: %v", ref, err)
		}
	}
	for _, ref := range []string{"../etc/passwd@1", "a@1", "Upper/case@1", "a/b", "a/b@", "a/../../b@1"} {
		if _, err := store.Get(ref); err == nil || errors.Is(err, ErrNoCodelist) {
			t.Errorf("%s: %v, want a malformed reference", ref, err)
		}
	}
	list, err := store.List()
	if err != nil || len(list) != 1 || list[0].Count != 23 || list[0].Codes != nil {
		t.Errorf("list: %+v %v", list, err)
	}
}

// A criterion naming a code list selects exactly the patients that listing
// its codes selects, and the ICD-10 list (E119, as OpenCodelists writes
// it) matches the data's E11.9; the answer cites the lists; an unknown
// list, or one of the wrong system, is refused before any budget is
// spent.
func TestQueryWithCodelists(t *testing.T) {
	s := newService(t)
	store, err := OpenCodelists(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.codelists = store
	t2d := importFixture(t, store, "nhsd-primary-care-domain-refsets-dmtype2_cod.csv", "nhsd-primary-care-domain-refsets/dmtype2_cod", "fixture")
	importFixture(t, store, "reducehf-type-2-diabetes-icd10.csv", "reducehf/type-2-diabetes-icd10", "fixture")
	q := func(codes string) *Query {
		q := mustParse(t, `{"dataset": "gp", "criteria": {"condition": {"codes": `+codes+`}}, "measures": [{"kind": "count"}], "epsilon": 1}`)
		if _, err := resolveCodelists(q, store); err != nil {
			t.Fatal(err)
		}
		return q
	}
	listed := `{"snomed": ["` + strings.Join(t2d.Codes, `", "`) + `"]}`
	byList := exactOf(t, s, q(`{"codelist": "nhsd-primary-care-domain-refsets/dmtype2_cod@fixture"}`))[0].count
	byCodes := exactOf(t, s, q(listed))[0].count
	icd := q(`{"codelist": "reducehf/type-2-diabetes-icd10@fixture"}`)
	byICD := exactOf(t, s, icd)[0].count
	if want := int64(len(newOracle(t, lake(t), icd).cohort())); byICD != want || byICD == 0 {
		t.Errorf("ICD-10 list: %d patients, the oracle %d", byICD, want)
	}
	// A list of E119 alone meets the data's E11.9.
	if err := store.Put(&Codelist{Name: "test/e119", Version: "1", System: SystemICD10, Codes: []string{"E119"}}); err != nil {
		t.Fatal(err)
	}
	undotted := exactOf(t, s, q(`{"codelist": "test/e119@1"}`))[0].count
	dotted := exactOf(t, s, q(`{"icd10": ["E11.9"]}`))[0].count
	if undotted != dotted || dotted == 0 {
		t.Errorf("E119 by a list: %d patients; E11.9 listed: %d", undotted, dotted)
	}
	if byList != byCodes || byList == 0 {
		t.Errorf("by the list %d patients, by its codes %d", byList, byCodes)
	}
	project(t, s, "p", 10, 1e-5)
	a, err := s.Query(t.Context(), "p", mustParse(t, `{"dataset": "gp", "criteria": {"any": [
		{"condition": {"codes": {"codelist": "nhsd-primary-care-domain-refsets/dmtype2_cod@fixture"}}},
		{"condition": {"codes": {"codelist": "reducehf/type-2-diabetes-icd10@fixture", "icd10": ["E10"]}}}]}, "measures": [{"kind": "count"}], "epsilon": 1}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Codelists) != 2 || a.Codelists[0].Ref != "nhsd-primary-care-domain-refsets/dmtype2_cod@fixture" || a.Codelists[0].SHA256 != t2d.SHA256 || a.Codelists[0].Codes != 23 {
		t.Errorf("the answer cites %+v", a.Codelists)
	}
	for _, c := range []struct{ query, want string }{
		{`{"dataset": "gp", "criteria": {"condition": {"codes": {"codelist": "nobody/nothing@1"}}}, "measures": [{"kind": "count"}], "epsilon": 1}`, "no such code list"},
		{`{"dataset": "gp", "criteria": {"medication": {"codes": {"codelist": "reducehf/type-2-diabetes-icd10@fixture"}}}, "measures": [{"kind": "count"}], "epsilon": 1}`, "medications are coded in dmd"},
	} {
		_, err := s.Query(t.Context(), "p", mustParse(t, c.query))
		var qe *QueryError
		if !errors.As(err, &qe) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a query error saying %q", c.query, err, c.want)
		}
	}
	if spent, _, _ := s.Spent("p"); spent != units(1, EpsilonUnit) {
		t.Errorf("spent %d units, want one query's", spent)
	}
}
