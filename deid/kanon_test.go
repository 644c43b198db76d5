package deid

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// synthPatients makes n rows whose places are mostly a few common
// districts and partly a long tail of rare ones, so that every level of
// generalisation is needed.
func synthPatients(n int, seed uint64) ([]patientRow, *names) {
	in := newNames()
	rng := rand.New(rand.NewPCG(seed, 1))
	const eths = "ABCDEFGHJKLMNPRSZ"
	rows := make([]patientRow, n)
	for i := range rows {
		r := &rows[i]
		r.band = uint8(min(rng.IntN(10)+rng.IntN(10), 18))
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
	}
	return rows, in
}

// released is what the patients table publishes of a row's
// quasi-identifiers, built from the strings, not from classKey.
func released(r *patientRow, in *names) string {
	if r.level >= maxLevel {
		return "suppressed"
	}
	d, a, e := in.list[r.district], in.list[r.area], ""
	if r.eth != 0 {
		e = ethnicityGroup(r.eth)
	}
	if r.level >= 1 {
		d = ""
	}
	if r.level >= 2 {
		a = ""
	}
	if r.level >= 3 {
		e = ""
	}
	return fmt.Sprintf("%s|%s|%s|%s|%s", bandNames[r.band], sexes[r.sex], d, a, e)
}

// referenceKanonymise is the check as first written, with string keys:
// the integer keys must not change a single decision.
func referenceKanonymise(rows []patientRow, in *names, k int) {
	type key struct {
		band, sex uint8
		eth       byte
		district  string
		area      string
	}
	keyOf := func(r *patientRow) key {
		kk := key{band: r.band, sex: r.sex, eth: ethGroupKey(r.eth), district: in.list[r.district], area: in.list[r.area]}
		if r.level >= 1 {
			kk.district = ""
		}
		if r.level >= 2 {
			kk.area = ""
		}
		if r.level >= 3 {
			kk.eth = 0
		}
		if r.level >= 4 {
			kk.band, kk.sex = 255, 255
		}
		return kk
	}
	for pass := 0; pass < 4*maxLevel; pass++ {
		counts := map[key]int{}
		for i := range rows {
			counts[keyOf(&rows[i])]++
		}
		changed := false
		for i := range rows {
			if rows[i].level < maxLevel && counts[keyOf(&rows[i])] < k {
				rows[i].level++
				changed = true
			}
		}
		if !changed {
			return
		}
	}
}

func TestKAnonymity(t *testing.T) {
	for _, k := range []int{2, 5, 11} {
		t.Run(fmt.Sprint("k=", k), func(t *testing.T) {
			rows, in := synthPatients(60000, uint64(k))
			ref := append([]patientRow(nil), rows...)
			rep := kanonymise(rows, k)
			referenceKanonymise(ref, in, k)

			classes := map[string]int{}
			levels := make([]int, maxLevel+1)
			for i := range rows {
				classes[released(&rows[i], in)]++
				levels[rows[i].level]++
				if rows[i].level != ref[i].level {
					t.Fatalf("row %d: level %d, the string-keyed check gives %d", i, rows[i].level, ref[i].level)
				}
			}
			for c, n := range classes {
				if c != "suppressed" && n < k {
					t.Errorf("released class %q holds %d patients, fewer than k=%d", c, n, k)
				}
			}
			// Every level is reached on this data, and most patients keep
			// every quasi-identifier.
			for l, n := range levels {
				if n == 0 {
					t.Errorf("no patient at level %d (%s): the data should need it", l, levelNames[l])
				}
			}
			if levels[0] < len(rows)/2 {
				t.Errorf("only %d of %d patients keep every quasi-identifier", levels[0], len(rows))
			}
			if rep.Patients != len(rows) || rep.Generalised != levels[1]+levels[2]+levels[3] ||
				rep.Suppressed != levels[maxLevel] || !strings.Contains(rep.Summary(), fmt.Sprintf("%d suppressed", levels[maxLevel])) {
				t.Errorf("report %+v does not match the levels %v", rep, levels)
			}
			for l, n := range levels {
				if rep.Levels[levelNames[l]] != n {
					t.Errorf("report gives %d patients at %q, rows %d", rep.Levels[levelNames[l]], levelNames[l], n)
				}
			}
		})
	}
}
