package pipeline_test

import (
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nhs-hub/hub/deid"
	"github.com/nhs-hub/hub/internal/pipeline"
	"github.com/nhs-hub/hub/internal/synth"
	"github.com/nhs-hub/hub/internal/testlake"
)

// TestKAnonymityFromOutside publishes a 50,000-patient synthetic extract
// with the default policy and counts the patients table as an outside
// reader would: grouped by every released column but the pseudonym, no
// class holds fewer than k patients; and comparing each published row
// with the extract's own row (found by its pseudonym) finds exactly the
// generalisations and suppressions the report counts. With practices
// kept, a patient whose practice is withheld has it withheld from their
// registrations too.
func TestKAnonymityFromOutside(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 50,000 patients")
	}
	for _, tc := range []struct {
		patients  int
		practices bool
	}{{50000, false}, {20000, true}} {
		t.Run(fmt.Sprintf("%d patients, practices %v", tc.patients, tc.practices), func(t *testing.T) {
			dir := t.TempDir()
			if _, err := synth.Generate(t.Context(), dir, synth.Options{Patients: tc.patients, Seed: 21}); err != nil {
				t.Fatal(err)
			}
			if !tc.practices {
				addRareCodes(t, dir)
			}
			f := newFixtureAt(t, dir)
			p := policy()
			p.KeepGPPractice = tc.practices
			if tc.practices {
				// The default path withholds every practice of 20,000
				// patients (practice goes before the year of birth); a hub
				// that wants practices keeps them past the age band.
				p.Generalisation = []string{"ethnicity:group", "death:year", "place:area", "birth:year", "birth:band",
					"place:none", "ethnicity:none", "practice:none"}
			}
			k := key(t, 3)
			res, err := pipeline.Run(t.Context(), f.config(t, k, p))
			if err != nil {
				t.Fatal(err)
			}
			rep := res.Deid.KAnonymity
			t.Log(rep.Summary())

			// The extract's patients, by pseudonym.
			raw := map[string][]string{}
			ps := deid.NewPseudonymiser(k, p.Domain, p.PseudonymBytes)
			rf, err := os.Open(filepath.Join(dir, "patients.csv"))
			if err != nil {
				t.Fatal(err)
			}
			defer rf.Close()
			rows, err := csv.NewReader(rf).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows[1:] {
				nhs, err := strconv.ParseUint(r[0], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				raw[string(ps.Patient(nhs))] = r
			}

			recs := testlake.ReadTable(t, f.lake, res.Manifest, "patients")
			classes := map[string]int{}
			got := map[string]map[string]int{}
			generalised, suppressed, n := 0, 0, 0
			withheld := map[string]bool{} // pseudonyms whose practice is withheld
			for _, rec := range recs {
				col := map[string]arrow.Array{}
				for i, fld := range rec.Schema().Fields() {
					col[fld.Name] = rec.Column(i)
				}
				v := func(name string, i int) string {
					a := col[name]
					if a == nil || a.IsNull(i) {
						return ""
					}
					return a.ValueStr(i)
				}
				pids := col["patient_id"]
				for i := range int(rec.NumRows()) {
					n++
					var vals []string
					for _, fld := range rec.Schema().Fields()[1:] {
						vals = append(vals, v(fld.Name, i))
					}
					classes[strings.Join(vals, "|")]++
					pid := string(pids.(interface{ Value(int) []byte }).Value(i))
					r, ok := raw[pid]
					if !ok {
						t.Fatalf("a published patient is not in the extract")
					}
					if strings.Join(vals, "") == "" {
						suppressed++
						withheld[pid] = true
						continue
					}
					any := false
					g := func(qi, level string) {
						if got[qi] == nil {
							got[qi] = map[string]int{}
						}
						got[qi][level]++
						any = true
					}
					dob, pc, eth, gp, dod := r[3], r[5], r[6], r[7], r[8]
					switch {
					case v("age_band", i) == "":
						g("birth", "none")
					case v("year_of_birth", i) == "":
						g("birth", "band")
					case v("month_of_birth", i) == "":
						g("birth", "year")
					}
					if v("year_of_birth", i) != "" && v("year_of_birth", i) != strings.TrimLeft(dob[:4], "0") {
						t.Fatalf("year of birth %s published for %s", v("year_of_birth", i), dob[:4])
					}
					if v("sex", i) == "" {
						g("sex", "none")
					}
					district, _, _ := strings.Cut(pc, " ")
					switch {
					case district != "" && v("postcode_area", i) == "":
						g("place", "none")
					case district != "" && v("district", i) == "":
						g("place", "area")
					case v("district", i) != district:
						t.Fatalf("district %q published for %q", v("district", i), district)
					}
					switch {
					case v("ethnicity_group", i) == "":
						g("ethnicity", "none")
					case len(eth) == 1 && v("ethnicity", i) == "":
						g("ethnicity", "group")
					}
					if tc.practices && v("gp_practice", i) == "" {
						withheld[pid] = true
						if gp != "" {
							g("practice", "none")
						}
					}
					if dod != "" {
						switch {
						case v("death_year", i) != dod[:4]:
							t.Fatalf("death year %q published for %s", v("death_year", i), dod[:4])
						case v("death_month", i) == "":
							g("death", "year")
						}
					}
					if any {
						generalised++
					}
				}
				rec.Release()
			}
			for c, m := range classes {
				if m < p.K {
					t.Errorf("class %q holds %d patients, fewer than k=%d", c, m, p.K)
				}
			}
			if rep.Patients != n || rep.Generalised != generalised || rep.Suppressed != suppressed {
				t.Errorf("report: %d patients, %d generalised, %d suppressed; the outside count finds %d, %d, %d",
					rep.Patients, rep.Generalised, rep.Suppressed, n, generalised, suppressed)
			}
			if fmt.Sprint(rep.ByAttribute) != fmt.Sprint(got) {
				t.Errorf("report by attribute %v;\nthe outside count finds %v", rep.ByAttribute, got)
			}
			t.Logf("%d classes over %d patients", len(classes), n)
			// Codes: every published (system, code) but "other" has k
			// patients, and the rows published as "other" are the ones
			// the report says it changed.
			for _, table := range []string{"conditions", "medications", "observations", "procedures", "immunizations"} {
				patients := map[[2]string]map[string]bool{}
				others := 0
				for _, rec := range testlake.ReadTable(t, f.lake, res.Manifest, table) {
					pids, systems, codes := rec.Column(0), rec.Column(1), rec.Column(2)
					for i := range int(rec.NumRows()) {
						c := [2]string{systems.ValueStr(i), codes.ValueStr(i)}
						if patients[c] == nil {
							patients[c] = map[string]bool{}
						}
						patients[c][string(pids.(interface{ Value(int) []byte }).Value(i))] = true
						if c[1] == deid.Other {
							others++
						}
					}
					rec.Release()
				}
				for c, ps := range patients {
					if len(ps) < p.K && c[1] != deid.Other {
						t.Errorf("%s: code %s %s published for %d patients, fewer than k=%d", table, c[0], c[1], len(ps), p.K)
					}
				}
				// Rows whose code the extract never had are generalised
				// to a category.
				had := extractCodes(t, filepath.Join(dir, table+".csv"))
				categories := 0
				for c := range patients {
					if c[1] != deid.Other && !had[c] {
						categories++
						if c[0] != "icd10" || len(c[1]) != 3 {
							t.Errorf("%s: %s %s published, a code the extract does not have", table, c[0], c[1])
						}
					}
				}
				r := res.Deid.RareCodes[table]
				if r == nil || r.ToCategory+r.ToOther != r.Codes || (r.Rows == 0) != (r.Codes == 0) || r.Rows < others {
					t.Errorf("%s: rare codes report %+v; %d rows published as other", table, r, others)
				}
				if table == "conditions" && !tc.practices {
					if !had[[2]string{"icd10", "Q87.1"}] || patients[[2]string{"icd10", "Q87.1"}] != nil ||
						len(patients[[2]string{"icd10", "Q87"}]) < p.K || patients[[2]string{"snomed", "6142004"}] != nil ||
						patients[[2]string{"icd10", "Q90.0"}] != nil || others == 0 || categories != 1 {
						t.Errorf("conditions: the rare codes added are published as %v %v %v, %d rows as other",
							len(patients[[2]string{"icd10", "Q87"}]), patients[[2]string{"snomed", "6142004"}], patients[[2]string{"icd10", "Q90.0"}], others)
					}
				}
				if r != nil && r.Codes > 0 {
					t.Logf("%s: %+v", table, *r)
				}
			}
			if !tc.practices {
				return
			}
			regs := testlake.ReadTable(t, f.lake, res.Manifest, "registrations")
			kept, nulls := 0, 0
			for _, rec := range regs {
				pids, gps := rec.Column(0), rec.Column(1)
				for i := range int(rec.NumRows()) {
					w := withheld[string(pids.(interface{ Value(int) []byte }).Value(i))]
					if gps.IsNull(i) != w {
						t.Fatalf("a registration's practice null=%v, the patient's practice withheld=%v", gps.IsNull(i), w)
					}
					if gps.IsNull(i) {
						nulls++
					} else {
						kept++
					}
				}
				rec.Release()
			}
			if kept == 0 || nulls == 0 {
				t.Errorf("registrations: %d practices kept, %d withheld; the test checks too little", kept, nulls)
			}
		})
	}
}

// addRareCodes appends rare codes to an extract's conditions: ICD-10
// Q87.1 and Q87.4 for four patients each (each rare, their category Q87
// not), Q90.0 for two (its category rare too), SNOMED CT 6142004 for one.
func addRareCodes(t *testing.T, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "patients.csv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	nhs := func(i int) string { return lines[1+i][:10] }
	var add strings.Builder
	for i := range 11 {
		system, code := "icd10", "Q87.1"
		switch {
		case i >= 4 && i < 8:
			code = "Q87.4"
		case i >= 8 && i < 10:
			code = "Q90.0"
		case i == 10:
			system, code = "snomed", "6142004"
		}
		fmt.Fprintf(&add, "%s,%s,%s,2020-01-0%d,,,\n", nhs(100+i*37), system, code, 1+i%9)
	}
	f, err := os.OpenFile(filepath.Join(dir, "conditions.csv"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(add.String()); err != nil {
		t.Fatal(err)
	}
}

// extractCodes are the (system, code) pairs of an extract's CSV table.
func extractCodes(t *testing.T, path string) map[[2]string]bool {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[[2]string]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.SplitN(line, ",", 4)
		if len(f) == 4 {
			out[[2]string{f[1], f[2]}] = true
		}
	}
	return out
}
