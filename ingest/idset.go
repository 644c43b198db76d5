package ingest

// An idSet is an open-addressing hash set of NHS numbers (of at most ten
// digits; 0000000000 passes Modulus 11, so a slot holds the number plus
// one and 0 marks it empty) with linear probing. It costs 8 bytes a slot at a load
// factor of at most 3/4, so 3.5 million numbers fit in 64 MiB, and a lookup
// is one or two cache misses. It is not safe for concurrent writes;
// concurrent reads of a set no longer written are safe.
type idSet struct {
	slots []uint64
	mask  uint64
	n     int

	// An ordered set (newOrderedIDSet) also keeps its ids in the order
	// they were added, and each slot holds its id's place in that order
	// above the id (a ten-digit number takes 34 bits), so that Index costs
	// the one cache miss that Has does.
	ordered bool
	order   []uint64
}

const (
	idBits = 34
	idMask = 1<<idBits - 1
	// maxOrdered is the most ids an ordered set holds.
	maxOrdered = 1<<(64-idBits) - 1
)

// newOrderedIDSet returns a set that knows the order of its ids.
func newOrderedIDSet(capacity int) *idSet {
	s := newIDSet(capacity)
	s.ordered = true
	return s
}

func newIDSet(capacity int) *idSet {
	size := 16
	for size*3/4 < capacity {
		size *= 2
	}
	return &idSet{slots: make([]uint64, size), mask: uint64(size - 1)}
}

// slot is where id's probe starts: bits 1 and up of its product with
// 2^64/φ. They depend only on the number's low bits (this is not the
// top-bits form of Fibonacci hashing), which suffices for NHS numbers,
// whose low digits vary most.
func (s *idSet) slot(id uint64) uint64 {
	return (id * 0x9E3779B97F4A7C15) >> 1 & s.mask
}

// find returns the slot holding key (an id plus one), or the empty slot
// where it would go.
func (s *idSet) find(key uint64) (uint64, bool) {
	for i := s.slot(key); ; i = (i + 1) & s.mask {
		switch s.slots[i] & idMask {
		case 0:
			return i, false
		case key:
			return i, true
		}
	}
}

// Add inserts id and reports whether it was absent. id must have at most
// ten digits.
func (s *idSet) Add(id uint64) bool {
	if id >= idMask {
		panic("ingest: idSet holds numbers of at most ten digits")
	}
	if (s.n+1)*4 > len(s.slots)*3 {
		s.grow()
	}
	i, found := s.find(id + 1)
	if found {
		return false
	}
	v := id + 1
	if s.ordered {
		if len(s.order) >= maxOrdered {
			panic("ingest: ordered idSet full")
		}
		v |= uint64(len(s.order)) << idBits
		s.order = append(s.order, id)
	}
	s.slots[i] = v
	s.n++
	return true
}

// Has reports whether id is in the set.
func (s *idSet) Has(id uint64) bool {
	_, found := s.find(id + 1)
	return found
}

// Index returns id's place in the order of an ordered set, or -1.
func (s *idSet) Index(id uint64) int {
	i, found := s.find(id + 1)
	if !found {
		return -1
	}
	return int(s.slots[i] >> idBits)
}

// Len returns the number of ids in the set.
func (s *idSet) Len() int { return s.n }

// grow doubles the slots. The old slots are read in order: an id in slot
// i goes to slot i or i+len(old) (the hash gains one bit), give or take
// its probe, so the writes are two sequential streams, not random ones.
func (s *idSet) grow() {
	old := s.slots
	s.slots = make([]uint64, len(old)*2)
	s.mask = uint64(len(s.slots) - 1)
	for _, v := range old {
		if v != 0 {
			i, _ := s.find(v & idMask)
			s.slots[i] = v // an ordered set's place goes with it
		}
	}
}
