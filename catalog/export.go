package catalog

import (
	"encoding/json"
	"fmt"
	"path"
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
	// HDRUKVersion is the HDR UK dataset schema an "hdruk" export
	// follows: one of HDRUKVersions ("": the newest).
	HDRUKVersion string
}

// HDRUKVersions are the HDR UK Gateway dataset schemas the export writes,
// the newest first.
var HDRUKVersions = []string{"4.0.0", "2.1.2"}

// DCAT vocabularies' IRIs: the EU Publications Office's authority tables
// (as DCAT-AP 3 asks), and IANA's media type for Parquet.
const (
	accessRestricted = "http://publications.europa.eu/resource/authority/access-right/RESTRICTED"
	themeHealth      = "http://publications.europa.eu/resource/authority/data-theme/HEAL"
	countryGBR       = "http://publications.europa.eu/resource/authority/country/GBR"
	parquetType      = "https://www.iana.org/assignments/media-types/application/vnd.apache.parquet"
	jsonType         = "https://www.iana.org/assignments/media-types/application/json"
	icebergSpec      = "https://iceberg.apache.org/spec/"
)

// Export describes a version as metadata for discovery services: "hdruk"
// is a document of the HDR UK Gateway's dataset schema (opt.HDRUKVersion,
// 4.0.0 or 2.1.2; TestHDRUKValidates checks both against HDRUK/schemata's
// JSON Schemas); "dcat" is a
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
		if opt.HDRUKVersion == "" || opt.HDRUKVersion == "4.0.0" {
			v = hdruk400(m, tables, title, abstract, events.From, events.To, opt)
			break
		}
		if opt.HDRUKVersion != "2.1.2" {
			return nil, fmt.Errorf("HDR UK schema version %q: this hub writes %s", opt.HDRUKVersion, strings.Join(HDRUKVersions, " and "))
		}
		v = hdruk212(m, tables, title, abstract, events.From, events.To, opt)
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
				file := path.Base(p.Path)
				d := map[string]any{"@id": id + "/" + t + "/" + file, "@type": "dcat:Distribution",
					"dct:title":      t + ": " + file,
					"dcat:accessURL": map[string]string{"@id": lakeURL + "/" + p.Path}, "dcat:mediaType": map[string]string{"@id": parquetType},
					"dct:license":      licence,
					"dct:accessRights": map[string]string{"@id": accessRestricted},
					"spdx:checksum":    map[string]any{"@type": "spdx:Checksum", "spdx:algorithm": map[string]string{"@id": "http://spdx.org/rdf/terms#checksumAlgorithm_sha256"}, "spdx:checksumValue": p.SHA256}}
				if t != "patients" {
					// The patients parts' sizes are left out: a pseudonym is
					// 16 random bytes that no codec shrinks, so a part's size
					// over 16 is close to its patient count.
					d["dcat:byteSize"] = map[string]any{"@value": p.Size, "@type": "xsd:nonNegativeInteger"}
				}
				dists = append(dists, d)
			}
			if ice := m.Tables[t].Iceberg; ice != "" {
				// The table as an Apache Iceberg table: its metadata file,
				// which Spark, Trino, ClickHouse, DuckDB and PyIceberg read.
				dists = append(dists, map[string]any{"@id": id + "/" + t + "/iceberg", "@type": "dcat:Distribution",
					"dct:title":      t + ": Apache Iceberg table",
					"dcat:accessURL": map[string]string{"@id": lakeURL + "/" + ice}, "dcat:mediaType": map[string]string{"@id": jsonType},
					"dct:conformsTo": map[string]string{"@id": icebergSpec}, "dct:license": licence,
					"dct:accessRights": map[string]string{"@id": accessRestricted}})
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

// hdruk400 is a version in the HDR UK Gateway's dataset schema 4.0.0.
func hdruk400(m *Manifest, tables []string, title, abstract, from, to string, opt ExportOptions) map[string]any {
	id, contact, observations := hdrukCommon(m, tables, opt, "Persons", "Events")
	date := func(d string) any {
		if d == "" {
			return nil
		}
		return d + "T00:00:00.000Z"
	}
	dataTables := hdrukTables(m, tables, "columns", func(c Column) map[string]any {
		return map[string]any{"name": c.Name, "dataType": c.Type, "description": nonEmpty(c.Description), "sensitive": strings.HasSuffix(c.Name, "_id"), "values": nil}
	})
	issued := m.Created.UTC().Format("2006-01-02T15:04:05.000Z")
	return map[string]any{
		"identifier": id,
		"version":    fmt.Sprintf("%d.0.0", m.Version),
		"revisions":  []map[string]any{{"version": fmt.Sprintf("%d.0.0", m.Version), "url": id}},
		"issued":     issued, "modified": issued,
		"summary": map[string]any{"title": title, "abstract": abstract,
			"dataCustodian":  map[string]any{"identifier": m.Dataset, "name": opt.Publisher, "logo": nil, "description": nil, "contactPoint": contact, "memberOf": nil},
			"populationSize": RoundCount(m.Tables["patients"].Rows), "keywords": []string{"Shared care record", "Primary care", "Secondary care", "De-identified"},
			"doiName": nil, "contactPoint": contact, "datasetAliases": nil},
		"documentation": map[string]any{"description": abstract, "associatedMedia": nil, "inPipeline": nil},
		"coverage": map[string]any{"spatial": "England", "typicalAgeRangeMin": 0, "typicalAgeRangeMax": 150, "datasetCompleteness": nil,
			"materialType": nil, "followUp": nil, "pathway": nil},
		"provenance": map[string]any{
			"origin": map[string]any{"purpose": []string{"Care"}, "datasetType": []map[string]any{{"name": "Health and disease", "subTypes": []string{}}},
				"source": []string{"EPR"}, "collectionSource": []string{"Primary care - Clinic", "Secondary care - In-patients", "Secondary care - Outpatients", "Secondary care - Accident and Emergency"},
				"imageContrast": nil},
			"temporal": map[string]any{"publishingFrequency": "Irregular", "distributionReleaseDate": m.Created.Format("2006-01-02"),
				"startDate": date(from), "endDate": date(to), "timeLag": "Variable"},
		},
		"accessibility": map[string]any{
			"usage": map[string]any{"dataUseLimitation": []string{"General research use"}, "dataUseRequirements": []string{"Project-specific restrictions", "Disclosure control"},
				"resourceCreator": nil},
			"access": map[string]any{"accessRights": "Aggregate, differentially private answers only, for projects a data access committee approved",
				"accessServiceCategory": nil, "accessService": nil, "accessRequestCost": nil, "deliveryLeadTime": nil, "jurisdiction": []string{"GB-ENG"},
				"dataController": nil, "dataProcessor": nil},
			"formatAndStandards": map[string]any{"vocabularyEncodingScheme": []string{"SNOMED CT", "ICD10", "DM+D", "OPCS4"}, "conformsTo": []string{"LOCAL"},
				"language": []string{"en"}, "format": []string{"application/vnd.apache.parquet"}},
		},
		"enrichmentAndLinkage": nil,
		"observations":         observations,
		"structuralMetadata":   map[string]any{"tables": dataTables, "syntheticDataWebLink": nil},
		"demographicFrequency": nil,
		"omics":                nil,
	}
}

// hdruk212 is a version in the HDR UK Gateway's dataset schema 2.1.2.
func hdruk212(m *Manifest, tables []string, title, abstract, from, to string, opt ExportOptions) map[string]any {
	id, contact, observations := hdrukCommon(m, tables, opt, "PERSONS", "EVENTS")
	structural := hdrukTables(m, tables, "elements", func(c Column) map[string]any {
		return map[string]any{"name": c.Name, "description": nonEmpty(c.Description), "dataType": c.Type, "sensitive": strings.HasSuffix(c.Name, "_id"), "isNullable": c.Nullable}
	})
	version := fmt.Sprintf("%d.0.0", m.Version)
	return map[string]any{
		"identifier": id,
		"version":    version,
		"revisions":  []map[string]any{{"version": version, "url": id}},
		"issued":     m.Created, "modified": m.Created,
		"summary": map[string]any{"title": title, "abstract": abstract, "contactPoint": contact,
			"publisher": map[string]any{"name": opt.Publisher, "contactPoint": contact},
			"keywords":  []string{"shared care record", "LHCRE", "primary care", "secondary care", "de-identified"}},
		"documentation": map[string]any{"description": abstract},
		"coverage":      map[string]any{"spatial": "England", "typicalAgeRange": "0-150"},
		"provenance": map[string]any{
			"origin": map[string]any{"purpose": []string{"CARE"}, "source": []string{"EPR"}, "collectionSituation": []string{"PRIMARY CARE", "IN-PATIENTS", "OUTPATIENTS", "ACCIDENT AND EMERGENCY"}},
			"temporal": map[string]any{"startDate": from, "endDate": to, "distributionReleaseDate": m.Created.Format("2006-01-02"),
				"accrualPeriodicity": "IRREGULAR", "timeLag": "VARIABLE"},
		},
		"accessibility": map[string]any{
			"usage": map[string]any{"dataUseLimitation": []string{"GENERAL RESEARCH USE"}, "dataUseRequirements": []string{"PROJECT SPECIFIC RESTRICTIONS"}},
			"access": map[string]any{"accessRights": "Aggregate, differentially private answers only, for projects a data access committee approved",
				"jurisdiction": []string{"GB-ENG"}, "dataController": opt.Publisher},
			"formatAndStandards": map[string]any{"vocabularyEncodingScheme": []string{"SNOMED CT", "ICD10", "DM+D"}, "conformsTo": []string{"LOCAL"},
				"language": []string{"en"}, "format": []string{"application/vnd.apache.parquet"}},
		},
		"enrichmentAndLinkage": map[string]any{"derivation": []string{fmt.Sprintf("Pseudonymisation domain %s, key fingerprint %s, de-identification policy sha256 %s, opt-out list sha256 %s",
			m.Provenance.PseudonymDomain, m.Provenance.KeyFingerprint, m.Provenance.PolicyHash, m.Provenance.OptOutSHA256)}},
		"observations":       observations,
		"structuralMetadata": structural,
	}
}

// hdrukCommon is what both HDR UK versions say alike: the identifier (a
// URL, or null without a base URL), the contact (null without one), and
// a count of each table's rows, rounded, the patients' as persons.
func hdrukCommon(m *Manifest, tables []string, opt ExportOptions, persons, events string) (id, contact any, observations []map[string]any) {
	if opt.BaseURL != "" {
		id = fmt.Sprintf("%s/catalog/%s/%d", strings.TrimRight(opt.BaseURL, "/"), m.Dataset, m.Version)
	}
	if opt.Contact != "" {
		contact = opt.Contact
	}
	observations = []map[string]any{}
	for _, t := range tables {
		node := events
		if t == "patients" {
			node = persons
		}
		observations = append(observations, map[string]any{"observedNode": node, "measuredValue": RoundCount(m.Tables[t].Rows),
			"disambiguatingDescription": t + " rows, rounded to 10", "observationDate": m.Created.Format("2006-01-02"), "measuredProperty": "Count"})
	}
	return id, contact, observations
}

// hdrukTables describes each table with its rounded row count and its
// columns under key, each as column writes it.
func hdrukTables(m *Manifest, tables []string, key string, column func(Column) map[string]any) []map[string]any {
	out := []map[string]any{}
	for _, t := range tables {
		cols := []map[string]any{}
		for _, c := range m.Tables[t].Schema {
			cols = append(cols, column(c))
		}
		out = append(out, map[string]any{"name": t, "description": fmt.Sprintf("about %d rows (rounded to 10)", RoundCount(m.Tables[t].Rows)), key: cols})
	}
	return out
}

func nonEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
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
func RoundCount(n int64) int64 { return RoundTo(n, 10) }

// RoundTo rounds a count to the nearest multiple of k.
func RoundTo(n, k int64) int64 { return (n + k/2) / k * k }
