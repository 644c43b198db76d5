package synth

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nhs-hub/hub/ingest"
)

var (
	sqrt = math.Sqrt
	exp  = math.Exp
)

// tables are the tables the generator writes, with the columns of its
// CSV files and the FHIR resource type of its NDJSON ones.
var tables = ingest.Tables

var tableResource = map[ingest.Table]string{ingest.Patients: "Patient", ingest.Encounters: "Encounter",
	ingest.Conditions: "Condition", ingest.Medications: "MedicationRequest", ingest.Observations: "Observation",
	ingest.Procedures: "Procedure", ingest.Immunizations: "Immunization", ingest.Registrations: "EpisodeOfCare"}

const numTables = 8

// DefaultPartRows is how many resources a FHIR part holds before the next
// part (Patient.000.ndjson, Patient.001.ndjson, ...) begins, as Bulk Data
// servers split their output.
const DefaultPartRows = 250_000

// writers hold one open file per table.
type writers struct {
	dir      string
	format   ingest.Format
	gzip     bool
	partRows int
	files    [numTables]*os.File
	gz       [numTables]*gzip.Writer
	bw       [numTables]*bufio.Writer
	crlf     [numTables]bool
	ids      [numTables]int
	part     [numTables]int
	rows     [numTables]int // in the open part
	line     []byte
}

