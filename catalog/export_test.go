package catalog

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var testExport = ExportOptions{Publisher: "Test Hub", BaseURL: "https://hub.example.nhs.uk", LakeURL: "s3://lake-bucket/prefix",
	Contact: "dpo@hub.example.nhs.uk", Licence: "https://hub.example.nhs.uk/register#terms"}

func testManifest() *Manifest {
	return &Manifest{Dataset: "gp", Version: 2, Created: time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC),
		Tables: map[string]*TableManifest{
			"patients": {Rows: 2773, Parts: []Part{{Path: "datasets/gp/versions/2/patients/part-00000.parquet", Size: 100, SHA256: "ab"}}, Schema: []Column{{Name: "patient_id", Type: "fixed_size_binary[16]"}}},
			"observations": {Rows: 30418, Parts: []Part{{Path: "datasets/gp/versions/2/observations/part-00000.parquet", Size: 300, SHA256: "cd"}, {Path: "datasets/gp/versions/2/observations/part-00001.parquet", Size: 310, SHA256: "ef"}},
				Iceberg: "datasets/gp/versions/2/iceberg/observations/metadata/v2.metadata.json"},
		},
		Reports: map[string]json.RawMessage{"deid": json.RawMessage(`{"events_from":"2022-01-01","events_to":"2024-12-31"}`)}}
}

// An RDF reader (Debian's python3-rdflib, which make notebook-deps
// installs) finds in the DCAT export one dcat:Dataset with absolute IRIs:
// a distribution per part whose access URL is in the lake, IRIs for its
// media type, licence, access rights, theme, spatial coverage and
// contact point.
func TestDCATIsRDF(t *testing.T) {
	out, err := Export(testManifest(), "dcat", testExport)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "gp.jsonld")
	os.WriteFile(f, out, 0o600)
	script := `
import json, sys, rdflib
from rdflib.namespace import RDF, DCAT, DCTERMS
g = rdflib.Graph()
g.parse(sys.argv[1], format="json-ld")
ds = list(g.subjects(RDF.type, DCAT.Dataset))
d = ds[0]
def iri(s, p):
    o = g.value(s, p)
    return str(o) if isinstance(o, rdflib.URIRef) else None
dists = list(g.objects(d, DCAT.distribution))
print(json.dumps({
  "datasets": [str(x) for x in ds],
  "distributions": len(dists),
  "access": sorted(iri(x, DCAT.accessURL) or "" for x in dists),
  "media": sorted(set(iri(x, DCAT.mediaType) or "" for x in dists)),
  "conforms": sorted(iri(x, DCTERMS.conformsTo) for x in dists if iri(x, DCTERMS.conformsTo)),
  "licence": iri(d, DCTERMS.license), "rights": iri(d, DCTERMS.accessRights),
  "theme": iri(d, DCAT.theme), "spatial": iri(d, DCTERMS.spatial),
  "contact": iri(d, DCAT.contactPoint), "publisher": iri(d, DCTERMS.publisher),
  "triples": len(g),
}))
`
	cmd := exec.Command("/usr/bin/python3", "-c", script, f) // Debian's, with its packages
	res, err := cmd.Output()
	if err != nil {
		t.Fatalf("rdflib could not read the export (make notebook-deps installs python3-rdflib): %v %s", err, res)
	}
	var r struct {
		Datasets                                            []string
		Distributions                                       int
		Access, Media, Conforms                             []string
		Licence, Rights, Theme, Spatial, Contact, Publisher string
		Triples                                             int
	}
	if err := json.Unmarshal(res, &r); err != nil {
		t.Fatalf("%v: %s", err, res)
	}
	t.Logf("%d triples", r.Triples)
	// Three parts, and the observations table as an Iceberg table.
	if len(r.Datasets) != 1 || r.Datasets[0] != "https://hub.example.nhs.uk/catalog/gp/2" || r.Distributions != 4 ||
		len(r.Conforms) != 1 || r.Conforms[0] != icebergSpec || !slices.Contains(r.Access, "s3://lake-bucket/prefix/datasets/gp/versions/2/iceberg/observations/metadata/v2.metadata.json") {
		t.Errorf("datasets %v, distributions %d", r.Datasets, r.Distributions)
	}
	for _, a := range r.Access {
		if !strings.HasPrefix(a, "s3://lake-bucket/prefix/datasets/gp/versions/2/") {
			t.Errorf("access URL %q is not in the lake", a)
		}
	}
	if len(r.Media) != 2 || r.Media[0] != jsonType || r.Media[1] != parquetType || r.Licence != testExport.Licence || r.Rights != accessRestricted ||
		r.Theme != themeHealth || r.Spatial != countryGBR || !strings.HasPrefix(r.Contact, "https://") || !strings.HasPrefix(r.Publisher, "https://") {
		t.Errorf("IRIs: %+v", r)
	}
	if _, err := Export(testManifest(), "dcat", ExportOptions{Publisher: "x"}); err == nil {
		t.Error("a DCAT export without a base URL")
	}
}

func TestExport(t *testing.T) {
	m := testManifest()
	tests := []struct {
		format string
		keys   []string
	}{
		{"hdruk", []string{"summary", "documentation", "coverage", "provenance", "accessibility", "enrichmentAndLinkage", "observations", "structuralMetadata"}},
		{"dcat", []string{"@context", "@type", "dct:title", "dct:temporal", "dcat:distribution"}},
	}
	for _, tt := range tests {
		out, err := Export(m, tt.format, testExport)
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
	out, _ := Export(m, "hdruk", testExport)
	json.Unmarshal(out, &h)
	if h.Provenance.Temporal.StartDate != "2022-01-01T00:00:00.000Z" || h.Provenance.Temporal.EndDate != "2024-12-31T00:00:00.000Z" {
		t.Errorf("temporal = %+v", h.Provenance.Temporal)
	}
	var d struct {
		Dist []map[string]any `json:"dcat:distribution"`
	}
	out, _ = Export(m, "dcat", testExport)
	json.Unmarshal(out, &d)
	if len(d.Dist) != 4 {
		t.Errorf("%d distributions, want one per part (3) and the Iceberg table", len(d.Dist))
	}
	// No exact count leaves in an export: 2773 patients and 30418 rows
	// appear only rounded to 10.
	for _, f := range []string{"hdruk", "dcat"} {
		out, _ := Export(m, f, testExport)
		if strings.Contains(string(out), "2773") || strings.Contains(string(out), "30418") || !strings.Contains(string(out), "2770") {
			t.Errorf("%s: an exact count in the export", f)
		}
	}
	if _, err := Export(m, "xml", testExport); err == nil {
		t.Error("unknown format accepted")
	}
}
