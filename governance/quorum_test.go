package governance

import (
	"testing"
	"time"
)

// A quorum is of distinct members: the same reviewer's approval in the log
// twice (a vote reported failed, then cast again) counts once.
func TestQuorumCountsDistinctReviewers(t *testing.T) {
	now := time.Now()
	votes := []Vote{
		{Reviewer: "dina", Approve: true, Time: now},
		{Reviewer: "dina", Approve: true, Time: now.Add(time.Second)},
		{Reviewer: "dev", Approve: false, Time: now},
	}
	if got := approvalsOf(votes); len(got) != 1 || got[0].Time != now {
		t.Fatalf("approvals %v, want dina's first alone", got)
	}
	votes = append(votes, Vote{Reviewer: "dev", Approve: true})
	if got := approvalsOf(votes); len(got) != 2 {
		t.Fatalf("approvals %v, want dina's and dev's", got)
	}
}

// The audit log is listed from the file: paging by After and Limit, and
// entries appended by another process, come back as written.
func TestAuditListedFromFile(t *testing.T) {
	w := newWorld(t)
	other, err := Open(w.dir, Options{Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for i := range 5 {
		if _, err := other.Record(w.who["rosa"], Entry{Action: ActQuery, Project: "p", EpsilonU: int64(i + 1), QuerySHA256: itoa(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if e, _ := w.s.AuditedSpend("p"); e != 15 {
		t.Fatalf("audited spend %d, want 15 (another process's charges)", e)
	}
	all, err := w.s.Audit(w.who["ada"], AuditFilter{Action: ActQuery})
	if err != nil || len(all) != 5 {
		t.Fatalf("%d query entries, %v", len(all), err)
	}
	page, err := w.s.Audit(w.who["ada"], AuditFilter{After: all[1].Seq, Limit: 2})
	if err != nil || len(page) != 2 || page[0].Seq != all[2].Seq || page[1].Seq != all[3].Seq || page[1].EpsilonU != 4 {
		t.Fatalf("page after %d: %+v, %v", all[1].Seq, page, err)
	}
}
