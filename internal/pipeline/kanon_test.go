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
