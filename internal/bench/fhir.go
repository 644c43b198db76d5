package bench

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
)

// fhirEvent is how the DuckDB FHIR baseline reads one resource type: the
// columns read_ndjson is told (no inference), the patient reference, and
// the SELECT list of what it writes.
type fhirEvent struct {
	resource, columns, patient, selects string
}

const (
	coding = `STRUCT("system" VARCHAR, code VARCHAR)[]`
	ref    = `STRUCT(reference VARCHAR)`
	period = `STRUCT("start" VARCHAR, "end" VARCHAR)`
)

var fhirEvents = []fhirEvent{
	{"Encounter", `{id: 'VARCHAR', status: 'VARCHAR', "class": 'STRUCT(code VARCHAR)', "type": 'STRUCT(coding ` + coding + `)[]', subject: '` + ref + `', period: '` + period + `', serviceProvider: 'STRUCT(display VARCHAR)'}`,
		"subject", `unhex(sha256('KEY' || e.id)) AS encounter_id, e."type"[1].coding[1].code AS type, CAST(left(e.period."start", 10) AS DATE) AS start_date,
			CAST(left(e.period."end", 10) AS DATE) AS end_date, e."class".code AS class`},
	{"Condition", `{code: 'STRUCT(coding ` + coding + `)', subject: '` + ref + `', onsetDateTime: 'VARCHAR', recordedDate: 'VARCHAR', clinicalStatus: 'STRUCT(coding ` + coding + `)', verificationStatus: 'STRUCT(coding ` + coding + `)', encounter: '` + ref + `'}`,
		"subject", `e.code.coding[1]."system" AS code_system, e.code.coding[1].code AS code, CAST(left(coalesce(e.onsetDateTime, e.recordedDate), 10) AS DATE) AS onset_date,
			unhex(sha256('KEY' || replace(e.encounter.reference, 'Encounter/', ''))) AS encounter_id, e.clinicalStatus.coding[1].code AS clinical_status, e.verificationStatus.coding[1].code AS verification_status`},
	{"MedicationRequest", `{status: 'VARCHAR', medicationCodeableConcept: 'STRUCT(coding ` + coding + `)', medicationReference: '` + ref + `', subject: '` + ref + `', authoredOn: 'VARCHAR'}`,
		"subject", `e.medicationCodeableConcept.coding[1]."system" AS code_system, coalesce(e.medicationCodeableConcept.coding[1].code, replace(e.medicationReference.reference, 'Medication/med-', '')) AS code,
			CAST(left(e.authoredOn, 10) AS DATE) AS start_date`},
	{"Observation", `{status: 'VARCHAR', code: 'STRUCT(coding ` + coding + `)', subject: '` + ref + `', effectiveDateTime: 'VARCHAR', valueQuantity: 'STRUCT(value DOUBLE, unit VARCHAR)', valueCodeableConcept: 'STRUCT(coding ` + coding + `)'}`,
		"subject", `e.code.coding[1]."system" AS code_system, e.code.coding[1].code AS code, e.valueQuantity.value AS value, e.valueQuantity.unit AS unit,
			CAST(left(e.effectiveDateTime, 10) AS DATE) AS effective_date, e.valueCodeableConcept.coding[1].code AS value_code`},
	{"Procedure", `{status: 'VARCHAR', code: 'STRUCT(coding ` + coding + `)', subject: '` + ref + `', performedDateTime: 'VARCHAR', performedPeriod: '` + period + `', encounter: '` + ref + `'}`,
		"subject", `e.code.coding[1]."system" AS code_system, e.code.coding[1].code AS code, CAST(left(coalesce(e.performedDateTime, e.performedPeriod."start"), 10) AS DATE) AS performed_date,
			CAST(left(e.performedPeriod."end", 10) AS DATE) AS end_date`},
	{"Immunization", `{status: 'VARCHAR', vaccineCode: 'STRUCT(coding ` + coding + `)', patient: '` + ref + `', occurrenceDateTime: 'VARCHAR'}`,
		"patient", `e.vaccineCode.coding[1]."system" AS code_system, e.vaccineCode.coding[1].code AS code, CAST(left(e.occurrenceDateTime, 10) AS DATE) AS occurrence_date`},
	{"EpisodeOfCare", `{patient: '` + ref + `', managingOrganization: 'STRUCT(identifier STRUCT(value VARCHAR))', period: '` + period + `'}`,
		"patient", `e.managingOrganization.identifier.value AS gp_practice, CAST(left(e.period."start", 10) AS DATE) AS start_date, CAST(left(e.period."end", 10) AS DATE) AS end_date`},
}

