package cohorts

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Released answers are read back from the ledger file, not held in
// memory: the same answers come back, after a reopen too, and an answer
// whose line no longer reads as the entry it was is not served (the
// ledger is not tamper-evident on its own: see the audit log).
func TestLedgerAnswersOnDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	l, err := OpenLedger(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		v := float64(i)
		_, repeat, err := l.Spend(Charge{Hash: fmt.Sprint("h", i), Dataset: "gp", Version: 1, EpsilonU: 10, TotalE: 1000, TotalD: 1},
			func() (*Answer, error) {
				return &Answer{Dataset: "gp", Released: time.Unix(int64(i), 0).UTC(), Measures: []Result{{Kind: KindCount, Value: &v}}}, nil
			})
		if err != nil || repeat {
			t.Fatal(err, repeat)
		}
	}
	for _, e := range l.entries {
		if e.Answer != nil {
			t.Fatal("an answer is held in memory")
		}
	}
	check := func(l *Ledger) {
		t.Helper()
		for _, i := range []int{0, 17, 49} {
			a := l.Released(fmt.Sprint("h", i))
			if a == nil || *a.Measures[0].Value != float64(i) || a.QuerySHA256 != fmt.Sprint("h", i) {
				t.Fatalf("answer %d read back as %+v", i, a)
			}
		}
		if l.Released("h50") != nil {
			t.Fatal("an answer for a query never released")
		}
	}
	check(l)
	l.Close()
	if l, err = OpenLedger(path); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	check(l)
	if e, _, n := l.Spent(); e != 500 || n != 50 {
		t.Fatalf("spent %d in %d", e, n)
	}
	// A line made unreadable on disk (same length) is not served.
	b, _ := os.ReadFile(path)
	at := l.byHash["h17"]
	b[at.off] = 'X'
	os.WriteFile(path, b, 0o600)
	if l.Released("h17") != nil {
		t.Fatal("a changed line was served")
	}
}
