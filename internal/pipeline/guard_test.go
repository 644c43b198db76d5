package pipeline_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nhs-hub/hub/ingest"
	"github.com/nhs-hub/hub/internal/pipeline"
)

// lakeFiles lists every file under the lake's root.
func lakeFiles(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, strings.TrimPrefix(p, root))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// refused runs cfg and checks it is refused by check, leaving the lake as
// it was.
func refused(t *testing.T, f *fixture, cfg pipeline.Config, check pipeline.Check) *pipeline.Result {
	t.Helper()
	before := lakeFiles(t, f.root)
	res, err := pipeline.Run(t.Context(), cfg)
	var re *pipeline.RefusedError
	if !errors.As(err, &re) || re.Check != check || !errors.Is(err, pipeline.ErrRefused) {
		t.Fatalf("err = %v, want a refusal by %s", err, check)
	}
	if after := lakeFiles(t, f.root); !slices.Equal(before, after) {
		t.Fatalf("the refusal changed the lake: %v, then %v", before, after)
	}
	return res
}

func emptyOptOuts(t *testing.T, text string) *ingest.OptOuts {
	o, err := ingest.LoadOptOuts(t.Context(), strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestOptOutListCannotFailOpen(t *testing.T) {
	f := newFixture(t, 300)
	now := time.Date(2026, 6, 30, 12, 0, 0, 0, time.UTC)
	base := f.config(t, key(t, 1), policy())
	base.Now = func() time.Time { return now }
	base.OptOutDate = "2026-06-20"
	cases := []struct {
		name  string
		edit  func(*pipeline.Config)
		check pipeline.Check
	}{
		{"no list", func(c *pipeline.Config) { c.Ingest.OptOuts = nil }, pipeline.CheckOptOutsEmpty},
		{"empty file", func(c *pipeline.Config) { c.Ingest.OptOuts = emptyOptOuts(t, "") }, pipeline.CheckOptOutsEmpty},
		{"only junk", func(c *pipeline.Config) {
			c.Ingest.OptOuts = emptyOptOuts(t, "<html>\n503 Service Unavailable\n</html>\n")
		}, pipeline.CheckOptOutsEmpty},
		{"dated 2019", func(c *pipeline.Config) { c.OptOutDate = "2019-03-01" }, pipeline.CheckOptOutsStale},
		{"older than the maximum age", func(c *pipeline.Config) { c.OptOutDate = "2026-05-29" }, pipeline.CheckOptOutsStale},
		{"shorter maximum age", func(c *pipeline.Config) { c.OptOutMaxAge = 7 * 24 * time.Hour }, pipeline.CheckOptOutsStale},
		{"undated", func(c *pipeline.Config) { c.OptOutDate = "" }, pipeline.CheckOptOutsStale},
		{"unreadable date", func(c *pipeline.Config) { c.OptOutDate = "last week" }, pipeline.CheckOptOutsStale},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.edit(&cfg)
			refused(t, f, cfg, tc.check)
			// The operator may pass by the check, and the manifest says so.
			cfg.Overrides = []pipeline.Check{tc.check}
			res, err := pipeline.Run(t.Context(), cfg)
			if err != nil {
				t.Fatalf("with the override: %v", err)
			}
			if got := res.Manifest.Provenance.Overrides; !slices.Equal(got, []string{string(tc.check)}) {
				t.Errorf("manifest overrides %v, want [%s]", got, tc.check)
			}
		})
	}
	// A list within its age publishes and records no override.
	res, err := pipeline.Run(t.Context(), base)
	if err != nil {
		t.Fatal(err)
	}
	if o := res.Manifest.Provenance.Overrides; len(o) != 0 {
		t.Errorf("overrides %v recorded when none was needed", o)
	}
	// An override that was not needed is not recorded either.
	base.Overrides = pipeline.Checks
	if res, err = pipeline.Run(t.Context(), base); err != nil || len(res.Manifest.Provenance.Overrides) != 0 {
		t.Errorf("unneeded overrides: err %v, recorded %v", err, res.Manifest.Provenance.Overrides)
	}
}

