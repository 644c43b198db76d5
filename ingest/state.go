package ingest

import (
	"bytes"
	"math"
	"sync"

	"github.com/apache/arrow-go/v18/arrow"
)

// state is what ingest knows about patients across tables. The type 1
// entries are gathered first; the patient sets are written in file order
// as the patients table's chunks are settled (settlePatients), and only
// read afterwards.
type state struct {
	ndop  *OptOuts
	type1 map[uint64]type1Entry
	mu    sync.Mutex // guards type1 while it is gathered

	kept *idSet // patients whose row was kept, in file order
	seen *idSet // patients with a valid number not opted out (kept or quarantined)

	optedOut *idSet // distinct opted-out patients of the patients table
	counts   PatientCounts

	// A FHIR export's events name their patient by reference. type1Ref
	// holds the type 1 entries of patients named so (gathered with type1,
	// under mu); refs holds each Patient's id with its number and fate,
	// written in file order as the patients table is settled and only
	// read afterwards. Keys are hashes of the ids (see refKey).
	type1Ref map[refKey]type1Entry
	refs     map[refKey]uint32 // a Patient's place in refOrder
	refOrder []refEntry        // the Patients in file order
	// medications are the export's Medication resources by id.
	medications map[string]coding
	// codeSystems is the run's code system vocabulary.
	codeSystems *Vocab

	// Links between Patients, known before any table is read: alias
	// holds each Patient that another replaces, with its successor;
	// linked the numbers opted out because a Patient linked to them was.
	// Only read once the tables are read.
	alias  map[refKey]refKey
	linked map[uint64]Reason
}

// A patientLink joins two Patients: from is replaced by to when
// replacedBy is set, else from replaces to.
type patientLink struct {
	from, to   refKey
	replacedBy bool
}

// linkPatients takes the links between Patients, with the numbers of the
// Patients they join: the replaced one of each pair is noted with its
// successor, and an opt-out of either number (NDOP or type 1) becomes an
// opt-out of the other, along chains of links too.
func (s *state) linkPatients(links []patientLink, nums map[refKey]uint64) {
	s.alias, s.linked = map[refKey]refKey{}, map[uint64]Reason{}
	for _, l := range links {
		old, succ := l.from, l.to
		if !l.replacedBy {
			old, succ = l.to, l.from
		}
		if old == succ {
			continue
		}
		s.alias[old] = succ
	}
	for changed, rounds := true, 0; changed && rounds < 64; rounds++ {
		changed = false
		for _, l := range links {
			a, okA := nums[l.from]
			b, okB := nums[l.to]
			if !okA || !okB || a == b {
				continue
			}
			ra, rb := s.optedOutReason(a), s.optedOutReason(b)
			switch {
			case ra != ReasonNone && rb == ReasonNone:
				s.linked[b], changed = ra, true
			case rb != ReasonNone && ra == ReasonNone:
				s.linked[a], changed = rb, true
			}
		}
	}
}

// followLinks points each replaced Patient's id at its successor's number
// and fate, once the patients table is read, so that events naming the
// replaced Patient are its successor's.
func (s *state) followLinks() {
	for old := range s.alias {
		succ := s.alias[old]
		for hops := 0; hops < 64; hops++ {
			next, ok := s.alias[succ]
			if !ok || next == old {
				break
			}
			succ = next
		}
		if to, ok := s.refs[succ]; ok {
			if from, ok := s.refs[old]; ok {
				s.refOrder[from].v = s.refOrder[to].v
			}
		}
	}
}

// refExcluded, a refs value, marks a Patient without a valid NHS number
// (NHS numbers need 34 bits).
const refExcluded uint64 = 1 << 63

// A type1Entry is a patient's latest type 1 dissent entry.
type type1Entry struct {
	date    arrow.Date32
	dissent bool
	merged  bool // an entry by reference, since merged into the entries by number
}

// unknownDate orders a dissent entry whose date cannot be read after every
// other entry, so that it stands: when in doubt, the patient objected.
const unknownDate = arrow.Date32(math.MaxInt32)

func newState(ndop *OptOuts) *state {
	return &state{ndop: ndop, type1: map[uint64]type1Entry{},
		kept: newOrderedIDSet(1 << 16), seen: newIDSet(1 << 16), optedOut: newIDSet(1 << 10),
		type1Ref: map[refKey]type1Entry{}, refs: map[refKey]uint32{}, medications: map[string]coding{}, codeSystems: newCodeSystems()}
}

// noteType1Ref records a type 1 entry of the Patient with key k, as
// noteType1 does for a number.
func (s *state) noteType1Ref(k refKey, dissent bool, d arrow.Date32, dateOK bool) {
	if e, ok := type1Of(dissent, d, dateOK); ok {
		s.mu.Lock()
		defer s.mu.Unlock()
		if old, had := s.type1Ref[k]; e.supersedes(old, had) {
			s.type1Ref[k] = e
		}
	}
}

// type1Of makes the entry for a dissent or a withdrawal on a date, and
// false when it is to be ignored: a withdrawal whose date is unreadable
// cannot be shown to come after the dissent; a dissent whose date is
// unreadable counts as the latest (when in doubt, the patient objected).
func type1Of(dissent bool, d arrow.Date32, dateOK bool) (type1Entry, bool) {
	if !dateOK {
		if !dissent {
			return type1Entry{}, false
		}
		d = unknownDate
	}
	return type1Entry{date: d, dissent: dissent}, true
}

// supersedes reports whether e replaces old (absent unless had): the
// latest entry wins, and a dissent wins a tie.
func (e type1Entry) supersedes(old type1Entry, had bool) bool {
	return !had || e.date > old.date || (e.date == old.date && e.dissent)
}