func newWriters(dir string, f ingest.Format, gz, faults bool, partRows int) (*writers, error) {
	w := &writers{dir: dir, format: f, gzip: gz, partRows: partRows}
	if w.partRows <= 0 {
		w.partRows = DefaultPartRows
	}
	for _, t := range tables {
		w.crlf[t] = faults && (t == ingest.Conditions || t == ingest.Patients)
		if err := w.open(t); err != nil {
			w.close()
			return nil, err
		}
		if faults && t == ingest.Patients {
			w.bw[t].WriteString("\xEF\xBB\xBF") // a byte order mark, as Excel writes
		}
		if f == ingest.CSV {
			cols := t.Columns()
			if t == ingest.Patients {
				// Column order is free and header case is not significant.
				cols = append([]string{"NHS_Number"}, cols[1:]...)
			}
			w.line = append(w.line[:0], strings.Join(cols, ",")...)
			w.end(t)
		}
	}
	if f == ingest.FHIR {
		if err := w.medications(); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

// open starts table t's file, or its next part.
func (w *writers) open(t ingest.Table) error {
	name := t.String() + ".csv"
	if w.format == ingest.FHIR {
		name = fmt.Sprintf("%s.%03d.ndjson", tableResource[t], w.part[t])
	}
	if w.gzip {
		name += ".gz"
	}
	file, err := os.Create(filepath.Join(w.dir, name))
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	w.files[t] = file
	var out io.Writer = file
	if w.gzip {
		w.gz[t], _ = gzip.NewWriterLevel(file, gzip.BestSpeed)
		out = w.gz[t]
	}
	w.bw[t] = bufio.NewWriterSize(out, 1<<20)
	w.rows[t] = 0
	return nil
}

// closeFile finishes table t's open file.
func (w *writers) closeFile(t ingest.Table) error {
	if w.files[t] == nil {
		return nil
	}
	err := w.bw[t].Flush()
	if w.gz[t] != nil {
		if e := w.gz[t].Close(); err == nil {
			err = e
		}
		w.gz[t] = nil
	}
	if e := w.files[t].Close(); err == nil {
		err = e
	}
	w.files[t] = nil
	return err
}

// medications writes the drugs as FHIR Medication resources, which a
// MedicationRequest may name by reference.
func (w *writers) medications() error {
	f, err := os.Create(filepath.Join(w.dir, "Medication.000.ndjson"))
	if err != nil {
		return fmt.Errorf("create Medication.000.ndjson: %w", err)
	}
	bw := bufio.NewWriter(f)
	seen := map[string]bool{}
	for _, c := range conditions {
		for _, d := range c.drugs {
			if seen[d.code] {
				continue
			}
			seen[d.code] = true
			fmt.Fprintf(bw, `{"resourceType":"Medication","id":"med-%s","code":{"coding":[{"system":"%s","code":"%s"}]}}`+"\n", d.code, ingest.SystemDMD, d.code)
		}
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (w *writers) end(t ingest.Table) {
	if w.crlf[t] {
		w.line = append(w.line, '\r')
	}
	w.line = append(w.line, '\n')
	w.bw[t].Write(w.line)
}

// write writes one row of table t. ref is, in a FHIR extract, the id of
// the Patient the row names by reference (a Patient's own id): "" for an
// event that carries its patient's NHS number instead, as an extract may
// for a patient whose own record lacks a valid one.
func (w *writers) write(t ingest.Table, row []string, ref string) {
	if w.format == ingest.CSV {
		w.line = w.line[:0]
		for i, f := range row {
			if i > 0 {
				w.line = append(w.line, ',')
			}
			if strings.ContainsAny(f, ",\"\r\n") {
				w.line = append(w.line, '"')
				w.line = append(w.line, strings.ReplaceAll(f, `"`, `""`)...)
				w.line = append(w.line, '"')
			} else {
				w.line = append(w.line, f...)
			}
		}
		w.end(t)
		return
	}
	w.writeFHIR(t, fhirLine(w.line[:0], t, w.ids[t]+1, row, ref, nil))
}

// writeFHIR writes one resource, starting the next part when one is full.
func (w *writers) writeFHIR(t ingest.Table, line []byte) {
	if w.rows[t] == w.partRows {
		w.closeFile(t)
		w.part[t]++
		w.open(t)
	}
	w.ids[t]++
	w.rows[t]++
	w.line = line
	w.end(t)
}

func (w *writers) close() error {
	var first error
	for t := range w.files {
		if err := w.closeFile(ingest.Table(t)); err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return fmt.Errorf("write extract: %w", first)
	}
	return nil
}

// drugCodes are the codes of the Medication resources a FHIR extract
// holds.
var drugCodes = func() map[string]bool {
	m := map[string]bool{}
	for _, c := range conditions {
		for _, d := range c.drugs {
			m[d.code] = true
		}
	}
	return m
}()

// systemURIs are the FHIR URIs of the code systems the generator uses.
var systemURIs = map[string]string{"snomed": ingest.SystemSNOMED, "icd10": ingest.SystemICD10, "dmd": ingest.SystemDMD,
	"loinc": "http://loinc.org", "opcs4": "https://fhir.hl7.org.uk/Id/opcs-4", "cvx": "http://hl7.org/fhir/sid/cvx"}

// fhirLine appends one FHIR R4 resource for a row in contract order; ref
// is the Patient id it names (see writers.write), comps an observation's
// components as (code system, code, value, unit) rows.
func fhirLine(b []byte, t ingest.Table, id int, f []string, ref string, comps [][]string) []byte {
	b = append(b, `{"resourceType":"`...)
	b = append(b, tableResource[t]...)
	b = append(b, `","id":`...)
	switch t {
	case ingest.Patients:
		b = jsonString(b, ref)
	case ingest.Encounters:
		b = jsonString(b, f[0])
	default:
		b = jsonString(b, strings.ToLower(tableResource[t][:3])+"-"+strconv.Itoa(id))
	}
	str := func(b []byte, key, v string) []byte {
		if v == "" {
			return b
		}
		b = append(b, `,"`+key+`":`...)
		return jsonString(b, v)
	}
	subject := func(b []byte, key, nhs string) []byte {
		switch {
		case ref != "":
			b = append(b, `,"`+key+`":{"reference":`...)
			b = jsonString(b, "Patient/"+ref)
			return append(b, '}')
		case nhs == "":
			return append(b, `,"`+key+`":{"display":"unidentified"}`...)
		}
		b = append(b, `,"`+key+`":{"identifier":{"system":"`+ingest.SystemNHSNumber+`","value":`...)
		b = jsonString(b, nhs)
		return append(b, "}}"...)
	}
	coding := func(b []byte, sys, code string) []byte {
		uri, ok := systemURIs[sys]
		if !ok {
			uri = sys // a system the hub does not know, by its URI
		}
		b = append(b, `{"coding":[{"system":`...)
		b = jsonString(b, uri)
		b = append(b, `,"code":`...)
		b = jsonString(b, code)
		return append(b, "}]}"...)
	}
	status := func(b []byte, v, def string) []byte {
		if v == "" {
			v = def
		}
		return str(b, "status", v)
	}
	encounter := func(b []byte, id string) []byte {
		if id == "" {
			return b
		}
		b = append(b, `,"encounter":{"reference":`...)
		b = jsonString(b, "Encounter/"+id)
		return append(b, '}')
	}
	switch t {
	case ingest.Patients:
		if f[0] != "" {
			b = append(b, `,"identifier":[{"system":"`+ingest.SystemNHSNumber+`","value":`...)
			b = jsonString(b, f[0])
			b = append(b, "}]"...)
		}
		b = append(b, `,"name":[{"use":"official","family":`...)
		b = jsonString(b, f[2])
		b = append(b, `,"given":[`...)
		b = jsonString(b, f[1])
		b = append(b, `]}],"gender":`...)
		b = jsonString(b, f[4])
		b = append(b, `,"birthDate":`...)
		b = jsonString(b, f[3])
		b = str(b, "deceasedDateTime", f[8])
		b = append(b, `,"address":[{"use":"home","postalCode":`...)
		b = jsonString(b, f[5])
		b = append(b, `}],"extension":[{"url":"`+ingest.ExtEthnicCategory+`","valueCodeableConcept":{"coding":[{"system":"https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory","code":`...)
		b = jsonString(b, f[6])
		b = append(b, `}]}}],"generalPractitioner":[{"identifier":{"system":"`+ingest.SystemODS+`","value":`...)
		b = jsonString(b, f[7])
		b = append(b, "}}]"...)
	case ingest.Encounters:
		b = status(b, f[7], "finished")
		b = append(b, `,"class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":`...)
		b = jsonString(b, f[6])
		b = append(b, `},"type":[{"coding":[{"system":"`+ingest.SystemEncounterType+`","code":`...)
		b = jsonString(b, f[2])
		b = append(b, "}]}]"...)
		b = subject(b, "subject", f[1])
		b = append(b, `,"period":{"start":`...)
		b = jsonString(b, f[3])
		if f[4] != "" {
			b = append(b, `,"end":`...)
			b = jsonString(b, f[4])
		}
		b = append(b, `},"serviceProvider":{"display":`...)
		b = jsonString(b, f[5])
		b = append(b, "}"...)
	case ingest.Conditions:
		if f[5] != "" {
			b = append(b, `,"clinicalStatus":`...)
			b = coding(b, "http://terminology.hl7.org/CodeSystem/condition-clinical", f[5])
		}
		if f[6] != "" {
			b = append(b, `,"verificationStatus":`...)
			b = coding(b, "http://terminology.hl7.org/CodeSystem/condition-ver-status", f[6])
		}
		b = subject(b, "subject", f[0])
		b = append(b, `,"code":`...)
		b = coding(b, f[1], f[2])
		b = str(b, "onsetDateTime", f[3])
		b = encounter(b, f[4])
	case ingest.Medications:
		b = status(b, f[5], "active")
		b = append(b, `,"intent":"order"`...)
		b = subject(b, "subject", f[0])
		// The three ways exports name the drug, in turn.
		switch {
		case f[1] == "dmd" && id%3 == 1 && drugCodes[f[2]]:
			b = append(b, `,"medicationReference":{"reference":`...)
			b = jsonString(b, "Medication/med-"+f[2])
			b = append(b, '}')
		case id%3 == 2:
			b = append(b, `,"contained":[{"resourceType":"Medication","id":"m1","code":`...)
			b = coding(b, f[1], f[2])
			b = append(b, `}],"medicationReference":{"reference":"#m1"}`...)
		default:
			b = append(b, `,"medicationCodeableConcept":`...)
			b = coding(b, f[1], f[2])
		}
		b = str(b, "authoredOn", f[3])
	case ingest.Observations:
		b = status(b, f[7], "final")
		b = subject(b, "subject", f[0])
		b = append(b, `,"code":`...)
		b = coding(b, f[1], f[2])
		if f[3] != "" {
			b = append(b, `,"valueQuantity":{"value":`...)
			b = append(b, f[3]...)
			b = str(b, "unit", f[4])
			b = append(b, "}"...)
		}
		if f[6] != "" {
			b = append(b, `,"valueCodeableConcept":`...)
			b = coding(b, "snomed", f[6])
		}
		b = str(b, "effectiveDateTime", f[5])
		if len(comps) > 0 {
			b = append(b, `,"component":[`...)
			for i, c := range comps {
				if i > 0 {
					b = append(b, ',')
				}
				b = append(b, `{"code":`...)
				b = coding(b, c[0], c[1])
				b = append(b, `,"valueQuantity":{"value":`...)
				b = append(b, c[2]...)
				b = str(b, "unit", c[3])
				b = append(b, "}}"...)
			}
			b = append(b, ']')
		}
	case ingest.Procedures:
		b = status(b, f[6], "completed")
		b = subject(b, "subject", f[0])
		b = append(b, `,"code":`...)
		b = coding(b, f[1], f[2])
		if f[4] == "" {
			b = str(b, "performedDateTime", f[3])
		} else {
			b = append(b, `,"performedPeriod":{"start":`...)
			b = jsonString(b, f[3])
			b = append(b, `,"end":`...)
			b = jsonString(b, f[4])
			b = append(b, '}')
		}
		b = encounter(b, f[5])
	case ingest.Immunizations:
		b = status(b, f[5], "completed")
		b = subject(b, "patient", f[0])
		b = append(b, `,"vaccineCode":`...)
		b = coding(b, f[1], f[2])
		b = str(b, "occurrenceDateTime", f[3])
		b = encounter(b, f[4])
	case ingest.Registrations:
		b = append(b, `,"status":"`...)
		if f[3] == "" {
			b = append(b, `active"`...)
		} else {
			b = append(b, `finished"`...)
		}
		b = append(b, `,"type":[{"coding":[{"system":"`+ingest.SystemRegistrationType+`","code":"gp"}]}]`...)
		b = subject(b, "patient", f[0])
		b = append(b, `,"managingOrganization":{"identifier":{"system":"`+ingest.SystemODS+`","value":`...)
		b = jsonString(b, f[1])
		b = append(b, `}},"period":{"start":`...)
		b = jsonString(b, f[2])
		if f[3] != "" {
			b = append(b, `,"end":`...)
			b = jsonString(b, f[3])
		}
		b = append(b, '}')
	}
	return append(b, '}')
}

// jsonString appends s as a JSON string.
func jsonString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c < 0x20:
			b = append(b, fmt.Sprintf(`\u%04x`, c)...)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
