package ingest

import (
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// A Table is one of the tables of an extract.
type Table uint8

const (
	Patients Table = iota
	Encounters
	Conditions
	Medications
	Observations
	Procedures
	Immunizations
	Registrations
)

// Tables lists the tables in the order ingest reads them.
var Tables = []Table{Patients, Encounters, Conditions, Medications, Observations, Procedures, Immunizations, Registrations}

// csvRequired are the tables a CSV extract must hold (an empty table is a
// header alone); the others may be left out. In a FHIR export only
// Patient is required: servers write no file for a type they hold none of.
var csvRequired = [len(columns)]bool{Patients: true, Encounters: true, Conditions: true, Medications: true, Observations: true}

func (t Table) String() string {
	return [...]string{"patients", "encounters", "conditions", "medications", "observations", "procedures", "immunizations", "registrations"}[t]
}

// FHIRResources returns the FHIR R4 resource types that carry the table.
func (t Table) FHIRResources() []string { return fhirTypes[t] }

// FHIRReadOrder returns the resource types a run reads, in the order it
// first reads them: Medication (for medicationReference), Observation
// (the type 1 dissent scan), Patient (its references and links), then
// the tables in turn. Resource types it does not ingest are read before
// all of these, to be counted. A pull that streams an export through
// ingest downloads the files in this order.
func FHIRReadOrder() []string {
	order := []string{"Medication"}
	for _, t := range append([]Table{Observations, Patients}, Tables...) {
		for _, typ := range fhirTypes[t] {
			if !slices.Contains(order, typ) {
				order = append(order, typ)
			}
		}
	}
	return order
}

var fhirTypes = [...][]string{
	Patients:      {"Patient"},
	Encounters:    {"Encounter"},
	Conditions:    {"Condition"},
	Medications:   {"MedicationRequest", "MedicationStatement"},
	Observations:  {"Observation"},
	Procedures:    {"Procedure"},
	Immunizations: {"Immunization"},
	Registrations: {"EpisodeOfCare"},
}

// Columns returns the table's columns in the extract contract's order.
func (t Table) Columns() []string { return columns[t] }

var columns = [...][]string{
	Patients:      {"nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode", "ethnicity", "gp_practice", "date_of_death"},
	Encounters:    {"encounter_id", "nhs_number", "type", "start_date", "end_date", "organisation", "class", "status", "type_system", "type_code", "admission_source", "discharge_disposition"},
	Conditions:    {"nhs_number", "code_system", "code", "onset_date", "encounter_id", "clinical_status", "verification_status"},
	Medications:   {"nhs_number", "code_system", "code", "start_date", "end_date", "status"},
	Observations:  {"nhs_number", "code_system", "code", "value", "unit", "effective_date", "value_code", "status"},
	Procedures:    {"nhs_number", "code_system", "code", "performed_date", "end_date", "encounter_id", "status"},
	Immunizations: {"nhs_number", "code_system", "code", "occurrence_date", "encounter_id", "status"},
	Registrations: {"nhs_number", "gp_practice", "start_date", "end_date"},
}

// nhsColumn is the index of nhs_number in each table's columns.
var nhsColumn = [len(columns)]int{Encounters: 1}

// statusColumn is the index of each event table's status column, whose
// values say whether the record stands (see statusReason); -1 for none.
var statusColumn = [...]int{Patients: -1, Encounters: 7, Conditions: 6, Medications: 5, Observations: 7, Procedures: 6, Immunizations: 5, Registrations: -1}

func field(name, doc string, typ arrow.DataType, nullable bool) arrow.Field {
	return arrow.Field{Name: name, Type: typ, Nullable: nullable,
		Metadata: arrow.NewMetadata([]string{"description"}, []string{doc})}
}

// Vocabulary is the type of the vocabulary columns (see [Vocab]).
var Vocabulary = VocabType

// vocabOf returns the vocabulary of a table's column, or nil; code
// systems are the run's (st's).
func vocabOf(name string, st *state) *Vocab {
	switch name {
	case "type":
		return EncounterTypes
	case "class":
		return EncounterClasses
	case "code_system", "type_system":
		return st.codeSystems
	case "clinical_status":
		return ClinicalStatuses
	case "verification_status":
		return VerificationStatuses
	}
	return nil
}

var (
	nhsField = field("nhs_number", "NHS number (identifiable; ten digits as an integer, validated by Modulus 11)", arrow.PrimitiveTypes.Uint64, false)
	str      = arrow.BinaryTypes.String
	date     = arrow.FixedWidthTypes.Date32
)

// placeField, the last column of every event table's batches, is the
// row's patient's place among the kept patients: the patients table's rows
// in the order they were emitted, from 0. A consumer that keeps something
// per patient finds it there without a look-up. It is never published.
var placeField = field("patient_place", "the row's patient's place among the emitted patients rows, from 0", arrow.PrimitiveTypes.Uint32, false)

func codeFields(doc string) []arrow.Field {
	return []arrow.Field{
		field("code_system", "code system: snomed, icd10, dmd, read2, ctv3, opcs4, loinc, rxnorm, cvx, ...; a system the hub does not know is its URI", Vocabulary, false),
		field("code", doc, str, false),
	}
}

func fields(groups ...[]arrow.Field) []arrow.Field {
	var out []arrow.Field
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// Schemas are the Arrow schemas of the identifiable batches ingest emits.
var Schemas = [...]*arrow.Schema{
	Patients: arrow.NewSchema([]arrow.Field{
		nhsField,
		field("given_name", "given name (identifiable)", str, false),
		field("family_name", "family name (identifiable)", str, false),
		field("date_of_birth", "date of birth (identifiable)", date, false),
		field("sex", "administrative gender: male, female, other or unknown", str, false),
		field("postcode", "postcode of usual address, normalised (identifiable)", str, true),
		field("ethnicity", "NHS ethnic category code (A-S, Z not stated)", str, true),
		field("gp_practice", "ODS code of the registered GP practice", str, true),
		field("date_of_death", "date of death", date, true),
	}, nil),
	Encounters: arrow.NewSchema([]arrow.Field{
		field("encounter_id", "encounter identifier, unique within the extract", str, false),
		nhsField,
		field("type", "encounter type: gp, outpatient, inpatient or ae; null when the extract does not say", Vocabulary, true),
		field("start_date", "start date", date, false),
		field("end_date", "end date", date, true),
		field("organisation", "organisation providing the encounter", str, true),
		field("class", "encounter class (HL7 v3 ActCode in words): ambulatory, emergency, inpatient, home, virtual, ...", Vocabulary, true),
		field("type_system", "code system of type_code", Vocabulary, true),
		field("type_code", "the encounter's type as a code (e.g. SNOMED CT), where the extract gives one", str, true),
		field("admission_source", "where the patient came from, as coded (FHIR hospitalization.admitSource)", str, true),
		field("discharge_disposition", "where the patient went, as coded (FHIR hospitalization.dischargeDisposition)", str, true),
		placeField,
	}, nil),
	Conditions: arrow.NewSchema(fields([]arrow.Field{nhsField}, codeFields("condition code"), []arrow.Field{
		field("onset_date", "onset date, or the date recorded when the onset is not given", date, false),
		field("encounter_id", "encounter the condition was recorded in", str, true),
		field("clinical_status", "active, recurrence, relapse, inactive, remission or resolved", Vocabulary, true),
		field("verification_status", "unconfirmed, provisional, differential or confirmed", Vocabulary, true),
		placeField,
	}), nil),
	Medications: arrow.NewSchema(fields([]arrow.Field{nhsField}, codeFields("medication code (dm+d, RxNorm, ...)"), []arrow.Field{
		field("start_date", "start date (a prescription's date of issue)", date, false),
		field("end_date", "end date", date, true),
		placeField,
	}), nil),
	Observations: arrow.NewSchema(fields([]arrow.Field{nhsField}, codeFields("observation code (a component's own code for a component row)"), []arrow.Field{
		field("value", "numeric value", arrow.PrimitiveTypes.Float64, true),
		field("unit", "unit of the value (UCUM or as recorded)", str, true),
		field("effective_date", "effective date", date, false),
		field("value_code", "coded value (e.g. a SNOMED CT finding)", str, true),
		placeField,
	}), nil),
	Procedures: arrow.NewSchema(fields([]arrow.Field{nhsField}, codeFields("procedure code (SNOMED CT, OPCS-4, ...)"), []arrow.Field{
		field("performed_date", "date performed (start of the period when it spans days)", date, false),
		field("end_date", "end of the period performed", date, true),
		field("encounter_id", "encounter the procedure was part of", str, true),
		placeField,
	}), nil),
	Immunizations: arrow.NewSchema(fields([]arrow.Field{nhsField}, codeFields("vaccine code (SNOMED CT, dm+d, CVX, ...)"), []arrow.Field{
		field("occurrence_date", "date given", date, false),
		field("encounter_id", "encounter the vaccine was given in", str, true),
		placeField,
	}), nil),
	Registrations: arrow.NewSchema([]arrow.Field{
		nhsField,
		field("gp_practice", "ODS code of the GP practice registered with", str, false),
		field("start_date", "start of the registration", date, false),
		field("end_date", "end of the registration; null while it lasts", date, true),
		placeField,
	}, nil),
}

// MaxField is the longest field value accepted, in bytes; longer values
// are quarantined as field_too_long.
const MaxField = 4096

// A rowBuilder validates rows of one table and appends the good ones to
// its columns. Each worker owns one; none is shared.
type rowBuilder struct {
	t    Table
	st   *state
	cols []column
	pc   []byte // postcode scratch

	// The last event row's patient and its fate: events come grouped by
	// patient, so most rows skip the set look-ups.
	lastNHS    uint64
	lastReason Reason
	lastPlace  uint32   // the kept patient's place (see placeField)
	haveLast   bool     // whether lastNHS holds a number
	lastRaw    [16]byte // the last number's field, when it fits
	lastRawLen int      // -1 when it did not
	next       int      // the next kept patient's place, a guess
	nextRef    int      // the next Patient's place in the refs order, a guess

	// A patients row sets noted, with its number when valid (noteOK) and
	// its FHIR id's key when it has one (noteRef).
	noted   bool
	noteOK  bool
	noteNHS uint64
	noteRef refKey
	hasRef  bool

	// The last value of each vocabulary column and its index.
	lastVocab [12]struct {
		raw      []byte
		i        int16
		ok, have bool
	}

	// The last code system and its index.
	lastSys    []byte
	lastSysIdx int16
	haveSys    bool

	// nulled lists the optional fields of the last row that were invalid
	// and so left empty; the row itself was kept.
	nulled []fieldNote
	// other counts kept rows whose code system the hub does not know,
	// and otherSystems names those systems (indices in the run's).
	other        int64
	otherSystems map[int16]bool
}

// A fieldNote is an optional field nulled for a reason.
type fieldNote struct {
	col    int
	reason Reason
}

func newRowBuilder(t Table, st *state) *rowBuilder {
	return &rowBuilder{t: t, st: st, cols: newColumns(t, st)}
}

// rows returns the number of rows appended since the last flush.
func (b *rowBuilder) rows() int { return b.cols[0].n }

// null notes that optional field col was invalid and left empty.
func (b *rowBuilder) null(col int, r Reason) { b.nulled = append(b.nulled, fieldNote{col, r}) }

// add decides the fate of one row whose fields are in contract order. It
// returns the reason the row is not kept (ReasonNone when it was appended)
// and, for validation failures, the offending column. fate, when not
// ReasonNone, is the row's patient's fate already decided by resolving a
// FHIR reference (opted out, excluded or unknown); ref is the row's
// patients-table key when it has one (a FHIR Patient's id).
func (b *rowBuilder) add(f [][]byte, fate Reason, ref *refKey) (Reason, int) {
	b.nulled = b.nulled[:0]
	if b.t == Patients {
		b.noted, b.noteOK, b.hasRef = true, false, ref != nil
		if ref != nil {
			b.noteRef = *ref
		}
	}
	if fate != ReasonNone {
		return fate, -1
	}
	raw := f[nhsColumn[b.t]]
	var n uint64
	if b.haveLast && len(raw) == b.lastRawLen && string(raw) == string(b.lastRaw[:len(raw)]) {
		n = b.lastNHS // the same patient's next row: the number is known good
	} else {
		var err error
		n, err = ParseNHSNumber(raw)
		switch {
		case err == ErrNHSMissing:
			return ReasonMissingNHSNumber, nhsColumn[b.t]
		case err != nil:
			return ReasonInvalidNHSNumber, nhsColumn[b.t]
		}
		if b.t == Patients {
			return b.addPatient(n, f, ref)
		}
		if !b.haveLast || n != b.lastNHS {
			b.lastNHS, b.lastReason, b.haveLast = n, b.st.eventPatient(n, &b.next), true
			b.lastPlace = uint32(b.next - 1) // eventPatient leaves next just past a kept patient
		}
		b.lastRawLen = -1
		if len(raw) <= len(b.lastRaw) {
			b.lastRawLen = copy(b.lastRaw[:], raw)
		}
	}
	if r := b.lastReason; r != ReasonNone {
		return r, -1
	}
	for i, v := range f[:len(columns[b.t])] {
		if len(v) > MaxField {
			return ReasonFieldTooLong, i
		}
	}
	if c := statusColumn[b.t]; c >= 0 {
		if r := statusReason(trimSpace(f[c])); r != ReasonNone {
			return r, c
		}
	}
	var r Reason
	var col int
	switch b.t {
	case Encounters:
		r, col = b.addEncounter(n, f)
	case Conditions:
		r, col = b.addCondition(n, f)
	case Medications:
		r, col = b.addMedication(n, f)
	case Observations:
		r, col = b.addObservation(n, f)
	case Procedures:
		r, col = b.addProcedure(n, f)
	case Immunizations:
		r, col = b.addImmunization(n, f)
	default:
		r, col = b.addRegistration(n, f)
	}
	if r == ReasonNone {
		b.cols[len(b.cols)-1].appendU32(b.lastPlace)
	}
	return r, col
}

// statusReason says whether a record's status means it did not happen or
// is wrong (FHIR R4 status codes of every event resource, and a
// condition's verification status); ReasonNone when it stands.
func statusReason(s []byte) Reason {
	switch {
	case len(s) == 0:
		return ReasonNone
	case equalFold(s, "entered-in-error"):
		return ReasonEnteredInError
	case equalFold(s, "refuted"):
		return ReasonRefuted
	case equalFold(s, "cancelled"), equalFold(s, "revoked"):
		return ReasonCancelled
	case equalFold(s, "not-done"), equalFold(s, "not-taken"), equalFold(s, "draft"):
		return ReasonNotDone
	}
	return ReasonNone
}

// addPatient validates a patient row. Workers run it in parallel, so it
// writes nothing shared: the row's number is noted (b.noted) for the
// in-order step, settlePatients, which finds duplicates and fills the
// patient sets in file order.
func (b *rowBuilder) addPatient(n uint64, f [][]byte, ref *refKey) (Reason, int) {
	b.noteOK, b.noteNHS = true, n
	if r := b.st.optedOutReason(n); r != ReasonNone {
		return r, -1
	}
	if ref != nil {
		if _, replaced := b.st.alias[*ref]; replaced {
			return ReasonReplacedPatient, -1
		}
	}
	for i, v := range f[:len(columns[Patients])] {
		if len(v) > MaxField {
			return ReasonFieldTooLong, i
		}
	}
	given, family := trimSpace(f[1]), trimSpace(f[2])
	if len(given) == 0 {
		return ReasonMissingField, 1
	}
	if len(family) == 0 {
		return ReasonMissingField, 2
	}
	dob, ok := parseDate(f[3])
	if !ok {
		return ReasonInvalidDate, 3
	}
	sex := canonicalSex(trimSpace(f[4]))
	if sex == "" {
		return ReasonInvalidSex, 4
	}
	var pc []byte
	if v := trimSpace(f[5]); len(v) > 0 {
		if b.pc, ok = normalisePostcode(b.pc, v); ok {
			pc = b.pc
		} else {
			b.null(5, ReasonInvalidPostcode)
		}
	}
	eth := trimSpace(f[6])
	if len(eth) > 0 && !validEthnicity(eth) {
		eth = nil
		b.null(6, ReasonInvalidEthnicity)
	}
	gp := trimSpace(f[7])
	if len(gp) > 0 && !validODS(gp) {
		gp = nil
		b.null(7, ReasonInvalidPractice)
	}
	var dod arrow.Date32
	hasDod := len(trimSpace(f[8])) > 0
	if hasDod {
		if dod, ok = parseDate(f[8]); !ok || dod < dob {
			hasDod = false
			b.null(8, ReasonInvalidDate)
		}
	}
	b.cols[0].appendU64(n)
	b.cols[1].appendStr(given)
	b.cols[2].appendStr(family)
	b.cols[3].appendDate(dob)
	b.cols[4].appendString(sex)
	b.cols[5].optStr(pc)
	b.cols[6].optStr(eth)
	b.cols[7].optStr(gp)
	b.cols[8].optDate(dod, hasDod)
	return ReasonNone, -1
}

// optVocab appends an optional vocabulary value, nulling (and noting) one
// that is not in the vocabulary. The column's last value and its index
// are kept: rows mostly repeat them.
func (b *rowBuilder) optVocab(c *column, v *Vocab, raw []byte, col int) {
	raw = trimSpace(raw)
	if len(raw) == 0 {
		c.appendNull()
		return
	}
	last := &b.lastVocab[col]
	if !last.have || string(raw) != string(last.raw) {
		i, ok := v.index(raw)
		last.raw, last.i, last.ok, last.have = append(last.raw[:0], raw...), i, ok, true
	}
	if !last.ok {
		c.appendNull()
		b.null(col, ReasonInvalidCode)
		return
	}
	c.appendI16(last.i)
}

func (b *rowBuilder) addEncounter(n uint64, f [][]byte) (Reason, int) {
	id := trimSpace(f[0])
	if len(id) == 0 {
		return ReasonMissingField, 0
	}
	typ, hasType := int16(0), false
	if v := trimSpace(f[2]); len(v) > 0 {
		if typ, hasType = EncounterTypes.index(v); !hasType {
			return ReasonInvalidCode, 2
		}
	}
	start, end, hasEnd, r, col := b.dateRange(f[3], f[4], 3)
	if r != ReasonNone {
		return r, col
	}
	b.cols[0].appendStr(id)
	b.cols[1].appendU64(n)
	if hasType {
		b.cols[2].appendI16(typ)
	} else {
		b.cols[2].appendNull()
	}
	b.cols[3].appendDate(start)
	b.cols[4].optDate(end, hasEnd)
	b.cols[5].optStr(trimSpace(f[5]))
	b.optVocab(&b.cols[6], EncounterClasses, f[6], 6)
	// The type as a code: kept with its system, or both nulled.
	if code := trimSpace(f[9]); len(code) > 0 {
		b.optVocab(&b.cols[7], b.st.codeSystems, codeSystemName(trimSpace(f[8])), 8)
		if b.cols[7].isNull(b.cols[7].n - 1) {
			b.cols[8].appendNull()
		} else {
			b.cols[8].appendStr(code)
		}
	} else {
		b.cols[7].appendNull()
		b.cols[8].appendNull()
	}
	b.cols[9].optStr(trimSpace(f[10]))
	b.cols[10].optStr(trimSpace(f[11]))
	return ReasonNone, -1
}

// code checks a row's code system and code: any system is kept (the URI
// of one the hub does not know), and the codes of SNOMED CT, dm+d and
// ICD-10 are checked for form. want, when not -1, is the only system the
// table takes.
func (b *rowBuilder) code(sysRaw, codeRaw []byte, sysCol int) (int16, []byte, Reason, int) {
	code := trimSpace(codeRaw)
	if len(code) == 0 {
		return 0, nil, ReasonMissingField, sysCol + 1
	}
	raw := trimSpace(sysRaw)
	var i int16
	if b.haveSys && string(raw) == string(b.lastSys) {
		i = b.lastSysIdx // rows of a table mostly share their system
	} else {
		sys := codeSystemName(raw)
		if len(sys) == 0 {
			return 0, nil, ReasonInvalidCodeSystem, sysCol
		}
		var ok bool
		if i, ok = b.st.codeSystems.index(sys); !ok {
			return 0, nil, ReasonInvalidCodeSystem, sysCol
		}
		b.lastSys, b.lastSysIdx, b.haveSys = append(b.lastSys[:0], raw...), i, true
	}
	switch i {
	case codeSNOMED, codeDMD:
		if !validSCTID(code) {
			return 0, nil, ReasonInvalidCode, sysCol + 1
		}
	case codeICD10:
		if !validICD10(code) {
			return 0, nil, ReasonInvalidCode, sysCol + 1
		}
	}
	if int(i) >= len(KnownCodeSystems) {
		b.other++
		if b.otherSystems == nil {
			b.otherSystems = map[int16]bool{}
		}
		b.otherSystems[i] = true
	}
	return i, code, ReasonNone, -1
}

func (b *rowBuilder) addCondition(n uint64, f [][]byte) (Reason, int) {
	if r, col := b.addCoded(n, f, false); r != ReasonNone {
		return r, col
	}
	b.cols[4].optStr(trimSpace(f[4]))
	b.optVocab(&b.cols[5], ClinicalStatuses, f[5], 5)
	b.optVocab(&b.cols[6], VerificationStatuses, f[6], 6)
	return ReasonNone, -1
}

func (b *rowBuilder) addMedication(n uint64, f [][]byte) (Reason, int) {
	return b.addCoded(n, f, true)
}

// addCoded validates and appends the columns a coded event table begins
// with: nhs_number, code_system, code, a date and, with span, its end.
// It appends only once every one is valid, and what the caller appends
// after it cannot fail.
func (b *rowBuilder) addCoded(n uint64, f [][]byte, span bool) (Reason, int) {
	system, code, r, col := b.code(f[1], f[2], 1)
	if r != ReasonNone {
		return r, col
	}
	var start, end arrow.Date32
	var hasEnd, ok bool
	if span {
		if start, end, hasEnd, r, col = b.dateRange(f[3], f[4], 3); r != ReasonNone {
			return r, col
		}
	} else if start, ok = parseDate(f[3]); !ok {
		return ReasonInvalidDate, 3
	}
	b.cols[0].appendU64(n)
	b.cols[1].appendI16(system)
	b.cols[2].appendStr(code)
	b.cols[3].appendDate(start)
	if span {
		b.cols[4].optDate(end, hasEnd)
	}
	return ReasonNone, -1
}

// isOptOutCode reports whether a SNOMED CT code records type 1 dissent or
// its withdrawal: such a row says that the patient once objected, so it
// is never published, even for a patient who is kept.
func isOptOutCode(system int16, code []byte) bool {
	return system == codeSNOMED && len(code) == len(CodeType1Dissent) &&
		(string(code) == CodeType1Dissent || string(code) == CodeType1Withdrawn)
}

func (b *rowBuilder) addObservation(n uint64, f [][]byte) (Reason, int) {
	system, code, r, col := b.code(f[1], f[2], 1)
	if r != ReasonNone {
		return r, col
	}
	if isOptOutCode(system, code) {
		return ReasonOptOutCode, 2
	}
	eff, ok := parseDate(f[5])
	if !ok {
		return ReasonInvalidDate, 5
	}
	var v float64
	raw := trimSpace(f[3])
	hasValue := len(raw) > 0
	if hasValue {
		if v, hasValue = parseValue(raw); !hasValue {
			b.null(3, ReasonInvalidValue)
		}
	}
	b.cols[0].appendU64(n)
	b.cols[1].appendI16(system)
	b.cols[2].appendStr(code)
	if hasValue {
		b.cols[3].appendF64(v)
	} else {
		b.cols[3].appendNull()
	}
	b.cols[4].optStr(trimSpace(f[4]))
	b.cols[5].appendDate(eff)
	b.cols[6].optStr(trimSpace(f[6]))
	return ReasonNone, -1
}

func (b *rowBuilder) addProcedure(n uint64, f [][]byte) (Reason, int) {
	if r, col := b.addCoded(n, f, true); r != ReasonNone {
		return r, col
	}
	b.cols[5].optStr(trimSpace(f[5]))
	return ReasonNone, -1
}

func (b *rowBuilder) addImmunization(n uint64, f [][]byte) (Reason, int) {
	if r, col := b.addCoded(n, f, false); r != ReasonNone {
		return r, col
	}
	b.cols[4].optStr(trimSpace(f[4]))
	return ReasonNone, -1
}

func (b *rowBuilder) addRegistration(n uint64, f [][]byte) (Reason, int) {
	gp := trimSpace(f[1])
	if len(gp) == 0 {
		return ReasonMissingField, 1
	}
	if !validODS(gp) {
		return ReasonInvalidPractice, 1
	}
	start, end, hasEnd, r, col := b.dateRange(f[2], f[3], 2)
	if r != ReasonNone {
		return r, col
	}
	b.cols[0].appendU64(n)
	b.cols[1].appendStr(gp)
	b.cols[2].appendDate(start)
	b.cols[3].optDate(end, hasEnd)
	return ReasonNone, -1
}

// dateRange parses a required start and an optional end no earlier than
// it; an end that cannot be read, or comes before the start, is nulled.
func (b *rowBuilder) dateRange(s, e []byte, col int) (start, end arrow.Date32, hasEnd bool, r Reason, bad int) {
	start, ok := parseDate(s)
	if !ok {
		return 0, 0, false, ReasonInvalidDate, col
	}
	if e = trimSpace(e); string(e) == string(trimSpace(s)) {
		return start, start, true, ReasonNone, -1 // a one-day span: parsed already
	}
	if len(e) > 0 {
		if end, ok = parseDate(e); !ok || end < start {
			b.null(col+1, ReasonInvalidDate)
			return start, 0, false, ReasonNone, -1
		}
		hasEnd = true
	}
	return start, end, hasEnd, ReasonNone, -1
}

func canonicalSex(b []byte) string {
	for _, s := range [...]string{"male", "female", "other", "unknown"} {
		if equalFold(b, s) {
			return s
		}
	}
	return ""
}

// flush returns the rows appended since the last flush as a record batch,
// or nil when there are none.
func (b *rowBuilder) flush(mem memory.Allocator) arrow.RecordBatch {
	rows := b.rows()
	if rows == 0 {
		return nil
	}
	cols := make([]arrow.Array, len(b.cols))
	for i := range b.cols {
		cols[i] = b.cols[i].build(mem)
	}
	defer func() {
		for _, c := range cols {
			c.Release()
		}
	}()
	return array.NewRecordBatch(Schemas[b.t], cols, int64(rows))
}

func (t Table) column(i int) string {
	if i < 0 || i >= len(columns[t]) {
		return ""
	}
	return columns[t][i]
}
