package ingest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

var errLineTooLong = errors.New("line too long")

// A Reason says why a row did not pass through. Each reason belongs to one
// [Outcome]. Reasons never carry row values.
type Reason uint8

// The reasons a row is not kept.
const (
	ReasonNone Reason = iota
	// Quarantined: the row itself is malformed.
	ReasonMissingNHSNumber
	ReasonInvalidNHSNumber
	ReasonMalformedRow
	ReasonRecordTooLong
	ReasonFieldTooLong
	ReasonMissingField
	ReasonInvalidDate
	ReasonInvalidCode
	ReasonInvalidCodeSystem
	ReasonInvalidSex
	ReasonInvalidPostcode
	ReasonInvalidEthnicity
	ReasonInvalidPractice
	ReasonInvalidValue
	ReasonDuplicatePatient
	// Opted out: the patient objected.
	ReasonNDOP
	ReasonType1Dissent
	// Excluded: the row is fine but its patient is not in the output.
	ReasonUnknownPatient
	ReasonPatientExcluded
	numReasons
)

var reasonNames = [numReasons]string{
	"", "missing_nhs_number", "invalid_nhs_number", "malformed_row", "record_too_long",
	"field_too_long", "missing_field", "invalid_date", "invalid_code", "invalid_code_system",
	"invalid_sex", "invalid_postcode", "invalid_ethnicity", "invalid_practice", "invalid_value",
	"duplicate_patient", "ndop", "type1_dissent", "unknown_patient", "patient_excluded",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("Reason(%d)", r)
}

// An Outcome is what happened to a row.
type Outcome uint8

const (
	Kept Outcome = iota
	Quarantined
	OptedOut
	Excluded
)

func (o Outcome) String() string {
	return [...]string{"kept", "quarantined", "opted_out", "excluded"}[o]
}

// Outcome returns the outcome a row with this reason has.
func (r Reason) Outcome() Outcome {
	switch {
	case r == ReasonNone:
		return Kept
	case r == ReasonNDOP || r == ReasonType1Dissent:
		return OptedOut
	case r == ReasonUnknownPatient || r == ReasonPatientExcluded:
		return Excluded
	}
	return Quarantined
}

// A QuarantineEntry points at a quarantined row in the extract: the row
// itself stays there, so nothing identifiable is copied and nothing is lost.
type QuarantineEntry struct {
	Table  string `json:"table"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	Lines  int    `json:"lines,omitempty"` // rows spanning several lines
	Reason string `json:"reason"`
	Field  string `json:"field,omitempty"`
}

// TableReport counts the rows of one table. Read always equals
// Kept+Quarantined+OptedOut+Excluded.
type TableReport struct {
	File        string            `json:"file,omitempty"`
	Bytes       int64             `json:"bytes,omitempty"`
	XXH3        string            `json:"xxh3_128,omitempty"`
	Read        int64             `json:"read"`
	Kept        int64             `json:"kept"`
	Quarantined int64             `json:"quarantined"`
	OptedOut    int64             `json:"opted_out"`
	Excluded    int64             `json:"excluded"`
	Reasons     map[string]int64  `json:"reasons"`
	Samples     []QuarantineEntry `json:"quarantine_samples,omitempty"`
}

// Add counts n rows with reason r (ReasonNone for kept rows).
func (t *TableReport) Add(r Reason, n int64) {
	t.Read += n
	switch r.Outcome() {
	case Kept:
		t.Kept += n
		return
	case Quarantined:
		t.Quarantined += n
	case OptedOut:
		t.OptedOut += n
	case Excluded:
		t.Excluded += n
	}
	if t.Reasons == nil {
		t.Reasons = map[string]int64{}
	}
	t.Reasons[r.String()] += n
}

// PatientCounts counts distinct patients of the patients table.
type PatientCounts struct {
	Kept            int64 `json:"kept"`
	OptedOut        int64 `json:"opted_out"`
	OptedOutNDOP    int64 `json:"opted_out_ndop"`
	OptedOutType1   int64 `json:"opted_out_type1"`
	ExcludedInvalid int64 `json:"excluded_invalid_nhs_number"`
	Quarantined     int64 `json:"quarantined"`
}

// Report is the ingest report. It holds counts, line numbers and hashes,
// never an identifiable value.
type Report struct {
	Format   string                  `json:"format"`
	Tables   map[string]*TableReport `json:"tables"`
	Patients PatientCounts           `json:"patients"`
	OptOuts  OptOutStats             `json:"optouts"`
	Type1    Type1Stats              `json:"type1_dissent"`
}

// Type1Stats summarises the type 1 dissent entries found in the extract.
type Type1Stats struct {
	Dissenting int64 `json:"patients_dissenting"`
	Withdrawn  int64 `json:"patients_withdrawn"`
}

// Identity names the extract's content: the SHA-256 of each table file's
// name and XXH3-128 content hash, in table order.
func (r *Report) Identity() string {
	h := sha256.New()
	for _, t := range Tables {
		if tr := r.Tables[t.String()]; tr != nil {
			fmt.Fprintf(h, "%s %s\n", tr.File, tr.XXH3)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes a human summary of the report.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Ingest report (%s extract)\n\n", r.Format)
	fmt.Fprintf(&b, "%-13s %11s %11s %11s %11s %11s\n", "table", "read", "kept", "opted out", "quarantined", "excluded")
	for _, t := range Tables {
		tr := r.Tables[t.String()]
		if tr == nil {
			continue
		}
		fmt.Fprintf(&b, "%-13s %11d %11d %11d %11d %11d\n", t, tr.Read, tr.Kept, tr.OptedOut, tr.Quarantined, tr.Excluded)
	}
	fmt.Fprintf(&b, "\nPatients: %d kept; %d opted out (%d by the National Data Opt-out, %d by type 1 dissent); %d excluded for a missing or invalid NHS number; %d quarantined\n",
		r.Patients.Kept, r.Patients.OptedOut, r.Patients.OptedOutNDOP, r.Patients.OptedOutType1, r.Patients.ExcludedInvalid, r.Patients.Quarantined)
	fmt.Fprintf(&b, "Opt-out list: %d numbers (%d invalid lines, %d repeats), sha256 %s\n", r.OptOuts.Numbers, r.OptOuts.Invalid, r.OptOuts.Repeated, r.OptOuts.SHA256)
	fmt.Fprintf(&b, "Type 1 dissent in the extract: %d patients dissenting, %d withdrawn\n", r.Type1.Dissenting, r.Type1.Withdrawn)
	for _, t := range Tables {
		tr := r.Tables[t.String()]
		if tr == nil || len(tr.Reasons) == 0 {
			continue
		}
		keys := make([]string, 0, len(tr.Reasons))
		for k := range tr.Reasons {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, "\n%s:", t)
		for _, k := range keys {
			fmt.Fprintf(&b, " %s=%d", k, tr.Reasons[k])
		}
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}
