package dataplane

import (
	"github.com/cespare/xxhash/v2"
)

// MaglevTableSize is the lookup table size Envoy uses by default (a prime, so every skip value
// walks the whole table).
const MaglevTableSize = 65537

// maglev is consistent hashing by lookup table (Eisenbud et al., NSDI 2016), built the way
// Envoy builds it: each endpoint's permutation comes from xxHash64 of its address with seeds 0
// (offset) and 1 (skip), and weights are honoured by letting an endpoint claim a slot in an
// iteration unless iteration * weight / max weight < count. The same addresses and weights
// give the same table as Envoy's, so a client keeps its endpoint, and when an endpoint leaves
// only about 1/N of clients move.
type maglev struct {
	eps   []*Endpoint
	table []int32 // index into eps
}

func newMaglev(eps []*Endpoint, size uint64) *maglev {
	m := &maglev{eps: eps}
	if len(eps) == 0 {
		return m
	}
	type entry struct {
		offset, skip, next uint64
		weight             float64
		count              uint64
	}
	var maxWeight uint32
	for _, e := range eps {
		maxWeight = max(maxWeight, e.Weight, 1)
	}
	entries := make([]entry, len(eps))
	for i, e := range eps {
		entries[i] = entry{
			offset: seededHash(e.Address, 0) % size,
			skip:   seededHash(e.Address, 1)%(size-1) + 1,
			weight: float64(max(e.Weight, 1)) / float64(maxWeight),
		}
	}
	m.table = make([]int32, size)
	for i := range m.table {
		m.table[i] = -1
	}
	filled := uint64(0)
	for iteration := uint64(0); filled < size; iteration++ {
		for i := range entries {
			en := &entries[i]
			if float64(iteration)*en.weight < float64(en.count) {
				continue
			}
			c := (en.offset + en.skip*en.next) % size
			for m.table[c] >= 0 {
				en.next++
				c = (en.offset + en.skip*en.next) % size
			}
			m.table[c] = int32(i)
			en.next++
			en.count++
			filled++
			if filled == size {
				break
			}
		}
	}
	return m
}

func seededHash(s string, seed uint64) uint64 {
	d := xxhash.NewWithSeed(seed)
	_, _ = d.WriteString(s)
	return d.Sum64()
}

// pick returns the table's endpoint for h; when it cannot be used (ejected, or already tried
// for this connection), the next slots are walked, which keeps the fallback itself consistent.
func (m *maglev) pick(h uint64, tried []*Endpoint, now int64) *Endpoint {
	size := uint64(len(m.table))
	if size == 0 {
		return nil
	}
	panicMode := allEjected(m.eps, now)
	start := h % size
	for i := range size {
		e := m.eps[m.table[(start+i)%size]]
		if usable(e, tried, now, panicMode) {
			return e
		}
		if len(tried) >= len(m.eps) {
			return nil
		}
	}
	return nil
}