// DuckDBFHIRPipeline is the plain-DuckDB pipeline for a FHIR bulk export
// that DuckDBPipeline is for CSV: read_ndjson of every resource type with
// its columns named (no schema inference), the Patients' NHS numbers
// anti-joined against the opt-out list, one sha256(key || nhs_number)
// pseudonym per surviving patient, every event joined to it through its
// subject's reference, and each table written with COPY ... TO parquet
// (COMPRESSION zstd). It validates nothing, knows no type 1 dissent or
// status, and writes no component rows. The rows it read are the
// extract's (truth.json); counting them again would read the files twice.
func DuckDBFHIRPipeline(ctx context.Context, dir, out, key string) error {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return fmt.Errorf("open duckdb: %w", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	q := func(p string) string { return "'" + strings.ReplaceAll(p, "'", "''") + "'" }
	files := func(resource string) string { return q(filepath.Join(dir, resource+".*.ndjson")) }
	stmts := []string{
		`CREATE TABLE optout AS SELECT DISTINCT nhs FROM read_csv(` + q(filepath.Join(dir, "optouts.txt")) + `, header = false, columns = {'nhs': 'VARCHAR'})`,
		`CREATE TABLE pat AS SELECT id, list_filter(identifier, x -> x."system" = 'https://fhir.nhs.uk/Id/nhs-number')[1].value AS nhs,
			CAST(birthDate AS DATE) AS dob, gender, address[1].postalCode AS postcode, CAST(left(deceasedDateTime, 10) AS DATE) AS dod
			FROM read_ndjson(` + files("Patient") + `, columns = {id: 'VARCHAR', identifier: 'STRUCT("system" VARCHAR, value VARCHAR)[]',
			birthDate: 'VARCHAR', gender: 'VARCHAR', address: 'STRUCT(postalCode VARCHAR)[]', deceasedDateTime: 'VARCHAR'})`,
		`CREATE TABLE pid AS SELECT p.id, p.nhs, unhex(sha256('KEY' || p.nhs)) AS patient_id FROM pat p ANTI JOIN optout o ON p.nhs = o.nhs`,
		`COPY (SELECT pid.patient_id, year(p.dob) AS year_of_birth, month(p.dob) AS month_of_birth, p.gender AS sex,
			split_part(p.postcode, ' ', 1) AS district, p.dod FROM pat p JOIN pid ON p.id = pid.id)
			TO ` + q(filepath.Join(out, "patients.parquet")) + ` (FORMAT parquet, COMPRESSION zstd)`,
	}
	for _, e := range fhirEvents {
		stmts = append(stmts, `COPY (SELECT pid.patient_id, `+e.selects+` FROM read_ndjson(`+files(e.resource)+`, columns = `+e.columns+`) e
			JOIN pid ON pid.id = replace(e.`+e.patient+`.reference, 'Patient/', ''))
			TO `+q(filepath.Join(out, strings.ToLower(e.resource)+".parquet"))+` (FORMAT parquet, COMPRESSION zstd)`)
	}
	for _, s := range stmts {
		s = strings.ReplaceAll(s, "'KEY'", q(key))
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("duckdb fhir pipeline: %w", err)
		}
	}
	return nil
}