// writeExtract writes a CSV extract of the given tables (header and rows);
// tables not given are written with their header only.
func writeExtract(t *testing.T, dir string, tables map[ingest.Table]string) {
	t.Helper()
	for _, tb := range ingest.Tables {
		// Rows may leave out the trailing optional columns.
		var body strings.Builder
		body.WriteString(strings.Join(tb.Columns(), ",") + "\n")
		for _, row := range strings.SplitAfter(tables[tb], "\n") {
			if row = strings.TrimSuffix(row, "\n"); row != "" {
				body.WriteString(row + strings.Repeat(",", len(tb.Columns())-1-strings.Count(row, ",")) + "\n")
			}
		}
		if err := os.WriteFile(filepath.Join(dir, tb.String()+".csv"), []byte(body.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRefusesWhatIsMostlyQuarantinedOrEmptied(t *testing.T) {
	f := newFixture(t, 10)
	cfg := f.config(t, key(t, 1), policy())
	cfg.Ingest.OptOuts = emptyOptOuts(t, "9434765919\n")
	patients := "9000000009,Ann,Smith,1980-01-02,female,LS6 2AB,A,B86001,\n" +
		"9000000017,Bob,Jones,1970-03-04,male,LS1 1AA,A,B86001,\n"
	encounters := "E1,9000000009,gp,2023-01-01,,x,AMB,finished\nE2,9000000017,gp,2023-01-02,,x,,\n"

	// Every patient row is bad: nothing would be published.
	dir := t.TempDir()
	writeExtract(t, dir, map[ingest.Table]string{ingest.Patients: strings.ReplaceAll(patients, "1980-01-02", "1980-13-02")})
	cfg.Source = ingest.Dir(dir)
	res := refused(t, f, cfg, pipeline.CheckQuarantine)
	if res == nil || res.Ingest == nil || res.Ingest.Tables["patients"].Quarantined != 1 {
		t.Errorf("a refusal after ingest returns the report")
	}
	writeExtract(t, dir, map[ingest.Table]string{ingest.Patients: strings.ReplaceAll(patients, "1970-03-04", "1970-03-32") +
		"9000000025,Cat,Smith,1980-01-02,female,LS6 2AB,A,B86001,\n"})
	refused(t, f, cfg, pipeline.CheckQuarantine)
	cfg.MaxQuarantine = 0.5 // one in three is within a half
	if _, err := pipeline.Run(t.Context(), cfg); err != nil {
		t.Fatalf("within the threshold: %v", err)
	}
	cfg.MaxQuarantine = 0

	// No patient kept at all, though nothing is quarantined (all opted out).
	writeExtract(t, dir, map[ingest.Table]string{ingest.Patients: "9434765919,Ann,Smith,1980-01-02,female,,,,\n"})
	refused(t, f, cfg, pipeline.CheckEmptyTable)

	// A table the previous version had rows in would go empty.
	f2 := newFixture(t, 10)
	cfg.Lake = f2.lake
	writeExtract(t, dir, map[ingest.Table]string{ingest.Patients: patients, ingest.Encounters: encounters})
	if _, err := pipeline.Run(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	writeExtract(t, dir, map[ingest.Table]string{ingest.Patients: patients})
	refused(t, f2, cfg, pipeline.CheckEmptyTable)
	cfg.Overrides = []pipeline.Check{pipeline.CheckEmptyTable}
	res, err := pipeline.Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Version != 2 || !slices.Equal(res.Manifest.Provenance.Overrides, []string{"empty_table"}) {
		t.Errorf("version %d, overrides %v; want 2 (the refusal claimed no number), [empty_table]", res.Manifest.Version, res.Manifest.Provenance.Overrides)
	}
	if _, err := f2.lake.Manifest(t.Context(), "test", 2); err != nil {
		t.Fatal(err)
	}
}
