package ingest

import (
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// A Table is one of the five tables of an extract.
type Table uint8

const (
	Patients Table = iota
	Encounters
	Conditions
	Medications
	Observations
)

// Tables lists the tables in the order ingest reads them.
var Tables = []Table{Patients, Encounters, Conditions, Medications, Observations}

func (t Table) String() string {
	return [...]string{"patients", "encounters", "conditions", "medications", "observations"}[t]
}

// FHIRResource returns the FHIR R4 resource type that carries the table.
func (t Table) FHIRResource() string {
	return [...]string{"Patient", "Encounter", "Condition", "MedicationStatement", "Observation"}[t]
}

// Columns returns the table's columns in the extract contract's order.
func (t Table) Columns() []string { return columns[t] }

var columns = [...][]string{
	Patients:     {"nhs_number", "given_name", "family_name", "date_of_birth", "sex", "postcode", "ethnicity", "gp_practice", "date_of_death"},
	Encounters:   {"encounter_id", "nhs_number", "type", "start_date", "end_date", "organisation"},
	Conditions:   {"nhs_number", "code_system", "code", "onset_date", "encounter_id"},
	Medications:  {"nhs_number", "code_system", "code", "start_date", "end_date"},
	Observations: {"nhs_number", "code_system", "code", "value", "unit", "effective_date"},
}

// nhsColumn is the index of nhs_number in each table's columns.
var nhsColumn = [...]int{Patients: 0, Encounters: 1, Conditions: 0, Medications: 0, Observations: 0}

func field(name, doc string, typ arrow.DataType, nullable bool) arrow.Field {
	return arrow.Field{Name: name, Type: typ, Nullable: nullable,
		Metadata: arrow.NewMetadata([]string{"description"}, []string{doc})}
}

// Closed vocabularies (encounter types and code systems) are emitted as
// dictionary arrays whose dictionary is one shared array: a row stores an
// index, and Parquet writes the indices as they are rather than hashing
// every value again (measured: 12 against 71 ns a value).
var (
	// EncounterTypes is the dictionary of the encounter type column.
	EncounterTypes = vocabulary("gp", "outpatient", "inpatient", "ae")
	// CodeSystems is the dictionary of the code_system columns.
	CodeSystems = vocabulary("snomed", "icd10", "dmd")
	// Vocabulary is the type of their columns.
	Vocabulary = &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}
)

const (
	codeSNOMED int8 = iota
	codeICD10
	codeDMD
)

