package dataplane

import (
	"math"
	"math/bits"
	"sort"
	"sync/atomic"
)

// DefaultOverprovisioningFactor is Envoy's default (in percent): a priority level whose
// endpoints are at least 1/1.4 (71%) healthy still takes its whole share of the load.
const DefaultOverprovisioningFactor = 140

// Priorities and localities, as Envoy balances them (its docs: "Priority levels", "Locality
// weighted load balancing", "Panic threshold"):
//
//   - A level's health is min(100, overprovisioning × healthy / total) percent, where healthy
//     counts the endpoints not ejected by outlier detection.
//   - Priority 0 takes min(100, its health) percent of new connections, priority 1 what is left
//     up to its own health, and so on. When the healths add up to less than 100, each level's
//     load is its health scaled so that the loads add up to 100.
//   - Within a level with locality weights (the cluster asks for locality-weighted balancing), a
//     locality is chosen by weight × min(1, overprovisioning × healthy / total), then an
//     endpoint by the cluster's policy among the locality's endpoints.
//   - Panic: a level is in panic (its ejected endpoints may be picked) only when none of its
//     endpoints is healthy; when no level has any health, the load is spread over the levels by
//     their number of endpoints, as Envoy does in total panic. Envoy's default panic threshold is
//     50%, but istiod sends healthy_panic_threshold 0 unless a DestinationRule sets
//     minHealthPercent: ewgate behaves as with 0, except that when nothing at all is healthy it
//     still tries the ejected endpoints (an outage of the health signal must not become an
//     outage of the service).
//
// The level loads are computed when an ejection happens or one ends, not per connection: a pick
// reads a cached view (one atomic load and two compares), walks the cumulative loads of a few
// levels and asks the chosen level's balancer.

// level is one priority: its endpoints, a balancer over all of them, and, with locality
// weights, its localities each with their own balancer.
type level struct {
	priority   uint32
	eps        []*Endpoint
	lb         balancer
	localities []*localityGroup // nil unless locality-weighted with more than one locality
}

type localityGroup struct {
	weight uint32
	eps    []*Endpoint
	lb     balancer
}

// prioritized chooses a level by Envoy's priority load, then a locality by weight and health,
// then an endpoint by the cluster's policy.
type prioritized struct {
	levels        []*level
	overprovision uint64
	hashed        bool           // maglev: the connection's hash chooses the level and locality too
	gen           *atomic.Uint64 // bumped at every ejection of an endpoint of these states
	view          atomic.Pointer[loadView]
	seq           atomic.Uint64
}

// loadView is the priority load at a point: valid while gen is unchanged and before until.
type loadView struct {
	gen   uint64
	until int64    // unix nanoseconds: the next end of an ejection
	cum   []uint32 // cumulative load per level, in percent; the last is 100
	load  []uint32 // load per level, in percent
	panic []bool   // per level: no healthy endpoint, ejected ones may be picked
	// totalPanic: no level has a healthy endpoint; the load goes by endpoint count.
	totalPanic bool
	loc        [][]uint64
}

// newPrioritized groups eps by priority (and locality when localityWeighted) and builds a
// balancer of the policy for each group. It returns the plain balancer when there is only one
// group: a cluster without priorities or locality weights pays nothing for them.
func newPrioritized(policy string, eps []*Endpoint, localityWeights map[string]uint32, localityWeighted bool, overprovision uint32, gen *atomic.Uint64) balancer {
	byPrio := map[uint32][]*Endpoint{}
	for _, e := range eps {
		byPrio[e.Priority] = append(byPrio[e.Priority], e)
	}
	if len(byPrio) <= 1 && (!localityWeighted || len(localitiesOf(eps)) <= 1) || gen == nil {
		return newBalancer(policy, eps)
	}
	if overprovision == 0 {
		overprovision = DefaultOverprovisioningFactor
	}
	p := &prioritized{overprovision: uint64(overprovision), hashed: policy == Maglev, gen: gen}
	prios := make([]uint32, 0, len(byPrio))
	for k := range byPrio {
		prios = append(prios, k)
	}
	sort.Slice(prios, func(i, j int) bool { return prios[i] < prios[j] })
	for _, pr := range prios {
		l := &level{priority: pr, eps: byPrio[pr], lb: newBalancer(policy, byPrio[pr])}
		if locs := localitiesOf(l.eps); localityWeighted && len(locs) > 1 {
			for _, name := range locs {
				g := &localityGroup{weight: localityWeights[name]}
				for _, e := range l.eps {
					if e.Locality == name {
						g.eps = append(g.eps, e)
					}
				}
				g.lb = newBalancer(policy, g.eps)
				l.localities = append(l.localities, g)
			}
		}
		p.levels = append(p.levels, l)
	}
	return p
}

func localitiesOf(eps []*Endpoint) []string {
	var out []string
	seen := map[string]bool{}
	for _, e := range eps {
		if !seen[e.Locality] {
			seen[e.Locality] = true
			out = append(out, e.Locality)
		}
	}
	sort.Strings(out)
	return out
}

// health is min(100, overprovision × healthy / total), in percent, as Envoy computes it.
func health(healthy, total int, overprovision uint64) uint64 {
	if total == 0 {
		return 0
	}
	return min(100, overprovision*uint64(healthy)/uint64(total))
}

