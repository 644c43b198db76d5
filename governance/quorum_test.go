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
