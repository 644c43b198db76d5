package ingest

import (
	"bytes"
	json "github.com/goccy/go-json"
	"strconv"
	"strings"

	"github.com/zeebo/xxh3"
)

// FHIR identifier systems and extensions of the extract contract.
const (
	SystemNHSNumber = "https://fhir.nhs.uk/Id/nhs-number"
	// SystemNHSNumberOld is the NHS number's system in older (DSTU2,
	// STU3 Care Connect) exports.
	SystemNHSNumberOld = "http://fhir.nhs.net/Id/nhs-number"
	SystemSNOMED       = "http://snomed.info/sct"
	SystemICD10        = "http://hl7.org/fhir/sid/icd-10"
	SystemICD10UK      = "http://hl7.org/fhir/sid/icd-10-uk"
	SystemDMD          = "https://dmd.nhs.uk"
	SystemODS          = "https://fhir.nhs.uk/Id/ods-organization-code"
	// SystemEncounterType carries the contract's encounter types
	// (gp, outpatient, inpatient, ae) in Encounter.type.
	SystemEncounterType = "https://hub.nhs.example/encounter-type"
	// SystemRegistrationType marks an EpisodeOfCare that is a GP
	// registration in the hub's own exports; the NHS's registration type
	// code systems (any system whose URI ends in RegistrationType or
	// RegistrationType-1) mark it too.
	SystemRegistrationType = "https://hub.nhs.example/registration-type"
	// ExtEthnicCategory is the UK Core ethnic category extension.
	ExtEthnicCategory = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
	// ExtNHSNumberVerification is the UK Core NHS number verification
	// status extension, on the NHS number identifier.
	ExtNHSNumberVerification = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus"
)

// A refKey names a FHIR Patient by its id: the XXH3-128 of the id, so
// that ingest holds 16 bytes a patient, never the id itself.
type refKey [16]byte

func keyOf(id string) refKey { return xxh3.HashString128(id).Bytes() }

// patientRefID returns the id a reference names a Patient by:
// Patient/ID, urn:uuid:ID, an absolute URL ending in Patient/ID, any of
// them with /_history/N after.
func patientRefID(ref string) (string, bool) {
	if id, ok := strings.CutPrefix(ref, "urn:uuid:"); ok {
		return id, id != ""
	}
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	i := strings.LastIndex(ref, "Patient/")
	if i < 0 || (i > 0 && ref[i-1] != '/') {
		return "", false
	}
	id := ref[i+len("Patient/"):]
	return id, id != "" && !strings.ContainsAny(id, "/?")
}

type fhirIdentifier struct {
	System    string          `json:"system"`
	Value     string          `json:"value"`
	Extension []fhirExtension `json:"extension"`
}

type fhirCoding struct {
	System string `json:"system"`
	Code   string `json:"code"`
}

type fhirConcept struct {
	Coding []fhirCoding `json:"coding"`
}

