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

// tables are the tables the generator writes, with the columns and FHIR
// resource type it writes each in.
var tables = []ingest.Table{ingest.Patients, ingest.Encounters, ingest.Conditions, ingest.Medications, ingest.Observations}

var (
	tableColumns = map[ingest.Table][]string{
		ingest.Patients:     ingest.Patients.Columns(),
		ingest.Encounters:   {"encounter_id", "nhs_number", "type", "start_date", "end_date", "organisation"},
		ingest.Conditions:   {"nhs_number", "code_system", "code", "onset_date", "encounter_id"},
		ingest.Medications:  {"nhs_number", "code_system", "code", "start_date", "end_date"},
		ingest.Observations: {"nhs_number", "code_system", "code", "value", "unit", "effective_date"},
	}
	tableResource = map[ingest.Table]string{ingest.Patients: "Patient", ingest.Encounters: "Encounter",
		ingest.Conditions: "Condition", ingest.Medications: "MedicationStatement", ingest.Observations: "Observation"}
)

const numTables = 8

// writers hold one open file per table.
type writers struct {
	format ingest.Format
	files  [numTables]*os.File
	gz     [numTables]*gzip.Writer
	bw     [numTables]*bufio.Writer
	crlf   [numTables]bool
	ids    [numTables]int
	line   []byte
}

func newWriters(dir string, f ingest.Format, gz, faults bool) (*writers, error) {
	w := &writers{format: f}
	for _, t := range tables {
		name := t.String() + ".csv"
		if f == ingest.FHIR {
			name = tableResource[t] + ".ndjson"
		}
		if gz {
			name += ".gz"
		}
		file, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			w.close()
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
		w.files[t] = file
		var out io.Writer = file
		if gz {
			w.gz[t], _ = gzip.NewWriterLevel(file, gzip.BestSpeed)
			out = w.gz[t]
		}
		w.bw[t] = bufio.NewWriterSize(out, 1<<20)
		if faults && t == ingest.Patients {
			w.bw[t].WriteString("\xEF\xBB\xBF") // a byte order mark, as Excel writes
		}
		w.crlf[t] = faults && (t == ingest.Conditions || t == ingest.Patients)
		if f == ingest.CSV {
			cols := tableColumns[t]
			if t == ingest.Patients {
				// Column order is free and header case is not significant.
				cols = append([]string{"NHS_Number"}, cols[1:]...)
			}
			w.line = append(w.line[:0], strings.Join(cols, ",")...)
			w.end(t)
		}
	}
	return w, nil
}

func (w *writers) end(t ingest.Table) {
	if w.crlf[t] {
		w.line = append(w.line, '\r')
	}
	w.line = append(w.line, '\n')
	w.bw[t].Write(w.line)
}

func (w *writers) write(t ingest.Table, row []string) {
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
	w.ids[t]++
	w.line = fhirLine(w.line[:0], t, w.ids[t], row)
	w.end(t)
}

func (w *writers) close() error {
	var first error
	for t := range w.files {
		if w.files[t] == nil {
			continue
		}
		if err := w.bw[t].Flush(); err != nil && first == nil {
			first = err
		}
		if w.gz[t] != nil {
			if err := w.gz[t].Close(); err != nil && first == nil {
				first = err
			}
		}
		if err := w.files[t].Close(); err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return fmt.Errorf("write extract: %w", first)
	}
	return nil
}

// fhirLine appends one FHIR R4 resource for a row in contract order.
func fhirLine(b []byte, t ingest.Table, id int, f []string) []byte {
	b = append(b, `{"resourceType":"`...)
	b = append(b, tableResource[t]...)
	b = append(b, `","id":`...)
	if t == ingest.Encounters {
		b = jsonString(b, f[0])
	} else {
		b = jsonString(b, strings.ToLower(tableResource[t][:3])+"-"+strconv.Itoa(id))
	}
	subject := func(b []byte, nhs string) []byte {
		if nhs == "" {
			return append(b, `,"subject":{"display":"unidentified"}`...)
		}
		b = append(b, `,"subject":{"identifier":{"system":"`+ingest.SystemNHSNumber+`","value":`...)
		b = jsonString(b, nhs)
		return append(b, "}}"...)
	}
	coding := func(b []byte, sys, code string) []byte {
		uri := map[string]string{"snomed": ingest.SystemSNOMED, "icd10": ingest.SystemICD10, "dmd": ingest.SystemDMD}[sys]
		b = append(b, `{"coding":[{"system":"`+uri+`","code":`...)
		b = jsonString(b, code)
		return append(b, "}]}"...)
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
		if f[8] != "" {
			b = append(b, `,"deceasedDateTime":`...)
			b = jsonString(b, f[8])
		}
		b = append(b, `,"address":[{"use":"home","postalCode":`...)
		b = jsonString(b, f[5])
		b = append(b, `}],"extension":[{"url":"`+ingest.ExtEthnicCategory+`","valueCodeableConcept":{"coding":[{"system":"https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategory","code":`...)
		b = jsonString(b, f[6])
		b = append(b, `}]}}],"generalPractitioner":[{"identifier":{"system":"`+ingest.SystemODS+`","value":`...)
		b = jsonString(b, f[7])
		b = append(b, "}}]"...)
	case ingest.Encounters:
		class := map[string]string{"gp": "AMB", "outpatient": "AMB", "inpatient": "IMP", "ae": "EMER"}[f[2]]
		if class == "" {
			class = "AMB"
		}
		b = append(b, `,"status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"`+class+`"},"type":[{"coding":[{"system":"`+ingest.SystemEncounterType+`","code":`...)
		b = jsonString(b, f[2])
		b = append(b, "}]}]"...)
		b = subject(b, f[1])
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
		b = subject(b, f[0])
		b = append(b, `,"code":`...)
		b = coding(b, f[1], f[2])
		b = append(b, `,"onsetDateTime":`...)
		b = jsonString(b, f[3])
		if f[4] != "" {
			b = append(b, `,"encounter":{"reference":`...)
			b = jsonString(b, "Encounter/"+f[4])
			b = append(b, "}"...)
		}
	case ingest.Medications:
		b = append(b, `,"status":"completed"`...)
		b = subject(b, f[0])
		b = append(b, `,"medicationCodeableConcept":`...)
		b = coding(b, f[1], f[2])
		b = append(b, `,"effectivePeriod":{"start":`...)
		b = jsonString(b, f[3])
		b = append(b, `,"end":`...)
		b = jsonString(b, f[4])
		b = append(b, "}"...)
	case ingest.Observations:
		b = append(b, `,"status":"final"`...)
		b = subject(b, f[0])
		b = append(b, `,"code":`...)
		b = coding(b, f[1], f[2])
		if f[3] != "" {
			b = append(b, `,"valueQuantity":{"value":`...)
			b = append(b, f[3]...)
			b = append(b, `,"unit":`...)
			b = jsonString(b, f[4])
			b = append(b, "}"...)
		}
		b = append(b, `,"effectiveDateTime":`...)
		b = jsonString(b, f[5])
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
