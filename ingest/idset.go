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

// hashID spreads NHS numbers, whose low digits are far from uniform in
// binary, over the table (Fibonacci hashing, top bits).
func (s *idSet) slot(id uint64) uint64 {
	return (id * 0x9E3779B97F4A7C15) >> 1 & s.mask
}

// Add inserts id and reports whether it was absent. id must not be zero.
func (s *idSet) Add(id uint64) bool {
	if (s.n+1)*4 > len(s.slots)*3 {
		s.grow()
	}
	for i := s.slot(id); ; i = (i + 1) & s.mask {
		switch s.slots[i] {
		case 0:
			s.slots[i] = id
			if s.pos != nil {
				s.pos[i] = uint32(len(s.order))
				s.order = append(s.order, id)
			}
			s.n++
			return true
		case id:
			return false
		}
	}
}

// Has reports whether id is in the set.
func (s *idSet) Has(id uint64) bool {
	for i := s.slot(id); ; i = (i + 1) & s.mask {
		switch s.slots[i] {
		case 0:
			return false
		case id:
			return true
		}
	}
}

// Index returns id's place in the order of an ordered set, or -1.
func (s *idSet) Index(id uint64) int {
	for i := s.slot(id); ; i = (i + 1) & s.mask {
		switch s.slots[i] {
		case 0:
			return -1
		case id:
			return int(s.pos[i])
		}
	}
}

// Len returns the number of ids in the set.
func (s *idSet) Len() int { return s.n }

func (s *idSet) grow() {
	old := s.slots
	s.slots = make([]uint64, len(old)*2)
	s.mask = uint64(len(s.slots) - 1)
	if s.pos != nil {
		s.pos = make([]uint32, len(s.slots))
		for k, id := range s.order {
			i := s.slot(id)
			for s.slots[i] != 0 {
				i = (i + 1) & s.mask
			}
			s.slots[i], s.pos[i] = id, uint32(k)
		}
		return
	}
	s.n = 0
	for _, id := range old {
		if id != 0 {
			s.Add(id)
		}
	}
}
