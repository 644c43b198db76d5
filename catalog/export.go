package catalog

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// ExportFormats are the metadata formats Export writes.
var ExportFormats = []string{"hdruk", "dcat"}

// ExportOptions say who publishes an export and where its IRIs point.
type ExportOptions struct {
	Publisher string
	// BaseURL is the hub's public address (https://hub.example.nhs.uk):
	// the dataset's and publisher's IRIs are made from it.
	BaseURL string
	// LakeURL is the lake's root as other engines reach it
	// (s3://bucket/prefix, or file:///path): each part's access URL.
	LakeURL string
	// Contact is the data controller's contact e-mail address.
	Contact string
	// Licence is the IRI of the terms under which the data may be used.
	Licence string
}

// DCAT vocabularies' IRIs: the EU Publications Office's authority tables
// (as DCAT-AP 3 asks), and IANA's media type for Parquet.
const (
	accessRestricted = "http://publications.europa.eu/resource/authority/access-right/RESTRICTED"
	themeHealth      = "http://publications.europa.eu/resource/authority/data-theme/HEAL"
	countryGBR       = "http://publications.europa.eu/resource/authority/country/GBR"
	parquetType      = "https://www.iana.org/assignments/media-types/application/vnd.apache.parquet"
)

// Export describes a version as metadata for discovery services: "hdruk"
// follows the sections of the HDR UK Gateway dataset schema (summary,
// documentation, coverage, provenance, accessibility,
// enrichmentAndLinkage, observations, structuralMetadata); "dcat" is a
// DCAT-AP 3 dcat:Dataset in JSON-LD with absolute IRIs (from
// opt.BaseURL and opt.LakeURL) and one distribution per part. Neither
// holds a row value, and counts are rounded (RoundCount).
func Export(m *Manifest, format string, opt ExportOptions) ([]byte, error) {
	publisher := opt.Publisher
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
		base := strings.TrimRight(opt.BaseURL, "/")
		lakeURL := strings.TrimRight(opt.LakeURL, "/")
		if !absolute(base) || !absolute(lakeURL) || !absolute(opt.Licence) || !strings.Contains(opt.Contact, "@") {
			return nil, fmt.Errorf("a DCAT export needs absolute IRIs: --base-url (https://...), the lake's URL, --licence (an IRI) and --contact (an e-mail address)")
		}
		id := fmt.Sprintf("%s/catalog/%s/%d", base, m.Dataset, m.Version)
		licence := map[string]string{"@id": opt.Licence}
		var dists []map[string]any
		for _, t := range tables {
			for _, p := range m.Tables[t].Parts {
				dists = append(dists, map[string]any{"@id": id + "/" + p.Path[strings.Index(p.Path, t+"/"):], "@type": "dcat:Distribution",
					"dct:title":      t + ": " + p.Path[strings.LastIndex(p.Path, "/")+1:],
					"dcat:accessURL": map[string]string{"@id": lakeURL + "/" + p.Path}, "dcat:mediaType": map[string]string{"@id": parquetType},
					"dcat:byteSize": map[string]any{"@value": p.Size, "@type": "xsd:nonNegativeInteger"}, "dct:license": licence,
					"dct:accessRights": map[string]string{"@id": accessRestricted},
					"spdx:checksum":    map[string]any{"@type": "spdx:Checksum", "spdx:algorithm": map[string]string{"@id": "http://spdx.org/rdf/terms#checksumAlgorithm_sha256"}, "spdx:checksumValue": p.SHA256}})
			}
		}
		v = map[string]any{
			"@context": map[string]string{"dcat": "http://www.w3.org/ns/dcat#", "dct": "http://purl.org/dc/terms/", "spdx": "http://spdx.org/rdf/terms#",
				"xsd": "http://www.w3.org/2001/XMLSchema#", "foaf": "http://xmlns.com/foaf/0.1/", "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
				"vcard": "http://www.w3.org/2006/vcard/ns#"},
			"@type": "dcat:Dataset", "@id": id,
			"dct:identifier": fmt.Sprintf("%s@%d", m.Dataset, m.Version), "dct:title": title, "dct:description": abstract,
			"dct:issued":    map[string]string{"@value": m.Created.Format("2006-01-02T15:04:05Z"), "@type": "xsd:dateTime"},
			"dcat:version":  fmt.Sprint(m.Version),
			"dct:publisher": map[string]string{"@id": base + "/#publisher", "@type": "foaf:Agent", "foaf:name": publisher},
			"dcat:contactPoint": map[string]any{"@id": base + "/#contact", "@type": "vcard:Organization", "vcard:fn": publisher,
				"vcard:hasEmail": map[string]string{"@id": "mailto:" + opt.Contact}},
			"dct:accessRights": map[string]string{"@id": accessRestricted},
			"dct:license":      licence,
			"dcat:theme":       map[string]string{"@id": themeHealth},
			"dct:spatial":      map[string]string{"@id": countryGBR},
			"dcat:landingPage": map[string]string{"@id": base + "/register"},
			"dct:temporal": map[string]any{"@type": "dct:PeriodOfTime",
				"dcat:startDate": map[string]string{"@value": events.From, "@type": "xsd:date"}, "dcat:endDate": map[string]string{"@value": events.To, "@type": "xsd:date"}},
			"dcat:keyword": []string{"shared care record", "de-identified"},
			"dct:provenance": map[string]string{"@type": "dct:ProvenanceStatement", "rdfs:label": fmt.Sprintf("%s extract %s; opt-out list %s; policy %s; pseudonym domain %s key %s",
				m.Provenance.ExtractFormat, m.Provenance.ExtractIdentity, m.Provenance.OptOutSHA256, m.Provenance.PolicyHash, m.Provenance.PseudonymDomain, m.Provenance.KeyFingerprint)},
			"dcat:distribution": dists,
		}
	default:
		return nil, fmt.Errorf("unknown export format %q: use hdruk or dcat", format)
	}
	return json.MarshalIndent(v, "", "  ")
}

// absolute reports whether an IRI has a scheme and something after it.
func absolute(iri string) bool {
	scheme, rest, ok := strings.Cut(iri, ":")
	return ok && scheme != "" && !strings.ContainsAny(scheme, "/ ") && len(rest) > 1
}

// RoundCount is how a count of patients or rows leaves the catalog for
// anyone but an admin: rounded to the nearest 10. Exact counts of
// successive versions would tell, by subtraction, how many patients
// opted out or arrived in between; rounded, the difference is uncertain
// by up to ±10 (docs/deid-policy.md, "Counts outside the DP service").
func RoundCount(n int64) int64 { return (n + 5) / 10 * 10 }