func vocabulary(values ...string) *array.String {
	b := array.NewStringBuilder(memory.DefaultAllocator)
	defer b.Release()
	b.AppendValues(values, nil)
	return b.NewStringArray()
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
		field("type", "encounter type: gp, outpatient, inpatient or ae", Vocabulary, false),
		field("start_date", "start date", date, false),
		field("end_date", "end date", date, true),
		field("organisation", "organisation providing the encounter", str, true),
		placeField,
	}, nil),
	Conditions: arrow.NewSchema([]arrow.Field{
		nhsField,
		field("code_system", "snomed or icd10", Vocabulary, false),
		field("code", "SNOMED CT concept id or ICD-10 code", str, false),
		field("onset_date", "onset or recorded date", date, false),
		field("encounter_id", "encounter the condition was recorded in", str, true),
		placeField,
	}, nil),
	Medications: arrow.NewSchema([]arrow.Field{
		nhsField,
		field("code_system", "dmd", Vocabulary, false),
		field("code", "dm+d concept id (VMP/AMP)", str, false),
		field("start_date", "start date", date, false),
		field("end_date", "end date", date, true),
		placeField,
	}, nil),
	Observations: arrow.NewSchema([]arrow.Field{
		nhsField,
		field("code_system", "snomed", Vocabulary, false),
		field("code", "SNOMED CT concept id", str, false),
		field("value", "numeric value", arrow.PrimitiveTypes.Float64, true),
		field("unit", "unit of the value (UCUM or as recorded)", str, true),
		field("effective_date", "effective date", date, false),
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
	mem  memory.Allocator
	cols []column
	pc   []byte // postcode scratch

	// The last event row's patient and its fate: events come grouped by
	// patient, so most rows skip the set look-ups.
	lastNHS    uint64
	lastReason Reason
	lastPlace  uint32   // the kept patient's place (see placeField)
	haveLast   bool     // 0000000000 passes Modulus 11, so 0 is a number
	lastRaw    [16]byte // the last number's field, when it fits
	lastRawLen int      // -1 when it did not
	next       int      // the next kept patient's place, a guess

	// A patient row with a valid number sets noted and noteNHS.
	noted   bool
	noteNHS uint64
}

func newRowBuilder(t Table, st *state, mem memory.Allocator) *rowBuilder {
	return &rowBuilder{t: t, st: st, mem: mem, cols: newColumns(t)}
}

// rows returns the number of rows appended since the last flush.
func (b *rowBuilder) rows() int { return b.cols[0].n }

// vocabularyOf returns the dictionary of t's vocabulary column.
func vocabularyOf(t Table) *array.String {
	if t == Encounters {
		return EncounterTypes
	}
	return CodeSystems
}

// add decides the fate of one row whose fields are in contract order. It
// returns the reason the row is not kept (ReasonNone when it was appended)
// and, for validation failures, the offending column.
func (b *rowBuilder) add(f [][]byte) (Reason, int) {
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
			return b.addPatient(n, f)
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
	for i, v := range f {
		if len(v) > MaxField {
			return ReasonFieldTooLong, i
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
	default:
		r, col = b.addObservation(n, f)
	}
	if r == ReasonNone {
		b.cols[len(b.cols)-1].appendU32(b.lastPlace)
	}
	return r, col
}

// addPatient validates a patient row. Workers run it in parallel, so it
// writes nothing shared: the row's number is noted (b.noted) for the
// in-order step, settlePatients, which finds duplicates and fills the
// patient sets in file order.
func (b *rowBuilder) addPatient(n uint64, f [][]byte) (Reason, int) {
	b.noted, b.noteNHS = true, n
	if r := b.st.optedOutReason(n); r != ReasonNone {
		return r, -1
	}
	for i, v := range f {
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
		if b.pc, ok = normalisePostcode(b.pc, v); !ok {
			return ReasonInvalidPostcode, 5
		}
		pc = b.pc
	}
	eth := trimSpace(f[6])
	if len(eth) > 0 && !validEthnicity(eth) {
		return ReasonInvalidEthnicity, 6
	}
	gp := trimSpace(f[7])
	if len(gp) > 0 && !validODS(gp) {
		return ReasonInvalidPractice, 7
	}
	var dod arrow.Date32
	hasDod := len(trimSpace(f[8])) > 0
	if hasDod {
		if dod, ok = parseDate(f[8]); !ok || dod < dob {
			return ReasonInvalidDate, 8
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

func (b *rowBuilder) addEncounter(n uint64, f [][]byte) (Reason, int) {
	id := trimSpace(f[0])
	if len(id) == 0 {
		return ReasonMissingField, 0
	}
	typ := -1
	for k := range EncounterTypes.Len() {
		if equalFold(trimSpace(f[2]), EncounterTypes.Value(k)) {
			typ = k
		}
	}
	if typ < 0 {
		return ReasonInvalidCode, 2
	}
	start, end, hasEnd, r, col := dateRange(f[3], f[4], 3)
	if r != ReasonNone {
		return r, col
	}
	b.cols[0].appendStr(id)
	b.cols[1].appendU64(n)
	b.cols[2].appendI8(int8(typ))
	b.cols[3].appendDate(start)
	b.cols[4].optDate(end, hasEnd)
	b.cols[5].optStr(trimSpace(f[5]))
	return ReasonNone, -1
}

func (b *rowBuilder) addCondition(n uint64, f [][]byte) (Reason, int) {
	sys, code := trimSpace(f[1]), trimSpace(f[2])
	var system int8
	switch {
	case equalFold(sys, "snomed"):
		system = codeSNOMED
		if !validSCTID(code) {
			return ReasonInvalidCode, 2
		}
	case equalFold(sys, "icd10"):
		system = codeICD10
		if !validICD10(code) {
			return ReasonInvalidCode, 2
		}
	default:
		return ReasonInvalidCodeSystem, 1
	}
	onset, ok := parseDate(f[3])
	if !ok {
		return ReasonInvalidDate, 3
	}
	b.cols[0].appendU64(n)
	b.cols[1].appendI8(system)
	b.cols[2].appendStr(code)
	b.cols[3].appendDate(onset)
	b.cols[4].optStr(trimSpace(f[4]))
	return ReasonNone, -1
}

func (b *rowBuilder) addMedication(n uint64, f [][]byte) (Reason, int) {
	if !equalFold(trimSpace(f[1]), "dmd") {
		return ReasonInvalidCodeSystem, 1
	}
	code := trimSpace(f[2])
	if !validSCTID(code) {
		return ReasonInvalidCode, 2
	}
	start, end, hasEnd, r, col := dateRange(f[3], f[4], 3)
	if r != ReasonNone {
		return r, col
	}
	b.cols[0].appendU64(n)
	b.cols[1].appendI8(codeDMD)
	b.cols[2].appendStr(code)
	b.cols[3].appendDate(start)
	b.cols[4].optDate(end, hasEnd)
	return ReasonNone, -1
}

func (b *rowBuilder) addObservation(n uint64, f [][]byte) (Reason, int) {
	if !equalFold(trimSpace(f[1]), "snomed") {
		return ReasonInvalidCodeSystem, 1
	}
	code := trimSpace(f[2])
	if !validSCTID(code) {
		return ReasonInvalidCode, 2
	}
	var v float64
	raw := trimSpace(f[3])
	hasValue := len(raw) > 0
	if hasValue {
		var ok bool
		if v, ok = parseValue(raw); !ok {
			return ReasonInvalidValue, 3
		}
	}
	eff, ok := parseDate(f[5])
	if !ok {
		return ReasonInvalidDate, 5
	}
	b.cols[0].appendU64(n)
	b.cols[1].appendI8(codeSNOMED)
	b.cols[2].appendStr(code)
	if hasValue {
		b.cols[3].appendF64(v)
	} else {
		b.cols[3].appendNull()
	}
	b.cols[4].optStr(trimSpace(f[4]))
	b.cols[5].appendDate(eff)
	return ReasonNone, -1
}

// dateRange parses a required start and an optional end no earlier than it.
func dateRange(s, e []byte, col int) (start, end arrow.Date32, hasEnd bool, r Reason, bad int) {
	start, ok := parseDate(s)
	if !ok {
		return 0, 0, false, ReasonInvalidDate, col
	}
	if e = trimSpace(e); string(e) == string(trimSpace(s)) {
		return start, start, true, ReasonNone, -1 // a one-day span: parsed already
	}
	if len(e) > 0 {
		if end, ok = parseDate(e); !ok || end < start {
			return 0, 0, false, ReasonInvalidDate, col + 1
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
func (b *rowBuilder) flush() arrow.RecordBatch {
	rows := b.rows()
	if rows == 0 {
		return nil
	}
	cols := make([]arrow.Array, len(b.cols))
	for i := range b.cols {
		cols[i] = b.cols[i].build(b.mem)
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
