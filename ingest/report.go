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
	// Excluded: the record says it did not happen or is wrong.
	ReasonEnteredInError
	ReasonRefuted
	ReasonCancelled
	ReasonNotDone
	// Excluded: a type 1 dissent or withdrawal entry of a kept patient,
	// which would tell that the patient once objected.
	ReasonOptOutCode
	// Excluded: an EpisodeOfCare that is not a GP registration.
	ReasonNotRegistration
	// Excluded: a Patient that another replaces (Patient.link); its
	// events are its successor's.
	ReasonReplacedPatient
	numReasons
)

var reasonNames = [numReasons]string{
	"", "missing_nhs_number", "invalid_nhs_number", "malformed_row", "record_too_long",
	"field_too_long", "missing_field", "invalid_date", "invalid_code", "invalid_code_system",
	"invalid_sex", "invalid_postcode", "invalid_ethnicity", "invalid_practice", "invalid_value",
	"duplicate_patient", "ndop", "type1_dissent", "unknown_patient", "patient_excluded",
	"entered_in_error", "refuted", "cancelled", "not_done", "optout_code", "not_gp_registration", "replaced_patient",
}

// reasonNamed returns the reason with the given name, or ReasonNone.
func reasonNamed(name string) Reason {
	for r, n := range reasonNames {
		if n == name {
			return Reason(r)
		}
	}
	return ReasonNone
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
	case r == ReasonUnknownPatient || r == ReasonPatientExcluded || r >= ReasonEnteredInError:
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
	// Nulled says that only the field was bad: it was left empty and the
	// row was kept.
	Nulled bool `json:"nulled,omitempty"`
}

// A FileReport names one file of a table and its content hash.
type FileReport struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
	XXH3  string `json:"xxh3_128"`
}

// TableReport counts the rows of one table. Read always equals
// Kept+Quarantined+OptedOut+Excluded. A FHIR resource may give more than
// one row (an observation's components), so Resources counts them apart.
type TableReport struct {
	Files       []FileReport     `json:"files"`
	Resources   map[string]int64 `json:"resources,omitempty"`
	Read        int64            `json:"read"`
	Kept        int64            `json:"kept"`
	Quarantined int64            `json:"quarantined"`
	OptedOut    int64            `json:"opted_out"`
	Excluded    int64            `json:"excluded"`
	Reasons     map[string]int64 `json:"reasons"`
	// Nulled counts the invalid optional fields left empty in kept
	// rows, by reason.
	Nulled map[string]int64 `json:"nulled_fields,omitempty"`
	// OtherCodeSystems counts kept rows coded in a system the hub does
	// not know (kept under its URI; Report.CodeSystems lists them).
	OtherCodeSystems int64 `json:"other_code_systems,omitempty"`
	// NHSVerification counts FHIR Patients by the verification status of
	// their NHS number (UK Core: 01 present and verified, 02 present but
	// not traced, 03 trace required, 04 trace attempted, no or several
	// matches, ...). They are ingested whatever the status; the counts
	// tell how far the numbers, and so the opt-out, can be trusted.
	NHSVerification map[string]int64  `json:"nhs_number_verification,omitempty"`
	Samples         []QuarantineEntry `json:"quarantine_samples,omitempty"`
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
	// Absent lists the tables the extract has no file for (they are
	// published empty).
	Absent []string `json:"absent_tables,omitempty"`
	// NotIngested counts the resources of each FHIR type in the extract
	// that the hub does not read.
	NotIngested map[string]int64 `json:"not_ingested,omitempty"`
	// OtherFiles are the extract's files that belong to no table.
	OtherFiles []string `json:"other_files,omitempty"`
	// CodeSystems lists the code systems met that the hub does not know.
	CodeSystems []string `json:"other_code_system_uris,omitempty"`
	// Manifest says whether the export's manifest.json named the files.
	Manifest bool `json:"manifest,omitempty"`
	// ExportErrors counts the issues of the export's error files
	// (OperationOutcome) by issue code.
	ExportErrors map[string]int64 `json:"export_errors,omitempty"`
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
			for _, f := range tr.Files {
				fmt.Fprintf(h, "%s %s\n", f.Name, f.XXH3)
			}
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
	if len(r.Absent) > 0 {
		fmt.Fprintf(&b, "Not in the extract (published empty): %s\n", strings.Join(r.Absent, ", "))
	}
	if len(r.NotIngested) > 0 {
		fmt.Fprintf(&b, "Present but not ingested:%s\n", counts(r.NotIngested))
	}
	if len(r.ExportErrors) > 0 {
		fmt.Fprintf(&b, "The server reported errors in the export:%s\n", counts(r.ExportErrors))
	}
	if len(r.OtherFiles) > 0 {
		fmt.Fprintf(&b, "Other files, not read: %s\n", strings.Join(r.OtherFiles, ", "))
	}
	if len(r.CodeSystems) > 0 {
		fmt.Fprintf(&b, "Code systems kept under their URI: %s\n", strings.Join(r.CodeSystems, ", "))
	}
	for _, t := range Tables {
		tr := r.Tables[t.String()]
		if tr == nil || len(tr.Reasons)+len(tr.Nulled) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s:%s", t, counts(tr.Reasons))
		if len(tr.Nulled) > 0 {
			if len(tr.Reasons) > 0 {
				b.WriteString(";")
			}
			fmt.Fprintf(&b, " fields nulled:%s", counts(tr.Nulled))
		}
	}
	b.WriteString("\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// counts writes " k=v" for each key of m in order.
func counts(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, m[k])
	}
	return b.String()
}
