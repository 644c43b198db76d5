package ingest

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// A Vocab is the dictionary of a column whose values come from a short
// list (encounter types and classes, code systems, condition statuses).
// Rows store an index into it, and every batch's dictionary array is a
// snapshot of one shared list, so Parquet writes the indices as they are
// rather than hashing every value again (measured: 12 against 71 ns a
// value).
//
// A closed Vocab holds only its known values. An open one (code systems)
// also takes values met in the extract, appended under a lock: a later
// snapshot extends every earlier one with the same indices, so a writer
// may give a row group's batches the longest of their dictionaries.
type Vocab struct {
	known   []string          // fixed at creation, read without a lock
	aliases map[string]string // other names of known values (codes)
	open    bool

	mu    sync.Mutex
	extra map[string]int16 // values appended, guarded by mu
	all   []string         // known then extra, guarded by mu
	dict  atomic.Pointer[array.String]
}

// maxVocab bounds an open vocabulary; values past it are refused.
const maxVocab = 1 << 14

func newVocab(open bool, values ...string) *Vocab {
	v := &Vocab{known: values, open: open, extra: map[string]int16{}, all: append([]string(nil), values...)}
	v.dict.Store(stringArray(v.all))
	return v
}

func stringArray(values []string) *array.String {
	b := array.NewStringBuilder(memory.DefaultAllocator)
	defer b.Release()
	b.AppendValues(values, nil)
	return b.NewStringArray()
}

// Values returns the vocabulary's values so far, in index order.
func (v *Vocab) Values() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.all...)
}

// Dictionary returns the current dictionary array; it holds every index
// handed out before the call.
func (v *Vocab) Dictionary() *array.String { return v.dict.Load() }

// lookup returns the index of a known value, or of the value an alias
// names, ignoring ASCII case.
func (v *Vocab) lookup(b []byte) (int16, bool) {
	for i, s := range v.known {
		if equalFold(b, s) { // every known value is lower-case
			return int16(i), true
		}
	}
	if name, ok := v.aliases[string(b)]; ok {
		return v.lookup([]byte(name))
	}
	return 0, false
}

// index returns b's index, appending it to an open vocabulary when it is
// new; false when the vocabulary is closed (or full) and b is not in it.
func (v *Vocab) index(b []byte) (int16, bool) {
	if i, ok := v.lookup(b); ok {
		return i, true
	}
	if !v.open || len(b) == 0 {
		return 0, false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if i, ok := v.extra[string(b)]; ok {
		return i, true
	}
	if len(v.all) >= maxVocab {
		return 0, false
	}
	i := int16(len(v.all))
	s := string(b)
	v.extra[s] = i
	v.all = append(v.all, s)
	v.dict.Store(stringArray(v.all))
	return i, true
}

// VocabType is the Arrow type of every vocabulary column.
var VocabType = &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int16, ValueType: arrow.BinaryTypes.String}

// The vocabularies.
var (
	// EncounterTypes are the contract's encounter types.
	EncounterTypes = newVocab(false, "gp", "outpatient", "inpatient", "ae")
	// EncounterClasses are the HL7 v3 ActEncounterCode classes, named
	// in words (classCodes maps the codes).
	EncounterClasses = func() *Vocab {
		v := newVocab(false, "ambulatory", "emergency", "field", "home", "inpatient", "inpatient-acute",
			"inpatient-nonacute", "observation", "pre-admission", "short-stay", "virtual")
		v.aliases = classCodes
		return v
	}()
	// KnownCodeSystems are the short names of the code systems the hub
	// knows (codeSystemURIs maps their URIs), the start of every run's
	// code system vocabulary (see newCodeSystems).
	KnownCodeSystems = []string{"snomed", "icd10", "dmd", "read2", "ctv3", "opcs4", "loinc", "rxnorm", "cvx", "atc", "icd9", "emis", "nhs-dictionary"}
	// ClinicalStatuses and VerificationStatuses are a condition's.
	ClinicalStatuses     = newVocab(false, "active", "recurrence", "relapse", "inactive", "remission", "resolved")
	VerificationStatuses = newVocab(false, "unconfirmed", "provisional", "differential", "confirmed")
)

// newCodeSystems returns a run's code system vocabulary: the known ones,
// then each system the extract uses that the hub does not know, kept as
// its URI in the order it is met. It is a run's own, so that a dataset's
// Parquet dictionaries hold only its extract's systems, the same however
// many runs a process makes before.
func newCodeSystems() *Vocab { return newVocab(true, KnownCodeSystems...) }

// Indices of the code systems whose codes are checked for form.
const (
	codeSNOMED int16 = iota
	codeICD10
	codeDMD
)

// codeSystemURIs maps FHIR code system URIs to the short names of
// CodeSystems.
var codeSystemURIs = map[string]string{
	"http://snomed.info/sct":                                   "snomed",
	"https://snomed.info/sct":                                  "snomed",
	"http://hl7.org/fhir/sid/icd-10":                           "icd10",
	"http://hl7.org/fhir/sid/icd-10-uk":                        "icd10",
	"https://fhir.hl7.org.uk/Id/icd10":                         "icd10",
	"https://dmd.nhs.uk":                                       "dmd",
	"https://fhir.nhs.uk/Id/dmd-code":                          "dmd",
	"http://read.info/readv2":                                  "read2",
	"http://read.info/ctv3":                                    "ctv3",
	"https://fhir.hl7.org.uk/Id/opcs-4":                        "opcs4",
	"http://fhir.hl7.org.uk/Id/opcs-4":                         "opcs4",
	"https://fhir.nhs.uk/Id/opcs-4":                            "opcs4",
	"http://loinc.org":                                         "loinc",
	"http://www.nlm.nih.gov/research/umls/rxnorm":              "rxnorm",
	"http://hl7.org/fhir/sid/cvx":                              "cvx",
	"http://www.whocc.no/atc":                                  "atc",
	"http://hl7.org/fhir/sid/icd-9-cm":                         "icd9",
	"https://fhir.hl7.org.uk/Id/emis-drug-codes":               "emis",
	"https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary": "nhs-dictionary",
}

// codeSystemName returns the short name of a system given as a short
// name or a URI, or the URI itself when the hub does not know it.
func codeSystemName(b []byte) []byte {
	if len(b) == 0 || !strings.Contains(string(b), ":") {
		return b
	}
	if s, ok := codeSystemURIs[string(b)]; ok {
		return []byte(s)
	}
	return b
}

// classCodes maps HL7 v3 ActCode encounter classes to EncounterClasses.
var classCodes = map[string]string{
	"AMB": "ambulatory", "EMER": "emergency", "FLD": "field", "HH": "home", "IMP": "inpatient",
	"ACUTE": "inpatient-acute", "NONAC": "inpatient-nonacute", "OBSENC": "observation",
	"PRENC": "pre-admission", "SS": "short-stay", "VR": "virtual",
}
