package ingest

import (
	"bytes"
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

func keyOf(id []byte) refKey { return xxh3.Hash128(id).Bytes() }

// patientRefID returns the id a reference names a Patient by:
// Patient/ID, urn:uuid:ID, an absolute URL ending in Patient/ID, any of
// them with /_history/N after.
func patientRefID(ref []byte) ([]byte, bool) {
	if id, ok := bytes.CutPrefix(ref, []byte("Patient/")); ok && bytes.IndexByte(id, '/') < 0 && bytes.IndexByte(id, '?') < 0 {
		return id, len(id) > 0 // the common form, first
	}
	if id, ok := bytes.CutPrefix(ref, []byte("urn:uuid:")); ok {
		return id, len(id) > 0
	}
	if i := bytes.Index(ref, []byte("/_history/")); i >= 0 {
		ref = ref[:i]
	}
	i := bytes.LastIndex(ref, []byte("Patient/"))
	if i < 0 || (i > 0 && ref[i-1] != '/') {
		return nil, false
	}
	id := ref[i+len("Patient/"):]
	return id, len(id) > 0 && !bytes.ContainsAny(id, "/?")
}

// A coding is a code and its system, as text.
type coding struct{ system, code string }

// A component is an observation component's code and value.
type component struct {
	sys, code, value, unit, valueCode []byte
}

// A containedMed is a Medication contained in a resource.
type containedMed struct {
	id, sys, code []byte
}

// A link is a Patient's link to another.
type link struct {
	other      []byte // the other Patient's id
	replacedBy bool   // this one is replaced by the other, else replaces it
}

// fhirRes holds what ingest reads of one resource, as slices of its line
// (or unescaped copies); the rest of the resource is skipped. One walk of
// the line fills it: each byte is looked at once.
type fhirRes struct {
	typ, id, status               []byte
	nhs, verification             []byte // a Patient's NHS number and its verification status (UK Core)
	subjectNHS, ref               []byte // an event's patient: by NHS number, or the id a reference names
	given, family                 []byte
	nameScore, addrScore          int
	birthDate, gender, postcode   []byte
	ethnicity, gp, deceased       []byte
	class, hubType                []byte
	typeSys, typeCode             []byte // the first Encounter.type coding in another system
	admitSource, discharge        []byte
	registration                  bool
	start, end                    []byte // period
	provider, ods                 []byte
	sys, code                     []byte // code, vaccineCode or medicationCodeableConcept
	clinical, verified            []byte // a condition's statuses
	onset, onsetStart, recorded   []byte
	encounter, medRef             []byte
	contained                     []containedMed
	authoredOn, effective         []byte
	effStart, effEnd, effInstant  []byte
	dateAsserted, issued          []byte
	value, unit, valueCode        []byte
	comps                         []component
	performed, perfStart, perfEnd []byte
	occurrence                    []byte
	links                         []link
}

// resetFor clears the fields that decoding a resource of table t reads.
// Clearing the whole struct for every line cost 1 CPU-s of 19 on the
// benchmark export; the fields of other tables' resources may keep a
// stale value, which nothing reads.
func (r *fhirRes) resetFor(t Table) {
	r.typ, r.id, r.status, r.subjectNHS, r.ref = nil, nil, nil, nil, nil
	r.contained, r.comps, r.links = r.contained[:0], r.comps[:0], r.links[:0]
	switch t {
	case Patients:
		r.nhs, r.verification, r.given, r.family, r.nameScore, r.addrScore = nil, nil, nil, nil, 0, 0
		r.birthDate, r.gender, r.postcode, r.ethnicity, r.gp, r.deceased = nil, nil, nil, nil, nil, nil
	case Encounters:
		r.class, r.hubType, r.typeSys, r.typeCode, r.admitSource, r.discharge = nil, nil, nil, nil, nil, nil
		r.start, r.end, r.provider = nil, nil, nil
	case Conditions:
		r.sys, r.code, r.clinical, r.verified, r.onset, r.onsetStart, r.recorded, r.encounter = nil, nil, nil, nil, nil, nil, nil, nil
	case Medications:
		r.sys, r.code, r.medRef, r.authoredOn, r.effective, r.effStart, r.effEnd, r.dateAsserted = nil, nil, nil, nil, nil, nil, nil, nil
	case Observations:
		r.sys, r.code, r.effective, r.effStart, r.effInstant, r.issued, r.value, r.unit, r.valueCode = nil, nil, nil, nil, nil, nil, nil, nil, nil
	case Procedures:
		r.sys, r.code, r.performed, r.perfStart, r.perfEnd, r.encounter = nil, nil, nil, nil, nil, nil
	case Immunizations:
		r.sys, r.code, r.occurrence, r.encounter = nil, nil, nil, nil
	case Registrations:
		r.registration, r.ods, r.start, r.end, r.typeCode = false, nil, nil, nil, nil
	}
}

// A fhirDecoder turns NDJSON lines into rows of contract fields. Each
// worker owns one.
type fhirDecoder struct {
	st  *state
	t   Table
	out [][]byte
	r   fhirRes
	// verified counts Patients by their NHS number's verification
	// status code (01 verified, 02 not traced, ...), for the report.
	verified map[string]int64
}

func newFHIRDecoder(st *state, t Table) *fhirDecoder {
	return &fhirDecoder{st: st, t: t, out: make([][]byte, len(columns[t]))}
}

// strAt reads the string at b[i] into *dst.
func strAt(b []byte, i int, dst *[]byte) (int, error) {
	v, end, err := stringAt(b, i)
	*dst = v
	return end, err
}

// fields2 reads two string members of the object at b[i].
func fields2(b []byte, i int, k1, k2 string, v1, v2 *[]byte) (int, error) {
	return objectAt(b, i, func(key []byte, vi int) (int, error) {
		switch string(key) {
		case k1:
			return strAt(b, vi, v1)
		case k2:
			return strAt(b, vi, v2)
		}
		return skipValue(b, vi)
	})
}

// conceptAt reads a CodeableConcept: the first coding in a system the hub
// knows, else the first coding. With firstOnly, the first coding.
func conceptAt(b []byte, i int, firstOnly bool, sys, code *[]byte) (int, error) {
	// The first coding is taken; a later one replaces it only when the
	// first's system is not known and the later one's is, so a concept of
	// one coding (most) costs no look-up.
	n, done := 0, false
	return objectAt(b, i, func(key []byte, vi int) (int, error) {
		if string(key) != "coding" {
			return skipValue(b, vi)
		}
		return arrayAt(b, vi, func(ci int) (int, error) {
			var s, c []byte
			end, err := fields2(b, ci, "system", "code", &s, &c)
			if err != nil || done {
				return end, err
			}
			n++
			switch {
			case n == 1:
				*sys, *code = s, c
				done = firstOnly
			case n == 2 && knownSystem(*sys):
				done = true
			case knownSystem(s):
				*sys, *code, done = s, c, true
			}
			return end, nil
		})
	})
}

func knownSystem(s []byte) bool {
	_, ok := codeSystemURIs[string(s)]
	return ok
}

// extensionAt reads an array of extensions: the coded value of the one
// with the given url goes to dst.
func extensionAt(b []byte, i int, url string, dst *[]byte) (int, error) {
	return arrayAt(b, i, func(ei int) (int, error) {
		var u, code, ignore []byte
		end, err := objectAt(b, ei, func(k []byte, i int) (int, error) {
			switch string(k) {
			case "url":
				return strAt(b, i, &u)
			case "valueCodeableConcept":
				return conceptAt(b, i, true, &ignore, &code)
			}
			return skipValue(b, i)
		})
		if string(u) == url {
			*dst = code
		}
		return end, err
	})
}

// valueAt reads a number (or a string, which then fails as a value).
func valueAt(b []byte, i int, dst *[]byte) (int, error) {
	end, err := skipValue(b, i)
	if err == nil {
		*dst = jsonValue(b[i:end])
	}
	return end, err
}

// quantityAt reads a Quantity's value and unit (its code when no unit).
func quantityAt(b []byte, i int, value, unit *[]byte) (int, error) {
	var code []byte
	end, err := objectAt(b, i, func(key []byte, vi int) (int, error) {
		switch string(key) {
		case "value":
			return valueAt(b, vi, value)
		case "unit":
			return strAt(b, vi, unit)
		case "code":
			return strAt(b, vi, &code)
		}
		return skipValue(b, vi)
	})
	if *unit == nil {
		*unit = code
	}
	return end, err
}

// member reads one member of a resource into r.
func (r *fhirRes) member(b []byte, key []byte, vi int) (int, error) {
	var ignore []byte
	switch string(key) {
	case "resourceType":
		return strAt(b, vi, &r.typ)
	case "id":
		return strAt(b, vi, &r.id)
	case "status":
		return strAt(b, vi, &r.status)
	case "identifier":
		return arrayAt(b, vi, func(ii int) (int, error) {
			var sys, val, verification []byte
			end, err := objectAt(b, ii, func(k []byte, i int) (int, error) {
				switch string(k) {
				case "system":
					return strAt(b, i, &sys)
				case "value":
					return strAt(b, i, &val)
				case "extension":
					return extensionAt(b, i, ExtNHSNumberVerification, &verification)
				}
				return skipValue(b, i)
			})
			if r.nhs == nil && isNHSSystem(string(sys)) {
				r.nhs, r.verification = val, verification
			}
			return end, err
		})
	case "name":
		return arrayAt(b, vi, func(ni int) (int, error) {
			var use, family, given []byte
			end, err := objectAt(b, ni, func(k []byte, i int) (int, error) {
				switch string(k) {
				case "use":
					return strAt(b, i, &use)
				case "family":
					return strAt(b, i, &family)
				case "given":
					done := false
					return arrayAt(b, i, func(gi int) (int, error) {
						if done {
							return skipValue(b, gi)
						}
						done = true
						return strAt(b, gi, &given)
					})
				}
				return skipValue(b, i)
			})
			// The official (or usual) name; an old or maiden one only
			// when it is all there is.
			score := 1
			switch string(use) {
			case "official":
				score = 3
			case "usual":
				score = 2
			}
			if score > r.nameScore {
				r.nameScore, r.given, r.family = score, given, family
			}
			return end, err
		})
	case "birthDate":
		return strAt(b, vi, &r.birthDate)
	case "gender":
		return strAt(b, vi, &r.gender)
	case "address":
		return arrayAt(b, vi, func(ai int) (int, error) {
			var use, postcode []byte
			ended := false
			end, err := objectAt(b, ai, func(k []byte, i int) (int, error) {
				switch string(k) {
				case "use":
					return strAt(b, i, &use)
				case "postalCode":
					return strAt(b, i, &postcode)
				case "period":
					var s, e []byte
					end, err := fields2(b, i, "start", "end", &s, &e)
					ended = e != nil
					return end, err
				}
				return skipValue(b, i)
			})
			// The home address that has not ended, else one that has
			// not, else the first home address, else the first.
			score := 1
			if !ended {
				score += 2
			}
			if string(use) == "home" {
				score++
			}
			if score > r.addrScore {
				r.addrScore, r.postcode = score, postcode
			}
			return end, err
		})
	case "extension":
		return extensionAt(b, vi, ExtEthnicCategory, &r.ethnicity)
	case "generalPractitioner":
		return arrayAt(b, vi, func(gi int) (int, error) {
			return objectAt(b, gi, func(k []byte, i int) (int, error) {
				if string(k) != "identifier" {
					return skipValue(b, i)
				}
				var sys, val []byte
				end, err := fields2(b, i, "system", "value", &sys, &val)
				if r.gp == nil && string(sys) == SystemODS {
					r.gp = val
				}
				return end, err
			})
		})
	case "deceasedDateTime":
		return strAt(b, vi, &r.deceased)
	case "subject", "patient":
		if r.ref != nil || r.subjectNHS != nil {
			return skipValue(b, vi) // the first of subject and patient
		}
		return objectAt(b, vi, func(k []byte, i int) (int, error) {
			switch string(k) {
			case "reference":
				var ref []byte
				end, err := strAt(b, i, &ref)
				if id, ok := patientRefID(ref); ok {
					r.ref = id
				}
				return end, err
			case "identifier":
				var sys, val []byte
				end, err := fields2(b, i, "system", "value", &sys, &val)
				if isNHSSystem(string(sys)) {
					r.subjectNHS = val
				}
				return end, err
			}
			return skipValue(b, i)
		})
	case "class":
		if b[vi] == '{' { // R4: a Coding
			return fields2(b, vi, "code", "", &r.class, &ignore)
		}
		done := false
		return arrayAt(b, vi, func(ci int) (int, error) { // R5: CodeableConcepts
			if done {
				return skipValue(b, ci)
			}
			done = true
			return conceptAt(b, ci, true, &ignore, &r.class)
		})
	case "type":
		// Encounter.type (the contract's type) or EpisodeOfCare.type (a
		// GP registration).
		return arrayAt(b, vi, func(ti int) (int, error) {
			return objectAt(b, ti, func(k []byte, i int) (int, error) {
				if string(k) != "coding" {
					return skipValue(b, i)
				}
				return arrayAt(b, i, func(ci int) (int, error) {
					var sys, code []byte
					end, err := fields2(b, ci, "system", "code", &sys, &code)
					switch {
					case string(sys) == SystemEncounterType:
						r.hubType = code
					case r.typeCode == nil && len(code) > 0 && string(r.typ) != "EpisodeOfCare":
						r.typeSys, r.typeCode = sys, code
					case string(sys) == SystemRegistrationType || bytes.HasSuffix(sys, []byte("RegistrationType")) || bytes.HasSuffix(sys, []byte("RegistrationType-1")):
						r.registration = true
					}
					return end, err
				})
			})
		})
	case "period":
		return fields2(b, vi, "start", "end", &r.start, &r.end)
	case "hospitalization":
		return objectAt(b, vi, func(k []byte, i int) (int, error) {
			switch string(k) {
			case "admitSource":
				return conceptAt(b, i, true, &ignore, &r.admitSource)
			case "dischargeDisposition":
				return conceptAt(b, i, true, &ignore, &r.discharge)
			}
			return skipValue(b, i)
		})
	case "serviceProvider":
		return fields2(b, vi, "display", "", &r.provider, &ignore)
	case "managingOrganization":
		return objectAt(b, vi, func(k []byte, i int) (int, error) {
			if string(k) != "identifier" {
				return skipValue(b, i)
			}
			var sys, val []byte
			end, err := fields2(b, i, "system", "value", &sys, &val)
			if string(sys) == SystemODS {
				r.ods = val
			}
			return end, err
		})
	case "code", "vaccineCode", "medicationCodeableConcept":
		return conceptAt(b, vi, false, &r.sys, &r.code)
	case "clinicalStatus":
		return conceptAt(b, vi, true, &ignore, &r.clinical)
	case "verificationStatus":
		return conceptAt(b, vi, true, &ignore, &r.verified)
	case "onsetDateTime":
		return strAt(b, vi, &r.onset)
	case "onsetPeriod":
		return fields2(b, vi, "start", "", &r.onsetStart, &ignore)
	case "recordedDate":
		return strAt(b, vi, &r.recorded)
	case "encounter":
		end, err := fields2(b, vi, "reference", "", &r.encounter, &ignore)
		r.encounter = encounterID(r.encounter)
		return end, err
	case "medicationReference":
		return fields2(b, vi, "reference", "", &r.medRef, &ignore)
	case "contained":
		return arrayAt(b, vi, func(ci int) (int, error) {
			var m containedMed
			var typ []byte
			end, err := objectAt(b, ci, func(k []byte, i int) (int, error) {
				switch string(k) {
				case "resourceType":
					return strAt(b, i, &typ)
				case "id":
					return strAt(b, i, &m.id)
				case "code":
					return conceptAt(b, i, false, &m.sys, &m.code)
				}
				return skipValue(b, i)
			})
			if string(typ) == "Medication" {
				r.contained = append(r.contained, m)
			}
			return end, err
		})
	case "authoredOn":
		return strAt(b, vi, &r.authoredOn)
	case "effectiveDateTime":
		return strAt(b, vi, &r.effective)
	case "effectivePeriod":
		return fields2(b, vi, "start", "end", &r.effStart, &r.effEnd)
	case "effectiveInstant":
		return strAt(b, vi, &r.effInstant)
	case "dateAsserted":
		return strAt(b, vi, &r.dateAsserted)
	case "issued":
		return strAt(b, vi, &r.issued)
	case "valueQuantity":
		return quantityAt(b, vi, &r.value, &r.unit)
	case "valueInteger":
		return valueAt(b, vi, &r.value)
	case "valueCodeableConcept":
		return conceptAt(b, vi, true, &ignore, &r.valueCode)
	case "component":
		return arrayAt(b, vi, func(ci int) (int, error) {
			var c component
			end, err := objectAt(b, ci, func(k []byte, i int) (int, error) {
				switch string(k) {
				case "code":
					return conceptAt(b, i, false, &c.sys, &c.code)
				case "valueQuantity":
					return quantityAt(b, i, &c.value, &c.unit)
				case "valueInteger":
					return valueAt(b, i, &c.value)
				case "valueCodeableConcept":
					return conceptAt(b, i, true, &ignore, &c.valueCode)
				}
				return skipValue(b, i)
			})
			r.comps = append(r.comps, c)
			return end, err
		})
	case "performedDateTime":
		return strAt(b, vi, &r.performed)
	case "performedPeriod":
		return fields2(b, vi, "start", "end", &r.perfStart, &r.perfEnd)
	case "occurrenceDateTime":
		return strAt(b, vi, &r.occurrence)
	case "link":
		return arrayAt(b, vi, func(li int) (int, error) {
			var typ, other []byte
			end, err := objectAt(b, li, func(k []byte, i int) (int, error) {
				switch string(k) {
				case "type":
					return strAt(b, i, &typ)
				case "other":
					return fields2(b, i, "reference", "", &other, &ignore)
				}
				return skipValue(b, i)
			})
			if id, ok := patientRefID(other); ok && (string(typ) == "replaced-by" || string(typ) == "replaces") {
				r.links = append(r.links, link{id, string(typ) == "replaced-by"})
			}
			return end, err
		})
	}
	return skipValue(b, vi)
}

// scan reads a line's resource into d.r; false when it is not JSON.
func (d *fhirDecoder) scan(line []byte) bool {
	r := &d.r
	r.resetFor(d.t)
	i := skipWS(line, 0)
	end, err := walkObject(line, i, func(key []byte, vi int) (int, error) { return r.member(line, key, vi) })
	return err == nil && skipWS(line, end) == len(line)
}

// decode calls row for each row that one NDJSON line of table t gives (an
// observation gives one for itself and one for each component), with the
// fields in contract order and the id of the Patient the row names by
// reference (nil when it carries the NHS number, or names none); for a
// Patient, its own id. It returns the line's resource type and false for
// a line that is not JSON, or not of one of t's types.
func (d *fhirDecoder) decode(t Table, line []byte, row func(f [][]byte, ref []byte)) (string, bool) {
	if !d.scan(line) {
		return "", false
	}
	r := &d.r
	typ := ""
	for _, tt := range fhirTypes[t] {
		if string(r.typ) == tt {
			typ = tt // no copy of the line's bytes a resource
		}
	}
	if typ == "" {
		return string(r.typ), false
	}
	out := d.out
	for i := range out {
		out[i] = nil
	}
	var ref []byte
	if t == Patients {
		if len(r.id) > 0 {
			ref = r.id
		}
	} else if r.subjectNHS != nil {
		out[nhsColumn[t]] = r.subjectNHS
	} else if r.ref != nil {
		ref = r.ref
	}
	switch t {
	case Patients:
		if r.verification != nil {
			if d.verified == nil {
				d.verified = map[string]int64{}
			}
			d.verified[string(r.verification)]++
		}
		out[0], out[1], out[2], out[3], out[4] = r.nhs, r.given, r.family, r.birthDate, r.gender
		out[5], out[6], out[7], out[8] = r.postcode, r.ethnicity, r.gp, r.deceased
	case Encounters:
		out[0], out[2], out[3], out[4], out[5], out[6], out[7] = r.id, r.hubType, r.start, r.end, r.provider, r.class, r.status
		out[8], out[9], out[10], out[11] = r.typeSys, r.typeCode, r.admitSource, r.discharge
	case Conditions:
		out[1], out[2] = r.sys, r.code
		switch {
		case r.onset != nil:
			out[3] = r.onset
		case r.onsetStart != nil:
			out[3] = r.onsetStart
		default:
			out[3] = r.recorded
		}
		out[4], out[5], out[6] = r.encounter, r.clinical, r.verified
	case Medications:
		out[1], out[2] = r.sys, r.code
		if r.code == nil && r.medRef != nil {
			out[1], out[2] = d.medication(string(r.medRef))
		}
		if typ == "MedicationRequest" {
			out[3] = r.authoredOn
		} else {
			switch {
			case r.effStart != nil:
				out[3], out[4] = r.effStart, r.effEnd
			case r.effective != nil:
				out[3] = r.effective
			default:
				out[3] = r.dateAsserted
			}
		}
		out[5] = r.status
	case Observations:
		out[1], out[2] = r.sys, r.code
		switch {
		case r.effective != nil:
			out[5] = r.effective
		case r.effStart != nil:
			out[5] = r.effStart
		case r.effInstant != nil:
			out[5] = r.effInstant
		default:
			out[5] = r.issued
		}
		out[3], out[4], out[6], out[7] = r.value, r.unit, r.valueCode, r.status
		row(out, ref)
		for _, c := range r.comps {
			out[1], out[2], out[3], out[4], out[6] = c.sys, c.code, c.value, c.unit, c.valueCode
			row(out, ref)
		}
		return typ, true
	case Procedures:
		out[1], out[2] = r.sys, r.code
		if r.performed != nil {
			out[3] = r.performed
		} else {
			out[3], out[4] = r.perfStart, r.perfEnd
		}
		out[5], out[6] = r.encounter, r.status
	case Immunizations:
		out[1], out[2], out[3], out[4], out[5] = r.sys, r.code, r.occurrence, r.encounter, r.status
	case Registrations:
		if !r.registration {
			return typ, false
		}
		out[1], out[2], out[3] = r.ods, r.start, r.end
	}
	row(out, ref)
	return typ, true
}

// medication resolves a medicationReference to the code of a contained
// Medication (#id) or of one the export holds.
func (d *fhirDecoder) medication(ref string) (system, code []byte) {
	if id, ok := strings.CutPrefix(ref, "#"); ok {
		for _, m := range d.r.contained {
			if string(m.id) == id {
				return m.sys, m.code
			}
		}
		return nil, nil
	}
	id, ok := strings.CutPrefix(ref, "urn:uuid:")
	if !ok {
		i := strings.LastIndex(ref, "Medication/")
		if i < 0 {
			return nil, nil
		}
		id = ref[i+len("Medication/"):]
	}
	if c, ok := d.st.medications[id]; ok {
		return []byte(c.system), []byte(c.code)
	}
	return nil, nil
}

func isNHSSystem(s string) bool { return s == SystemNHSNumber || s == SystemNHSNumberOld }

func encounterID(ref []byte) []byte {
	if id, ok := bytes.CutPrefix(ref, []byte("Encounter/")); ok {
		return id
	}
	if i := bytes.LastIndex(ref, []byte("Encounter/")); i >= 0 {
		return ref[i+len("Encounter/"):]
	}
	return bytes.TrimPrefix(ref, []byte("urn:uuid:"))
}

// appendNHS writes n as ten digits.
func appendNHS(dst []byte, n uint64) []byte {
	s := strconv.AppendUint(dst[:0], n, 10)
	for len(s) < 10 {
		s = append([]byte{'0'}, s...)
	}
	return s
}
