package ingest

// An idSet is an open-addressing hash set of NHS numbers (non-zero uint64s)
// with linear probing. It costs 8 bytes a slot at a load factor of at most
// 3/4, so 3.5 million numbers fit in 64 MiB, and a lookup is one or two
// cache misses. It is not safe for concurrent writes; concurrent reads of a
// set no longer written are safe.
type idSet struct {
	slots []uint64
	mask  uint64
	n     int

	// An ordered set (newOrderedIDSet) also keeps its ids in the order
	// they were added, and each slot's place in that order.
	order []uint64
	pos   []uint32
}

// newOrderedIDSet returns a set that knows the order of its ids.
func newOrderedIDSet(capacity int) *idSet {
	s := newIDSet(capacity)
	s.pos = make([]uint32, len(s.slots))
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

// find returns the slot holding id, or the empty slot where it would go.
func (s *idSet) find(id uint64) (uint64, bool) {
	for i := s.slot(id); ; i = (i + 1) & s.mask {
		switch s.slots[i] {
		case 0:
			return i, false
		case id:
			return i, true
		}
	}
}

// Add inserts id and reports whether it was absent. id must not be zero.
func (s *idSet) Add(id uint64) bool {
	if (s.n+1)*4 > len(s.slots)*3 {
		s.grow()
	}
	i, found := s.find(id)
	if found {
		return false
	}
	s.slots[i] = id
	if s.pos != nil {
		s.pos[i] = uint32(len(s.order))
		s.order = append(s.order, id)
	}
	s.n++
	return true
}

// Has reports whether id is in the set.
func (s *idSet) Has(id uint64) bool {
	_, found := s.find(id)
	return found
}

// Index returns id's place in the order of an ordered set, or -1.
func (s *idSet) Index(id uint64) int {
	i, found := s.find(id)
	if !found {
		return -1
	}
	return int(s.pos[i])
}

// Len returns the number of ids in the set.
func (s *idSet) Len() int { return s.n }

func (s *idSet) grow() {
	old := s.slots
	s.slots = make([]uint64, len(old)*2)
	s.mask = uint64(len(s.slots) - 1)
	if s.pos != nil {
		s.pos = make([]uint32, len(s.slots))
		for k, id := range s.order { // keeps each id's place
			i, _ := s.find(id)
			s.slots[i], s.pos[i] = id, uint32(k)
		}
		return
	}
	for _, id := range old {
		if id != 0 {
			i, _ := s.find(id)
			s.slots[i] = id
		}
	}
}
