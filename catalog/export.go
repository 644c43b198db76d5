package catalog

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// ExportFormats are the metadata formats Export writes.
var ExportFormats = []string{"hdruk", "dcat"}

// Export describes a version as metadata for discovery services: "hdruk"
// follows the sections of the HDR UK Gateway dataset schema (summary,
// documentation, coverage, provenance, accessibility,
// enrichmentAndLinkage, observations, structuralMetadata); "dcat" is a
// DCAT 3 dcat:Dataset in JSON-LD with one distribution per part. Neither
// holds a row value.
func Export(m *Manifest, format, publisher string) ([]byte, error) {
	var events struct {
		From string `json:"events_from"`
		To   string `json:"events_to"`
	}
	if raw, ok := m.Reports["deid"]; ok {
		json.Unmarshal(raw, &events)
	}
	tables := make([]string, 0, len(m.Tables))
	for t := range m.Tables {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	title := fmt.Sprintf("%s (version %d)", m.Dataset, m.Version)
	abstract := fmt.Sprintf("De-identified shared care record extract: about %d patients (rounded to 10); %s. Pseudonymised with a keyed HMAC; National Data Opt-out and type 1 dissent applied.",
		RoundCount(m.Tables["patients"].Rows), strings.Join(tables, ", "))
	var v any
	switch format {
	case "hdruk":
		structural := []map[string]any{}
		for _, t := range tables {
			var elems []map[string]any
			for _, c := range m.Tables[t].Schema {
				elems = append(elems, map[string]any{"name": c.Name, "description": c.Description, "dataType": c.Type,
					"sensitive": strings.HasSuffix(c.Name, "_id"), "isNullable": c.Nullable})
			}
			structural = append(structural, map[string]any{"name": t, "description": fmt.Sprintf("about %d rows (rounded to 10)", RoundCount(m.Tables[t].Rows)), "elements": elems})
		}
		observations := []map[string]any{}
		for _, t := range tables {
			observations = append(observations, map[string]any{"observedNode": "EVENTS", "measuredValue": RoundCount(m.Tables[t].Rows),
				"disambiguatingDescription": t + " rows", "observationDate": m.Created.Format("2006-01-02"), "measuredProperty": "Count"})
		}
		for i, t := range tables {
			if t == "patients" {
				observations[i]["observedNode"] = "PERSONS"
			}
		}
		v = map[string]any{
			"identifier": fmt.Sprintf("%s@%d", m.Dataset, m.Version),
			"version":    fmt.Sprintf("%d.0.0", m.Version),
			"issued":     m.Created,
			"summary": map[string]any{"title": title, "abstract": abstract, "publisher": map[string]any{"name": publisher},
				"keywords": []string{"shared care record", "LHCRE", "primary care", "secondary care", "de-identified"}},
			"documentation": map[string]any{"description": abstract},
			"coverage":      map[string]any{"spatial": "England", "typicalAgeRange": "0-150"},
			"provenance": map[string]any{
				"origin":   map[string]any{"purpose": []string{"CARE"}, "source": []string{"EPR"}, "collectionSituation": []string{"PRIMARY CARE", "IN-PATIENTS", "OUTPATIENTS", "ACCIDENT AND EMERGENCY"}},
				"temporal": map[string]any{"startDate": events.From, "endDate": events.To, "distributionReleaseDate": m.Created.Format("2006-01-02"), "accrualPeriodicity": "IRREGULAR"},
			},
			"accessibility": map[string]any{
				"usage":  map[string]any{"dataUseLimitation": []string{"GENERAL RESEARCH USE"}, "dataUseRequirements": []string{"PROJECT SPECIFIC RESTRICTIONS"}},
				"access": map[string]any{"accessRights": "Aggregate, differentially private queries for projects a data access committee approved", "jurisdiction": []string{"GB-ENG"}},
				"formatAndStandards": map[string]any{"vocabularyEncodingScheme": []string{"SNOMED CT", "ICD10", "DM+D"}, "conformsTo": []string{"LOCAL"},
					"language": []string{"en"}, "format": []string{"application/vnd.apache.parquet"}},
			},
			"enrichmentAndLinkage": map[string]any{"derivation": []string{fmt.Sprintf("Pseudonymisation domain %s, key fingerprint %s, de-identification policy sha256 %s, opt-out list sha256 %s",
				m.Provenance.PseudonymDomain, m.Provenance.KeyFingerprint, m.Provenance.PolicyHash, m.Provenance.OptOutSHA256)}},
			"observations":       observations,
			"structuralMetadata": structural,
		}
	case "dcat":
		var dists []map[string]any
		for _, t := range tables {
			for _, p := range m.Tables[t].Parts {
				dists = append(dists, map[string]any{"@type": "dcat:Distribution", "dct:title": t + ": " + p.Path[strings.LastIndex(p.Path, "/")+1:],
					"dcat:accessURL": map[string]string{"@id": p.Path}, "dcat:mediaType": "application/vnd.apache.parquet", "dcat:byteSize": p.Size,
					"spdx:checksum": map[string]any{"spdx:algorithm": "spdx:checksumAlgorithm_sha256", "spdx:checksumValue": p.SHA256}})
			}
		}
		v = map[string]any{
			"@context": map[string]string{"dcat": "http://www.w3.org/ns/dcat#", "dct": "http://purl.org/dc/terms/", "spdx": "http://spdx.org/rdf/terms#", "xsd": "http://www.w3.org/2001/XMLSchema#", "foaf": "http://xmlns.com/foaf/0.1/", "rdfs": "http://www.w3.org/2000/01/rdf-schema#"},
			"@type":    "dcat:Dataset", "@id": fmt.Sprintf("%s@%d", m.Dataset, m.Version),
			"dct:identifier": fmt.Sprintf("%s@%d", m.Dataset, m.Version), "dct:title": title, "dct:description": abstract,
			"dct:issued":   map[string]string{"@value": m.Created.Format("2006-01-02T15:04:05Z"), "@type": "xsd:dateTime"},
			"dcat:version": fmt.Sprint(m.Version), "dct:publisher": map[string]string{"@type": "foaf:Agent", "foaf:name": publisher},
			"dct:temporal": map[string]any{"@type": "dct:PeriodOfTime", "dcat:startDate": events.From, "dcat:endDate": events.To},
			"dct:spatial":  "England", "dcat:keyword": []string{"shared care record", "de-identified"},
			"dct:provenance": map[string]string{"@type": "dct:ProvenanceStatement", "rdfs:label": fmt.Sprintf("%s extract %s; opt-out list %s; policy %s; pseudonym domain %s key %s",
				m.Provenance.ExtractFormat, m.Provenance.ExtractIdentity, m.Provenance.OptOutSHA256, m.Provenance.PolicyHash, m.Provenance.PseudonymDomain, m.Provenance.KeyFingerprint)},
			"dcat:distribution": dists,
		}
	default:
		return nil, fmt.Errorf("unknown export format %q: use hdruk or dcat", format)
	}
	return json.MarshalIndent(v, "", "  ")
}

// RoundCount is how a count of patients or rows leaves the catalog for
// anyone but an admin: rounded to the nearest 10. Exact counts of
// successive versions would tell, by subtraction, how many patients
// opted out or arrived in between; rounded, the difference is uncertain
// by up to ±10 (docs/deid-policy.md, "Counts outside the DP service").
func RoundCount(n int64) int64 { return (n + 5) / 10 * 10 }
