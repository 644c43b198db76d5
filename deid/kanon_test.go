package deid

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/testkey"
)

// synthPatients makes n rows whose places and practices are mostly a few
// common ones and partly a long tail of rare ones, with some deaths and
// missing values, so that every step of the path is needed.
func synthPatients(n int, seed uint64, practices bool) ([]patientRow, *names) {
	in := newNames()
	rng := rand.New(rand.NewPCG(seed, 1))
	const eths = "ABCDEFGHJKLMNPRSZ"
	rows := make([]patientRow, n)
	for i := range rows {
		r := &rows[i]
		age := min(rng.IntN(50)+rng.IntN(50), 104)
		r.yob, r.mob, r.band = int16(2025-age), int8(1+rng.IntN(12)), ageBand(age)
		r.sex = uint8(rng.IntN(2))
		if rng.IntN(50) == 0 {
			r.sex = uint8(2 + rng.IntN(2))
		}
		if rng.IntN(10) > 0 {
			r.eth = eths[rng.IntN(len(eths))]
		}
		switch p := rng.IntN(100); {
		case p < 80:
			r.district, r.area = in.id(fmt.Sprintf("LS%d", rng.IntN(8))), in.id("LS")
		case p < 95:
			r.district, r.area = in.id(fmt.Sprintf("YO%d", rng.IntN(30))), in.id("YO")
		case p < 99:
			r.district, r.area = in.id(fmt.Sprintf("Z%d", rng.IntN(400))), in.id(fmt.Sprintf("Z%c", 'A'+rune(rng.IntN(20))))
		}
		if practices && rng.IntN(20) > 0 {
			r.gp = in.id(fmt.Sprintf("B8%04d", rng.IntN(30)+rng.IntN(2)*rng.IntN(300)))
		}
		if rng.IntN(30) == 0 {
			r.dy, r.dm = int16(2015+rng.IntN(10)), int8(1+rng.IntN(12))
		}
	}
	return rows, in
}

// TestKAnonymity publishes the patients table of synthetic rows and
// counts it from the outside, as a reader of the Parquet would: every
// class over every released column holds k patients, the suppressed
// too, and the report's counts are what comparing the published values
// with the rows' own finds.
func TestKAnonymity(t *testing.T) {
	for _, tc := range []struct {
		k         int
		practices bool
	}{{2, false}, {5, false}, {5, true}, {11, true}} {
		t.Run(fmt.Sprintf("k=%d,practices=%v", tc.k, tc.practices), func(t *testing.T) {
			policy := DefaultPolicy()
			policy.K, policy.KeepGPPractice = tc.k, tc.practices
			rows, in := synthPatients(60000, uint64(tc.k), tc.practices)
			orig := append([]patientRow(nil), rows...)
			p := newPath(policy)
			rep := kanonymise(rows, p, tc.k)

			key, err := NewKey(testkey.Bytes(1))
			if err != nil {
				t.Fatal(err)
			}
			tr := &transformer{policy: policy, ps: NewPseudonymiser(key, policy.Domain, 16), schemas: Schemas(policy), mem: memory.DefaultAllocator}
			rec := tr.patientBatch(rows, p, make([]byte, 16*len(rows)), in)
			defer rec.Release()
			if int(rec.NumRows()) != len(rows) {
				t.Fatalf("%d rows published of %d", rec.NumRows(), len(rows))
			}
			// The outside count: every column but the pseudonym, as text.
			cols := rec.Schema().Fields()[1:]
			value := func(c, i int) string {
				a := rec.Column(c + 1)
				if a.IsNull(i) {
					return ""
				}
				return a.ValueStr(i)
			}
			classes := map[string]int{}
			col := map[string]int{}
			for c, f := range cols {
				col[f.Name] = c
			}
			got := map[string]map[string]int{}
			count := func(qi, level string) {
				if got[qi] == nil {
					got[qi] = map[string]int{}
				}
				got[qi][level]++
			}
			generalised, suppressed := 0, 0
			for i := range rows {
				var vals []string
				allNull := true
				for c := range cols {
					v := value(c, i)
					vals = append(vals, v)
					allNull = allNull && v == ""
				}
				classes[strings.Join(vals, "|")]++
				if allNull {
					suppressed++
					continue
				}
				// What the published values hold less than the row.
				o, before := &orig[i], generalised
				g := func(qi, level string) {
					count(qi, level)
					if generalised == before {
						generalised++
					}
				}
				switch yob, mob, band := value(col["year_of_birth"], i), value(col["month_of_birth"], i), value(col["age_band"], i); {
				case band == "":
					g("birth", "none")
				case yob == "":
					g("birth", "band")
				case mob == "":
					g("birth", "year")
				case yob != fmt.Sprint(o.yob) || mob != fmt.Sprint(o.mob) || band != bandNames[o.band]:
					t.Fatalf("row %d: birth %s-%s (%s) published for %d-%d", i, yob, mob, band, o.yob, o.mob)
				}
				if value(col["sex"], i) == "" {
					g("sex", "none")
				}
				switch d, a := value(col["district"], i), value(col["postcode_area"], i); {
				case o.district != 0 && a == "":
					g("place", "none")
				case o.district != 0 && d == "":
					g("place", "area")
				case d != in.list[o.district] || a != in.list[o.area]:
					t.Fatalf("row %d: place %q %q published for %q %q", i, d, a, in.list[o.district], in.list[o.area])
				}
				switch e, gr := value(col["ethnicity"], i), value(col["ethnicity_group"], i); {
				case gr == "":
					g("ethnicity", "none")
				case o.eth != 0 && e == "":
					g("ethnicity", "group")
				case gr != ethnicityGroup(o.eth):
					t.Fatalf("row %d: ethnicity group %q published for %q", i, gr, ethnicityGroup(o.eth))
				}
				if tc.practices && o.gp != 0 && value(col["gp_practice"], i) == "" {
					g("practice", "none")
				}
				if o.dy != 0 {
					switch m, y := value(col["death_month"], i), value(col["death_year"], i); {
					case y == "":
						t.Fatalf("row %d: a death withheld from a patient not suppressed", i)
					case m == "":
						g("death", "year")
					case m != fmt.Sprintf("%04d-%02d-01", o.dy, o.dm):
						t.Fatalf("row %d: death month %s published for %d-%d", i, m, o.dy, o.dm)
					}
				}
			}
			for c, n := range classes {
				if n < tc.k {
					t.Errorf("released class %q holds %d patients, fewer than k=%d", c, n, tc.k)
				}
			}
			if rep.Patients != len(rows) || rep.Generalised != generalised || rep.Suppressed != suppressed {
				t.Errorf("report: %d patients, %d generalised, %d suppressed; the count finds %d, %d, %d",
					rep.Patients, rep.Generalised, rep.Suppressed, len(rows), generalised, suppressed)
			}
			if fmt.Sprint(rep.ByAttribute) != fmt.Sprint(got) {
				t.Errorf("report by attribute %v; the count finds %v", rep.ByAttribute, got)
			}
			if !strings.Contains(rep.Summary(), fmt.Sprintf("%d suppressed", suppressed)) {
				t.Errorf("summary %q", rep.Summary())
			}
			// The path matters: most patients keep their age band, sex and
			// area, and few are suppressed (here the dead most: 1 in 30
			// has died, in one of ten years, and their class keeps the year).
			kept := 0
			for i := range rows {
				if l := p.levels[rows[i].level]; l[qiBirth] <= 2 && l[qiSex] == 0 && l[qiPlace] <= 1 {
					kept++
				}
			}
			if kept < len(rows)*85/100 || suppressed > len(rows)*3/100 {
				t.Errorf("%d of %d patients keep age band, sex and area, %d suppressed", kept, len(rows), suppressed)
			}
			t.Logf("%s; %d classes", rep.Summary(), len(classes))
		})
	}
}