type fhirExtension struct {
	URL                  string       `json:"url"`
	ValueCodeableConcept *fhirConcept `json:"valueCodeableConcept"`
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

type fhirQuantity struct {
	// Value is kept raw: a string where a number belongs is an invalid
	// value (nulled), not a malformed resource.
	Value json.RawMessage `json:"value"`
	Unit  string          `json:"unit"`
	Code  string          `json:"code"`
}

type fhirValue struct {
	ValueQuantity        *fhirQuantity   `json:"valueQuantity"`
	ValueCodeableConcept *fhirConcept    `json:"valueCodeableConcept"`
	ValueInteger         json.RawMessage `json:"valueInteger"`
}

// fhirResource holds the elements of the resource types that the extract
// contract reads; everything else in a resource is ignored.
type fhirResource struct {
	ResourceType string           `json:"resourceType"`
	ID           string           `json:"id"`
	Status       string           `json:"status"`
	Identifier   []fhirIdentifier `json:"identifier"`

	// Patient
	Name []struct {
		Use    string   `json:"use"`
		Family string   `json:"family"`
		Given  []string `json:"given"`
	} `json:"name"`
	BirthDate string `json:"birthDate"`
	Gender    string `json:"gender"`
	Address   []struct {
		Use        string      `json:"use"`
		PostalCode string      `json:"postalCode"`
		Period     *fhirPeriod `json:"period"`
	} `json:"address"`
	Extension           []fhirExtension `json:"extension"`
	GeneralPractitioner []fhirRef       `json:"generalPractitioner"`
	DeceasedDateTime    string          `json:"deceasedDateTime"`

	// The patient an event belongs to.
	Subject *fhirRef `json:"subject"`
	Patient *fhirRef `json:"patient"`

	// Encounter, EpisodeOfCare
	Class                json.RawMessage `json:"class"` // R4: a Coding; R5: CodeableConcepts
	Type                 []fhirConcept   `json:"type"`
	Period               *fhirPeriod     `json:"period"`
	ServiceProvider      *fhirRef        `json:"serviceProvider"`
	ManagingOrganization *fhirRef        `json:"managingOrganization"`

	// Condition, Observation, Procedure
	Code               *fhirConcept `json:"code"`
	ClinicalStatus     *fhirConcept `json:"clinicalStatus"`
	VerificationStatus *fhirConcept `json:"verificationStatus"`
	OnsetDateTime      string       `json:"onsetDateTime"`
	OnsetPeriod        *fhirPeriod  `json:"onsetPeriod"`
	RecordedDate       string       `json:"recordedDate"`
	Encounter          *fhirRef     `json:"encounter"`
	Context            *fhirRef     `json:"context"`

	// MedicationRequest, MedicationStatement
	MedicationCodeableConcept *fhirConcept `json:"medicationCodeableConcept"`
	MedicationReference       *fhirRef     `json:"medicationReference"`
	Contained                 []struct {
		ResourceType string       `json:"resourceType"`
		ID           string       `json:"id"`
		Code         *fhirConcept `json:"code"`
	} `json:"contained"`
	AuthoredOn        string      `json:"authoredOn"`
	EffectiveDateTime string      `json:"effectiveDateTime"`
	EffectivePeriod   *fhirPeriod `json:"effectivePeriod"`
	EffectiveInstant  string      `json:"effectiveInstant"`
	DateAsserted      string      `json:"dateAsserted"`
	Issued            string      `json:"issued"`

	// Observation
	fhirValue
	Component []struct {
		Code *fhirConcept `json:"code"`
		fhirValue
	} `json:"component"`

	// Procedure, Immunization
	PerformedDateTime  string       `json:"performedDateTime"`
	PerformedPeriod    *fhirPeriod  `json:"performedPeriod"`
	VaccineCode        *fhirConcept `json:"vaccineCode"`
	OccurrenceDateTime string       `json:"occurrenceDateTime"`
}

// A fhirDecoder turns NDJSON lines into rows of contract fields. Each
// worker owns one.
type fhirDecoder struct {
	st  *state
	out [][]byte
}

func newFHIRDecoder(st *state, t Table) *fhirDecoder {
	return &fhirDecoder{st: st, out: make([][]byte, len(columns[t]))}
}

// decode calls row for each row that one NDJSON line of table t gives (an
// observation gives one for itself and one for each component), with the
// fields in contract order and the key of the Patient the row names by
// reference (nil when it carries the NHS number, or names none); for a
// Patient, the key of its own id. It returns the line's resource type
// and false for a line that is not JSON, or not of one of t's types.
func (d *fhirDecoder) decode(t Table, line []byte, row func(f [][]byte, ref *refKey)) (string, bool) {
	var r fhirResource
	if err := json.Unmarshal(line, &r); err != nil {
		return "", false
	}
	ok := false
	for _, typ := range fhirTypes[t] {
		ok = ok || r.ResourceType == typ
	}
	if !ok {
		return r.ResourceType, false
	}
	out := d.out
	for i := range out {
		out[i] = nil
	}
	set := func(i int, s string) { out[i] = []byte(s) }
	var ref *refKey
	if t != Patients {
		p := r.Subject
		if p == nil {
			p = r.Patient
		}
		if p != nil {
			if p.Identifier != nil && isNHSSystem(p.Identifier.System) {
				set(nhsColumn[t], p.Identifier.Value)
			} else if id, ok := patientRefID(p.Reference); ok {
				k := keyOf(id)
				ref = &k
			}
		}
	}
	switch t {
	case Patients:
		d.patient(&r, set)
		if r.ID != "" {
			k := keyOf(r.ID)
			ref = &k
		}
	case Encounters:
		set(0, r.ID)
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
		set(6, encounterClass(r.Class))
		set(7, r.Status)
	case Conditions:
		setCode(out, 1, r.Code)
		switch {
		case r.OnsetDateTime != "":
			set(3, r.OnsetDateTime)
		case r.OnsetPeriod != nil && r.OnsetPeriod.Start != "":
			set(3, r.OnsetPeriod.Start)
		default:
			set(3, r.RecordedDate)
		}
		set(4, encounterID(r.Encounter))
		set(5, firstCode(r.ClinicalStatus))
		set(6, firstCode(r.VerificationStatus))
	case Medications:
		concept := r.MedicationCodeableConcept
		if concept == nil && r.MedicationReference != nil {
			concept = d.medication(&r)
		}
		setCode(out, 1, concept)
		if r.ResourceType == "MedicationRequest" {
			set(3, r.AuthoredOn)
		} else {
			switch {
			case r.EffectivePeriod != nil && r.EffectivePeriod.Start != "":
				set(3, r.EffectivePeriod.Start)
				set(4, r.EffectivePeriod.End)
			case r.EffectiveDateTime != "":
				set(3, r.EffectiveDateTime)
			default:
				set(3, r.DateAsserted)
			}
		}
		set(5, r.Status)
	case Observations:
		setCode(out, 1, r.Code)
		switch {
		case r.EffectiveDateTime != "":
			set(5, r.EffectiveDateTime)
		case r.EffectivePeriod != nil && r.EffectivePeriod.Start != "":
			set(5, r.EffectivePeriod.Start)
		case r.EffectiveInstant != "":
			set(5, r.EffectiveInstant)
		default:
			set(5, r.Issued)
		}
		set(7, r.Status)
		setValue(out, &r.fhirValue)
		row(out, ref)
		for i := range r.Component {
			c := &r.Component[i]
			for _, k := range []int{1, 2, 3, 4, 6} {
				out[k] = nil
			}
			setCode(out, 1, c.Code)
			setValue(out, &c.fhirValue)
			row(out, ref)
		}
		return r.ResourceType, true
	case Procedures:
		setCode(out, 1, r.Code)
		switch {
		case r.PerformedDateTime != "":
			set(3, r.PerformedDateTime)
		case r.PerformedPeriod != nil:
			set(3, r.PerformedPeriod.Start)
			set(4, r.PerformedPeriod.End)
		}
		set(5, encounterID(r.Encounter))
		set(6, r.Status)
	case Immunizations:
		setCode(out, 1, r.VaccineCode)
		set(3, r.OccurrenceDateTime)
		set(4, encounterID(r.Encounter))
		set(5, r.Status)
	case Registrations:
		if !isRegistration(r.Type) {
			return r.ResourceType, false
		}
		if o := r.ManagingOrganization; o != nil && o.Identifier != nil && o.Identifier.System == SystemODS {
			set(1, o.Identifier.Value)
		}
		if r.Period != nil {
			set(2, r.Period.Start)
			set(3, r.Period.End)
		}
	}
	row(out, ref)
	return r.ResourceType, true
}

func isNHSSystem(s string) bool { return s == SystemNHSNumber || s == SystemNHSNumberOld }

// isRegistration reports whether an EpisodeOfCare's types mark it a GP
// registration.
func isRegistration(types []fhirConcept) bool {
	for _, c := range types {
		for _, cd := range c.Coding {
			if cd.System == SystemRegistrationType || strings.HasSuffix(cd.System, "RegistrationType") || strings.HasSuffix(cd.System, "RegistrationType-1") {
				return true
			}
		}
	}
	return false
}

func (d *fhirDecoder) patient(r *fhirResource, set func(int, string)) {
	for _, id := range r.Identifier {
		if isNHSSystem(id.System) {
			set(0, id.Value)
			break
		}
	}
	// The official (or usual) name; an old or maiden one only when it is
	// all there is.
	best := -1
	for i, n := range r.Name {
		if best < 0 || (n.Use == "official" || n.Use == "usual") && r.Name[best].Use != "official" {
			best = i
		}
	}
	if best >= 0 {
		n := r.Name[best]
		if len(n.Given) > 0 {
			set(1, n.Given[0])
		}
		set(2, n.Family)
	}
	set(3, r.BirthDate)
	set(4, r.Gender)
	// The home address that has not ended, else one that has not, else
	// the first home address, else the first.
	addr, best := -1, -1
	for i, a := range r.Address {
		score := 0
		if a.Period == nil || a.Period.End == "" {
			score += 2
		}
		if a.Use == "home" {
			score++
		}
		if score > best {
			addr, best = i, score
		}
	}
	if addr >= 0 {
		set(5, r.Address[addr].PostalCode)
	}
	for _, e := range r.Extension {
		if e.URL == ExtEthnicCategory {
			set(6, firstCode(e.ValueCodeableConcept))
		}
	}
	for _, gp := range r.GeneralPractitioner {
		if gp.Identifier != nil && gp.Identifier.System == SystemODS {
			set(7, gp.Identifier.Value)
			break
		}
	}
	set(8, r.DeceasedDateTime)
}

// medication resolves a medicationReference to the code of a contained
// Medication (#id) or of one the export holds.
func (d *fhirDecoder) medication(r *fhirResource) *fhirConcept {
	ref := r.MedicationReference.Reference
	if id, ok := strings.CutPrefix(ref, "#"); ok {
		for _, c := range r.Contained {
			if c.ResourceType == "Medication" && c.ID == id {
				return c.Code
			}
		}
		return nil
	}
	if id, ok := strings.CutPrefix(ref, "urn:uuid:"); ok {
		return d.st.medications[id]
	}
	if i := strings.LastIndex(ref, "Medication/"); i >= 0 {
		return d.st.medications[ref[i+len("Medication/"):]]
	}
	return nil
}

// encounterClass returns an Encounter's class code: R4's class is a
// Coding, R5's a list of CodeableConcepts.
func encounterClass(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return ""
	}
	if raw[0] == '{' {
		var c fhirCoding
		if json.Unmarshal(raw, &c) == nil {
			return c.Code
		}
		return ""
	}
	var cs []fhirConcept
	if json.Unmarshal(raw, &cs) == nil && len(cs) > 0 {
		return firstCode(&cs[0])
	}
	return ""
}

