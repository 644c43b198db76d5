package ingest

import (
	"strings"
	"testing"
	"time"
)

// TestProgressLine: with a known size the line has a bar, a percentage,
// the rates and an ETA; without one, counts and rates.
func TestProgressLine(t *testing.T) {
	got := progressLine("conditions", 2_000_000, 50_000_000, 200_000_000, 2*time.Second)
	for _, want := range []string{"[======", " 25%", "1.00 M rows/s", "25.0 MB/s", "ETA 0:06"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	got = progressLine("patients", 10, 1_000_000, 0, time.Second)
	if strings.Contains(got, "ETA") || !strings.Contains(got, "1.0 MB read") {
		t.Errorf("unknown size: %q", got)
	}
}
