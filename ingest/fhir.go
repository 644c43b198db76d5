package ingest

import (
	"encoding/json"
	"strings"
)

// FHIR identifier and code systems of the extract contract.
const (
	SystemNHSNumber = "https://fhir.nhs.uk/Id/nhs-number"
	SystemSNOMED    = "http://snomed.info/sct"
	SystemICD10     = "http://hl7.org/fhir/sid/icd-10"
	SystemICD10UK   = "http://hl7.org/fhir/sid/icd-10-uk"
	SystemDMD       = "https://dmd.nhs.uk"
	SystemODS       = "https://fhir.nhs.uk/Id/ods-organization-code"
	// SystemEncounterType carries the contract's encounter types
	// (gp, outpatient, inpatient, ae) in Encounter.type.
	SystemEncounterType = "https://hub.nhs.example/encounter-type"
	// ExtEthnicCategory is the UK Core ethnic category extension.
	ExtEthnicCategory = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
)

type fhirIdentifier struct {
	System string `json:"system"`
	Value  string `json:"value"`
}

type fhirCoding struct {
	System string `json:"system"`
	Code   string `json:"code"`
}

type fhirConcept struct {
	Coding []fhirCoding `json:"coding"`
}

type fhirRef struct {
	Reference  string          `json:"reference"`
	Identifier *fhirIdentifier `json:"identifier"`
	Display    string          `json:"display"`
}

type fhirPeriod struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// fhirResource holds the elements of the five resource types that the
// extract contract uses; everything else in a resource is ignored.
type fhirResource struct {
	ResourceType string           `json:"resourceType"`
	ID           string           `json:"id"`
	Identifier   []fhirIdentifier `json:"identifier"`
	Name         []struct {
		Family string   `json:"family"`
		Given  []string `json:"given"`
	} `json:"name"`
	BirthDate string `json:"birthDate"`
	Gender    string `json:"gender"`
	Address   []struct {
		PostalCode string `json:"postalCode"`
	} `json:"address"`
	Extension []struct {
		URL                  string       `json:"url"`
		ValueCodeableConcept *fhirConcept `json:"valueCodeableConcept"`
	} `json:"extension"`
	GeneralPractitioner []fhirRef `json:"generalPractitioner"`
	DeceasedDateTime    string    `json:"deceasedDateTime"`

	Subject         *fhirRef      `json:"subject"`
	Type            []fhirConcept `json:"type"`
	Period          *fhirPeriod   `json:"period"`
	ServiceProvider *fhirRef      `json:"serviceProvider"`

	Code          *fhirConcept `json:"code"`
	OnsetDateTime string       `json:"onsetDateTime"`
	Encounter     *fhirRef     `json:"encounter"`

	MedicationCodeableConcept *fhirConcept `json:"medicationCodeableConcept"`
	EffectivePeriod           *fhirPeriod  `json:"effectivePeriod"`

	ValueQuantity *struct {
		Value json.Number `json:"value"`
		Unit  string      `json:"unit"`
	} `json:"valueQuantity"`
	EffectiveDateTime string `json:"effectiveDateTime"`
}

// fhirFields decodes one NDJSON line of table t into fields in contract
// order. It returns false for a line that is not a JSON resource of the
// table's type.
func fhirFields(t Table, line []byte, out [][]byte) bool {
	var r fhirResource
	if err := json.Unmarshal(line, &r); err != nil || r.ResourceType != t.FHIRResource() {
		return false
	}
	set := func(i int, s string) { out[i] = []byte(s) }
	for i := range out {
		out[i] = nil
	}
	switch t {
	case Patients:
		for _, id := range r.Identifier {
			if id.System == SystemNHSNumber {
				set(0, id.Value)
				break
			}
		}
		if len(r.Name) > 0 {
			if len(r.Name[0].Given) > 0 {
				set(1, r.Name[0].Given[0])
			}
			set(2, r.Name[0].Family)
		}
		set(3, r.BirthDate)
		set(4, r.Gender)
		if len(r.Address) > 0 {
			set(5, r.Address[0].PostalCode)
		}
		for _, e := range r.Extension {
			if e.URL == ExtEthnicCategory && e.ValueCodeableConcept != nil && len(e.ValueCodeableConcept.Coding) > 0 {
				set(6, e.ValueCodeableConcept.Coding[0].Code)
			}
		}
		for _, gp := range r.GeneralPractitioner {
			if gp.Identifier != nil && gp.Identifier.System == SystemODS {
				set(7, gp.Identifier.Value)
			}
		}
		set(8, r.DeceasedDateTime)
	case Encounters:
		set(0, r.ID)
		set(1, subjectNHS(r.Subject))
		for _, c := range r.Type {
			for _, cd := range c.Coding {
				if cd.System == SystemEncounterType {
					set(2, cd.Code)
				}
			}
		}
		if r.Period != nil {
			set(3, r.Period.Start)
			set(4, r.Period.End)
		}
		if r.ServiceProvider != nil {
			set(5, r.ServiceProvider.Display)
		}
	case Conditions:
		set(0, subjectNHS(r.Subject))
		sys, code := firstCoding(r.Code)
		set(1, sys)
		set(2, code)
		set(3, r.OnsetDateTime)
		if r.Encounter != nil {
			set(4, strings.TrimPrefix(r.Encounter.Reference, "Encounter/"))
		}
	case Medications:
		set(0, subjectNHS(r.Subject))
		sys, code := firstCoding(r.MedicationCodeableConcept)
		set(1, sys)
		set(2, code)
		if r.EffectivePeriod != nil {
			set(3, r.EffectivePeriod.Start)
			set(4, r.EffectivePeriod.End)
		}
	case Observations:
		set(0, subjectNHS(r.Subject))
		sys, code := firstCoding(r.Code)
		set(1, sys)
		set(2, code)
		if r.ValueQuantity != nil {
			set(3, string(r.ValueQuantity.Value))
			set(4, r.ValueQuantity.Unit)
		}
		set(5, r.EffectiveDateTime)
	}
	return true
}

func subjectNHS(ref *fhirRef) string {
	if ref == nil || ref.Identifier == nil || ref.Identifier.System != SystemNHSNumber {
		return ""
	}
	return ref.Identifier.Value
}

// firstCoding returns the first coding in a system the contract knows,
// named by the contract's short system name; or the first coding's raw
// system, which then fails validation.
func firstCoding(c *fhirConcept) (string, string) {
	if c == nil || len(c.Coding) == 0 {
		return "", ""
	}
	for _, cd := range c.Coding {
		switch cd.System {
		case SystemSNOMED:
			return "snomed", cd.Code
		case SystemICD10, SystemICD10UK:
			return "icd10", cd.Code
		case SystemDMD:
			return "dmd", cd.Code
		}
	}
	return c.Coding[0].System, c.Coding[0].Code
}
