package deid

import (
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/nhs-hub/hub/ingest"
)

func field(name, doc string, typ arrow.DataType, nullable bool) arrow.Field {
	return arrow.Field{Name: name, Type: typ, Nullable: nullable,
		Metadata: arrow.NewMetadata([]string{"description"}, []string{doc})}
}

var (
	str  = arrow.BinaryTypes.String
	date = arrow.FixedWidthTypes.Date32
)

// Schemas returns the published schemas for pseudonyms of n bytes.
func Schemas(p Policy) map[ingest.Table]*arrow.Schema {
	pid := field("patient_id", "patient pseudonym: HMAC-SHA256 of the NHS number under the domain's key, truncated", &arrow.FixedSizeBinaryType{ByteWidth: p.PseudonymBytes}, false)
	eid := func(nullable bool) arrow.Field {
		return field("encounter_id", "encounter pseudonym (keyed HMAC of the extract's encounter id)", &arrow.FixedSizeBinaryType{ByteWidth: p.PseudonymBytes}, nullable)
	}
	dateDoc := map[EventDates]string{DatesKeep: "", DatesMonth: " (first of the month)", DatesShift: " (shifted per patient)"}[p.EventDates]
	patients := []arrow.Field{
		pid,
		field("year_of_birth", "year of birth; null when generalised to the age band by the k-anonymity check", arrow.PrimitiveTypes.Int16, true),
		field("month_of_birth", "month of birth (1-12); null when generalised", arrow.PrimitiveTypes.Int8, true),
		field("age_band", "five-year age band at the policy's reference date (90+ last)", str, true),
		field("sex", "administrative gender: male, female, other or unknown", str, true),
		field("district", "postcode district (e.g. LS6); null when generalised by the k-anonymity check", str, true),
		field("postcode_area", "postcode area (e.g. LS); null when generalised by the k-anonymity check", str, true),
		field("ethnicity_group", "NHS ethnic category group: White, Mixed, Asian, Black, Other, Not stated; null when generalised", str, true),
		field("ethnicity", "NHS ethnic category code; null when generalised to the group", str, true),
	}
	if p.KeepGPPractice {
		patients = append(patients, field("gp_practice", "ODS code of the registered GP practice; null when generalised by the k-anonymity check", str, true))
	}
	patients = append(patients, field("death_month", "month of death (first of the month); null when the k-anonymity check released the year alone", date, true),
		field("death_year", "year of death; null when alive or suppressed", arrow.PrimitiveTypes.Int16, true))
	encounters := []arrow.Field{
		eid(false), pid,
		field("type", "encounter type: gp, outpatient, inpatient or ae; null when the extract does not say", str, true),
		field("start_date", "start date"+dateDoc, date, false),
		field("end_date", "end date"+dateDoc, date, true),
	}
	if p.KeepOrganisation {
		encounters = append(encounters, field("organisation", "organisation providing the encounter", str, true))
	}
	encounters = append(encounters, field("class", "encounter class (HL7 v3 ActCode in words): ambulatory, emergency, inpatient, home, virtual, ...", str, true),
		field("type_system", "code system of type_code", str, true),
		field("type_code", "the encounter's type as a code (e.g. SNOMED CT), where the extract gives one", str, true),
		field("admission_source", "where the patient came from, as coded", str, true),
		field("discharge_disposition", "where the patient went, as coded", str, true))
	codes := func(doc string) []arrow.Field {
		return []arrow.Field{pid,
			field("code_system", "code system: snomed, icd10, dmd, read2, ctv3, opcs4, loinc, rxnorm, cvx, ...; a system the hub does not know is its URI", str, false),
			field("code", doc, str, false)}
	}
	registrations := []arrow.Field{pid}
	if p.KeepGPPractice {
		registrations = append(registrations, field("gp_practice", "ODS code of the GP practice registered with; null for a patient whose practice the k-anonymity check withheld", str, true))
	}
	registrations = append(registrations,
		field("start_date", "start of the registration"+dateDoc, date, false),
		field("end_date", "end of the registration"+dateDoc+"; null while it lasts", date, true))
	return map[ingest.Table]*arrow.Schema{
		ingest.Patients:   arrow.NewSchema(patients, nil),
		ingest.Encounters: arrow.NewSchema(encounters, nil),
		ingest.Conditions: arrow.NewSchema(append(codes("condition code"),
			field("onset_date", "onset or recorded date"+dateDoc, date, false),
			eid(true),
			field("clinical_status", "active, recurrence, relapse, inactive, remission or resolved", str, true),
			field("verification_status", "unconfirmed, provisional, differential or confirmed (refuted and entered-in-error are not published)", str, true)), nil),
		ingest.Medications: arrow.NewSchema(append(codes("medication code (dm+d, RxNorm, ...)"),
			field("start_date", "start date (a prescription's date of issue)"+dateDoc, date, false),
			field("end_date", "end date"+dateDoc, date, true)), nil),
		ingest.Observations: arrow.NewSchema(append(codes("observation code (a component's own code for a component row)"),
			field("value", "numeric value", arrow.PrimitiveTypes.Float64, true),
			field("unit", "unit of the value", str, true),
			field("effective_date", "effective date"+dateDoc, date, false),
			field("value_code", "coded value (e.g. a SNOMED CT finding)", str, true)), nil),
		ingest.Procedures: arrow.NewSchema(append(codes("procedure code (SNOMED CT, OPCS-4, ...)"),
			field("performed_date", "date performed"+dateDoc, date, false),
			field("end_date", "end of the period performed"+dateDoc, date, true),
			eid(true)), nil),
		ingest.Immunizations: arrow.NewSchema(append(codes("vaccine code (SNOMED CT, dm+d, CVX, ...)"),
			field("occurrence_date", "date given"+dateDoc, date, false),
			eid(true)), nil),
		ingest.Registrations: arrow.NewSchema(registrations, nil),
	}
}

// dictionaryColumns are the low-cardinality columns worth dictionary
// encoding in Parquet; every other column is plain.
var dictionaryColumns = []string{"age_band", "sex", "district", "postcode_area", "ethnicity_group", "ethnicity",
	"gp_practice", "type", "code_system", "code", "unit", "class", "clinical_status", "verification_status", "value_code",
	"type_system", "type_code", "admission_source", "discharge_disposition"}