func encounterID(ref *fhirRef) string {
	if ref == nil {
		return ""
	}
	id := ref.Reference
	if i := strings.LastIndex(id, "Encounter/"); i >= 0 {
		return id[i+len("Encounter/"):]
	}
	return strings.TrimPrefix(id, "urn:uuid:")
}

func firstCode(c *fhirConcept) string {
	if c == nil || len(c.Coding) == 0 {
		return ""
	}
	return c.Coding[0].Code
}

// setCode puts a concept's code system and code at out[i] and out[i+1]:
// the first coding in a system the hub knows, else the first coding.
func setCode(out [][]byte, i int, c *fhirConcept) {
	if c == nil || len(c.Coding) == 0 {
		return
	}
	pick := c.Coding[0]
	for _, cd := range c.Coding {
		if _, ok := codeSystemURIs[cd.System]; ok {
			pick = cd
			break
		}
	}
	out[i], out[i+1] = []byte(pick.System), []byte(pick.Code)
}

// setValue puts an observation's value, unit and coded value in place.
func setValue(out [][]byte, v *fhirValue) {
	switch {
	case v.ValueQuantity != nil:
		out[3] = rawValue(v.ValueQuantity.Value)
		unit := v.ValueQuantity.Unit
		if unit == "" {
			unit = v.ValueQuantity.Code
		}
		out[4] = []byte(unit)
	case len(v.ValueInteger) > 0:
		out[3] = rawValue(v.ValueInteger)
	}
	if v.ValueCodeableConcept != nil {
		out[6] = []byte(firstCode(v.ValueCodeableConcept))
	}
}

// rawValue returns a JSON number's text, or a string's contents (which
// then fail as a value), or nothing for null.
func rawValue(raw json.RawMessage) []byte {
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" {
		return nil
	}
	if len(raw) >= 2 && raw[0] == '"' {
		return bytes.Trim(raw, `"`)
	}
	return raw
}

// appendNHS writes n as ten digits.
func appendNHS(dst []byte, n uint64) []byte {
	s := strconv.AppendUint(dst[:0], n, 10)
	for len(s) < 10 {
		s = append([]byte{'0'}, s...)
	}
	return s
}