// current returns the load view at now, computing it again after an ejection or when one ends.
func (p *prioritized) current(now int64) *loadView {
	gen := p.gen.Load()
	if v := p.view.Load(); v != nil && v.gen == gen && now < v.until {
		return v
	}
	v := p.compute(gen, now)
	p.view.Store(v)
	return v
}

func (p *prioritized) compute(gen uint64, now int64) *loadView {
	n := len(p.levels)
	v := &loadView{gen: gen, until: math.MaxInt64, cum: make([]uint32, n), load: make([]uint32, n),
		panic: make([]bool, n), loc: make([][]uint64, n)}
	healths := make([]uint64, n)
	var sum, hosts uint64
	for i, l := range p.levels {
		healthy := 0
		for _, e := range l.eps {
			if until := e.state.ejectedUntil.Load(); now < until {
				v.until = min(v.until, until)
			} else {
				healthy++
			}
		}
		healths[i] = health(healthy, len(l.eps), p.overprovision)
		v.panic[i] = healthy == 0
		sum += healths[i]
		hosts += uint64(len(l.eps))
		if l.localities != nil {
			v.loc[i] = make([]uint64, len(l.localities))
			var c uint64
			for j, g := range l.localities {
				gh := 0
				for _, e := range g.eps {
					if !e.state.ejected(now) {
						gh++
					}
				}
				c += uint64(max(g.weight, 1)) * health(gh, len(g.eps), p.overprovision)
				v.loc[i][j] = c
			}
		}
	}
	v.totalPanic = sum == 0
	if sum == 0 {
		// Total panic: every level by its number of endpoints, all of them usable.
		distribute(v.load, func(i int) uint64 { return uint64(len(p.levels[i].eps)) }, hosts)
	} else {
		distribute(v.load, func(i int) uint64 { return healths[i] }, min(sum, 100))
	}
	var c uint32
	for i := range v.load {
		c += v.load[i]
		v.cum[i] = c
	}
	return v
}

// distribute is Envoy's distributeLoad: each level takes min(what is left, share × 100 /
// total), and the rounding remainder goes to the first level with a share.
func distribute(load []uint32, share func(int) uint64, total uint64) {
	left := uint64(100)
	first := -1
	for i := range load {
		s := share(i)
		if first < 0 && s > 0 {
			first = i
		}
		l := min(left, s*100/total)
		load[i] = uint32(l)
		left -= l
	}
	if first >= 0 {
		load[first] += uint32(left)
	}
}

// Low-discrepancy sequences (golden ratio and √2 fractions): successive connections are spread
// over the levels and localities in proportion, without bursts and without a random source.
const (
	phi64    = 0x9e3779b97f4a7c15
	sqrt2_64 = 0x6a09e667f3bcc909
)

// scaled maps x, a fraction of 2^64, to [0, n).
func scaled(x, n uint64) uint64 {
	hi, _ := bits.Mul64(x, n)
	return hi
}

func (p *prioritized) pick(h uint64, tried []*Endpoint, now int64) *Endpoint {
	v := p.current(now)
	x := h
	if !p.hashed {
		x = p.seq.Add(1) * phi64
	}
	r := uint32(scaled(x, 100))
	chosen := 0
	for chosen < len(v.cum)-1 && r >= v.cum[chosen] {
		chosen++
	}
	if e := p.pickLevel(chosen, v, x*sqrt2_64, h, tried, now); e != nil {
		return e
	}
	// Every usable endpoint of the chosen level was tried for this connection: the other
	// levels' healthy endpoints, in priority order (a level with no health only in total panic),
	// so that a connection still finds a working endpoint before ejection has caught up.
	for i := range p.levels {
		if i != chosen && (!v.panic[i] || v.totalPanic) {
			if e := p.pickLevel(i, v, x*sqrt2_64, h, tried, now); e != nil {
				return e
			}
		}
	}
	return nil
}

// pickLevel picks in level i: a locality by x (when locality-weighted), an endpoint by the
// level's or locality's balancer with the connection's hash h.
func (p *prioritized) pickLevel(i int, v *loadView, x, h uint64, tried []*Endpoint, now int64) *Endpoint {
	l := p.levels[i]
	cum := v.loc[i]
	if l.localities == nil || v.panic[i] || cum[len(cum)-1] == 0 {
		return l.lb.pick(h, tried, now)
	}
	r := scaled(x, cum[len(cum)-1])
	j := 0
	for j < len(cum)-1 && r >= cum[j] {
		j++
	}
	if e := l.localities[j].lb.pick(h, tried, now); e != nil && !e.state.ejected(now) {
		return e
	}
	// The chosen locality has nothing left that is healthy: the level's other endpoints.
	return l.lb.pick(h, tried, now)
}

// priorityLoads reports the load per priority at now, for /debug/routes; nil without levels.
func (p *prioritized) priorityLoads(now int64) map[uint32]uint32 {
	v := p.current(now)
	out := make(map[uint32]uint32, len(p.levels))
	for i, l := range p.levels {
		out[l.priority] = v.load[i]
	}
	return out
}