// TestSuppressedAreAClass: a few patients who fit no class are not left
// as a suppressed class of fewer than k.
func TestSuppressedAreAClass(t *testing.T) {
	in := newNames()
	var rows []patientRow
	for i := range 20 {
		rows = append(rows, patientRow{yob: 1980, mob: 1, band: 9, sex: uint8(i % 2), district: in.id("LS6"), area: in.id("LS")})
	}
	rows = append(rows, patientRow{yob: 1930, mob: 5, band: 18, sex: 3, district: in.id("ZE1"), area: in.id("ZE")})
	p := newPath(DefaultPolicy())
	rep := kanonymise(rows, p, 5)
	if rep.Suppressed != 5 || rows[20].level != p.last() {
		t.Fatalf("suppressed %d, the odd patient at %q; want 5 and suppressed", rep.Suppressed, p.steps[rows[20].level])
	}
	counts := map[class]int{}
	for i := range rows {
		counts[p.release(&rows[i])]++
	}
	for c, n := range counts {
		if n < 5 {
			t.Errorf("class %+v holds %d", c, n)
		}
	}
}

func TestGeneralisationPolicy(t *testing.T) {
	for steps, want := range map[string]string{
		"birth:year,birth:band":   "",
		"birth:band,birth:year":   "no coarser",
		"place:postcode":          "place generalises to area, none",
		"age:band":                "not a quasi-identifier",
		"death:none":              "only by suppression",
		"ethnicity:none,sex:none": "",
	} {
		p := DefaultPolicy()
		p.Generalisation = strings.Split(steps, ",")
		err := p.Validate()
		if (want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", steps, err, want)
		}
	}
	// Steps of the practice are left out when practices are not kept.
	if p := newPath(DefaultPolicy()); len(p.steps) != len(DefaultGeneralisation)+1 ||
		strings.Contains(strings.Join(p.steps, ","), "practice") {
		t.Errorf("path without practices: %v", p.steps)
	}
	if _, ok := Schemas(DefaultPolicy())[ingest.Patients].FieldsByName("death_year"); !ok {
		t.Error("no death_year column")
	}
}
