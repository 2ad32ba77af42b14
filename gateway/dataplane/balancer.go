package dataplane

import (
	"slices"
	"sync/atomic"
)

// balancer picks an endpoint for a new connection. h is the connection's hash (of the client
// address; used by maglev), tried the endpoints that already failed for this connection.
// pick returns nil when nothing is left to try.
type balancer interface {
	pick(h uint64, tried []*Endpoint, now int64) *Endpoint
}

func newBalancer(policy string, eps []*Endpoint) balancer {
	switch policy {
	case LeastConn:
		return &leastConn{eps: eps}
	case Maglev:
		return newMaglev(eps, MaglevTableSize)
	default:
		return newRoundRobin(eps)
	}
}

// usable reports whether e may take a new connection: not yet tried, and not ejected unless
// every endpoint is (then health is ignored, like Envoy's panic mode: an outage of the health
// signal must not become an outage of the service).
func usable(e *Endpoint, tried []*Endpoint, now int64, panicMode bool) bool {
	if slices.Contains(tried, e) {
		return false
	}
	return panicMode || !e.state.ejected(now)
}

func allEjected(eps []*Endpoint, now int64) bool {
	for _, e := range eps {
		if !e.state.ejected(now) {
			return false
		}
	}
	return true
}

// roundRobin walks a precomputed smooth weighted schedule (nginx's smooth WRR sequence), so
// weights 5:1:1 give a b a c a a a... rather than bursts; the hot path is one atomic add.
type roundRobin struct {
	eps      []*Endpoint
	schedule []*Endpoint
	next     atomic.Uint64
}

// maxSchedule bounds the schedule; weights are scaled down to fit.
const maxSchedule = 4096

func newRoundRobin(eps []*Endpoint) *roundRobin {
	rr := &roundRobin{eps: eps}
	if len(eps) == 0 {
		return rr
	}
	weights := make([]int64, len(eps))
	var total int64
	for i, e := range eps {
		weights[i] = int64(max(e.Weight, 1))
		total += weights[i]
	}
	if total > maxSchedule {
		for i := range weights {
			weights[i] = max(weights[i]*maxSchedule/total, 1)
		}
	}
	g := weights[0]
	for _, w := range weights[1:] {
		g = gcd(g, w)
	}
	total = 0
	for i := range weights {
		weights[i] /= g
		total += weights[i]
	}
	current := make([]int64, len(eps))
	for range total {
		best := 0
		for i := range eps {
			current[i] += weights[i]
			if current[i] > current[best] {
				best = i
			}
		}
		current[best] -= total
		rr.schedule = append(rr.schedule, eps[best])
	}
	return rr
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func (rr *roundRobin) pick(_ uint64, tried []*Endpoint, now int64) *Endpoint {
	n := uint64(len(rr.schedule))
	if n == 0 {
		return nil
	}
	panicMode := allEjected(rr.eps, now)
	start := rr.next.Add(1)
	for i := range n {
		if e := rr.schedule[(start+i)%n]; usable(e, tried, now, panicMode) {
			return e
		}
	}
	return nil
}

// leastConn picks the endpoint with the fewest open connections per unit of weight; ties go
// to the first in a rotating order so equal endpoints share new connections.
type leastConn struct {
	eps  []*Endpoint
	next atomic.Uint64
}

func (lc *leastConn) pick(_ uint64, tried []*Endpoint, now int64) *Endpoint {
	n := uint64(len(lc.eps))
	if n == 0 {
		return nil
	}
	panicMode := allEjected(lc.eps, now)
	start := lc.next.Add(1)
	var best *Endpoint
	var bestLoad float64
	for i := range n {
		e := lc.eps[(start+i)%n]
		if !usable(e, tried, now, panicMode) {
			continue
		}
		load := float64(e.state.active.Load()+1) / float64(max(e.Weight, 1))
		if best == nil || load < bestLoad {
			best, bestLoad = e, load
		}
	}
	return best
}
