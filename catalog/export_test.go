package catalog

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestExport(t *testing.T) {
	m := &Manifest{Dataset: "gp", Version: 2, Created: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC),
		Tables: map[string]*TableManifest{
			"patients":     {Rows: 2773, Parts: []Part{{Path: "datasets/gp/versions/2/patients/part-00000.parquet", Size: 100, SHA256: "ab"}}, Schema: []Column{{Name: "patient_id", Type: "fixed_size_binary[16]"}}},
			"observations": {Rows: 30418, Parts: []Part{{Path: "datasets/gp/versions/2/observations/part-00000.parquet", Size: 300, SHA256: "cd"}}},
		},
		Reports: map[string]json.RawMessage{"deid": json.RawMessage(`{"events_from":"2022-01-01","events_to":"2024-12-31"}`)}}
	tests := []struct {
		format string
		keys   []string
	}{
		{"hdruk", []string{"summary", "documentation", "coverage", "provenance", "accessibility", "enrichmentAndLinkage", "observations", "structuralMetadata"}},
		{"dcat", []string{"@context", "@type", "dct:title", "dct:temporal", "dcat:distribution"}},
	}
	for _, tt := range tests {
		out, err := Export(m, tt.format, "Test Hub")
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%s: not JSON: %v", tt.format, err)
		}
		for _, k := range tt.keys {
			if _, ok := v[k]; !ok {
				t.Errorf("%s: no %q", tt.format, k)
			}
		}
	}
	var h struct {
		Provenance struct {
			Temporal struct{ StartDate, EndDate string }
		}
	}
	out, _ := Export(m, "hdruk", "x")
	json.Unmarshal(out, &h)
	if h.Provenance.Temporal.StartDate != "2022-01-01" || h.Provenance.Temporal.EndDate != "2024-12-31" {
		t.Errorf("temporal = %+v", h.Provenance.Temporal)
	}
	var d struct {
		Dist []map[string]any `json:"dcat:distribution"`
	}
	out, _ = Export(m, "dcat", "x")
	json.Unmarshal(out, &d)
	if len(d.Dist) != 2 {
		t.Errorf("%d distributions, want one per part (2)", len(d.Dist))
	}
	// No exact count leaves in an export: 2773 patients and 30418 rows
	// appear only rounded to 10.
	for _, f := range []string{"hdruk", "dcat"} {
		out, _ := Export(m, f, "x")
		if strings.Contains(string(out), "2773") || strings.Contains(string(out), "30418") || !strings.Contains(string(out), "2770") {
			t.Errorf("%s: an exact count in the export", f)
		}
	}
	if _, err := Export(m, "xml", "x"); err == nil {
		t.Error("unknown format accepted")
	}
}