// mayName reports whether a Patient line may be one that type 1 entries
// named by reference: whether any member "id" in it, at any depth, has a
// value whose key is among them, or a value with an escape (which only
// decoding can read). It looks at the line's bytes, not its structure, so
// it never misses the resource's own id; decoding then confirms.
func (s *state) mayName(line []byte) bool {
	for rest := line; ; {
		i := bytes.Index(rest, []byte(`"id"`))
		if i < 0 {
			return false
		}
		rest = rest[i+4:]
		j := skipWS(rest, 0)
		if j >= len(rest) || rest[j] != ':' {
			continue
		}
		j = skipWS(rest, j+1)
		if j >= len(rest) || rest[j] != '"' {
			continue
		}
		end := bytes.IndexByte(rest[j+1:], '"')
		if end < 0 {
			return true // let the decoder judge
		}
		id := rest[j+1 : j+1+end]
		if bytes.IndexByte(id, '\\') >= 0 {
			return true
		}
		if _, ok := s.type1Ref[keyOf(id)]; ok {
			return true
		}
	}
}

// mergeType1 adds a type 1 entry gathered by reference to the entries by
// number, once the Patient's number is known.
func (s *state) mergeType1(n uint64, e type1Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, had := s.type1[n]; e.supersedes(old, had) {
		s.type1[n] = e
	}
}

// A refEntry is a Patient's id key with its number, or refExcluded.
type refEntry struct {
	key refKey
	v   uint64
}

// noteRef keeps a Patient's id with its number and fate; the first
// Patient with an id keeps it.
func (s *state) noteRef(p patientNote) {
	if _, ok := s.refs[p.ref]; ok {
		return
	}
	v := p.nhs
	if !p.ok {
		v = refExcluded
	}
	s.refs[p.ref] = uint32(len(s.refOrder))
	s.refOrder = append(s.refOrder, refEntry{p.ref, v})
}

// resolve returns the number of the Patient with key k, or the fate of
// an event row that names it: excluded, opted out or unknown. next is the
// caller's guess of the Patient's place, updated when it is found: events
// follow the Patients' order, so the next few Patients are looked at
// before the map (a sequential read, where the map is a cache miss: 1.4
// of 26 CPU-s on the benchmark export).
func (s *state) resolve(k refKey, next *int) (uint64, Reason) {
	const ahead = 8
	var v uint64
	found := false
	for i := *next; i < min(*next+ahead, len(s.refOrder)); i++ {
		if s.refOrder[i].key == k {
			v, found, *next = s.refOrder[i].v, true, i+1
			break
		}
	}
	if !found {
		i, ok := s.refs[k]
		if !ok {
			return 0, ReasonUnknownPatient
		}
		v, *next = s.refOrder[i].v, int(i)+1
	}
	if v == refExcluded {
		return 0, ReasonPatientExcluded
	}
	return v, ReasonNone
}

// noteType1 records one type 1 entry; the latest wins, and dissent wins a
// tie (see type1Of for unreadable dates).
func (s *state) noteType1(n uint64, dissent bool, d arrow.Date32, dateOK bool) {
	if e, ok := type1Of(dissent, d, dateOK); ok {
		s.mergeType1(n, e)
	}
}

func (s *state) type1Stats() Type1Stats {
	var st Type1Stats
	count := func(e type1Entry) {
		if e.dissent {
			st.Dissenting++
		} else {
			st.Withdrawn++
		}
	}
	for _, e := range s.type1 {
		count(e)
	}
	for _, e := range s.type1Ref {
		if !e.merged {
			count(e) // a Patient without a valid number
		}
	}
	return st
}

// optedOut returns the opt-out reason that applies to patient n, if any.
func (s *state) optedOutReason(n uint64) Reason {
	if s.ndop.Has(n) {
		return ReasonNDOP
	}
	if e, ok := s.type1[n]; ok && e.dissent {
		return ReasonType1Dissent
	}
	if r, ok := s.linked[n]; ok {
		return r
	}
	return ReasonNone
}

func (s *state) countOptedOutPatient(n uint64) {
	if !s.optedOut.Add(n) {
		return
	}
	s.counts.OptedOut++
	if s.ndop.Has(n) {
		s.counts.OptedOutNDOP++
	}
	if e, ok := s.type1[n]; ok && e.dissent {
		s.counts.OptedOutType1++
	}
}

// eventPatient decides an event row by its patient: opted out, kept
// (ReasonNone), excluded, or unknown. next is the caller's guess of the
// patient's place among the kept ones, updated when it is found.
//
// Kept is asked first: no kept patient opted out (the opt-outs, type 1
// dissent included, are known before the patients table is read), and
// most event rows are kept, so they skip the opt-out look-ups. Extracts
// list events patient by patient in the patients table's order, so the
// next few kept patients are looked at before the hash set: a sequential
// read instead of a cache miss (0.8 of 1.3 CPU-s of look-ups on the
// benchmark extract). Any other order is still right, just slower.
func (s *state) eventPatient(n uint64, next *int) Reason {
	const ahead = 8 // patients with no row in the table are skipped
	order := s.kept.order
	for i := *next; i < min(*next+ahead, len(order)); i++ {
		if order[i] == n {
			*next = i + 1
			return ReasonNone
		}
	}
	if i := s.kept.Index(n); i >= 0 {
		*next = i + 1
		return ReasonNone
	}
	if r := s.optedOutReason(n); r != ReasonNone {
		return r
	}
	if s.seen.Has(n) {
		return ReasonPatientExcluded
	}
	return ReasonUnknownPatient
}
