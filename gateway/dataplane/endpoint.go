package dataplane

import (
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is one upstream address of a cluster in a snapshot. Its health and load live in a
// state object shared by every snapshot that lists the same cluster and address, so a config
// reload or an xDS push keeps ejections and connection counts.
type Endpoint struct {
	Address  string
	Weight   uint32
	Locality string // xDS endpoints: region/zone/subzone
	Network  string // xDS endpoints
	Priority uint32 // xDS endpoints: 0 is preferred (priority.go)
	state    *endpointState
}

// endpointState is the mutable part of an endpoint: passive health and active connections.
type endpointState struct {
	active       atomic.Int64 // open proxied connections (least_conn)
	consecutive  atomic.Int32 // connect failures since the last success
	ejections    atomic.Int32 // ejections so far; the next lasts base << ejections
	ejectedUntil atomic.Int64 // unix nanoseconds; zero when never ejected
	// gen is shared by the states of one gateway and bumped at every ejection, so that
	// priority loads cached by the balancers are computed again (priority.go). Nil in tests of
	// a lone state.
	gen *atomic.Uint64
}

// ejected reports whether the endpoint is out of rotation at now (unix nanoseconds).
func (s *endpointState) ejected(now int64) bool { return now < s.ejectedUntil.Load() }

// failure records a connect failure and reports whether it ejected the endpoint.
func (s *endpointState) failure(now time.Time, od *OutlierDetection) bool {
	n := s.consecutive.Add(1)
	if od.ConsecutiveFailures <= 0 || int(n) < od.ConsecutiveFailures {
		return false
	}
	s.consecutive.Store(0)
	k := s.ejections.Add(1)
	d := od.BaseEjectionTime
	for i := int32(1); i < k && d < od.MaxEjectionTime; i++ {
		d *= 2
	}
	d = min(d, od.MaxEjectionTime)
	s.ejectedUntil.Store(now.Add(d).UnixNano())
	if s.gen != nil {
		s.gen.Add(1)
	}
	return true
}

// success records a connect success. An endpoint that has stayed in rotation for a whole
// max_ejection_time since its last ejection ended starts again from the base ejection time.
func (s *endpointState) success(now time.Time, od *OutlierDetection) {
	s.consecutive.Store(0)
	if until := s.ejectedUntil.Load(); until != 0 && now.UnixNano()-until > int64(od.MaxEjectionTime) {
		s.ejections.Store(0)
	}
}

// stateKey names an endpoint across snapshots.
type stateKey struct{ cluster, address string }

// states keeps endpointStates across snapshots; states no longer listed are dropped at the next
// snapshot (open connections keep their pointer until they end).
type states struct {
	mu  sync.Mutex
	m   map[stateKey]*endpointState
	gen atomic.Uint64 // ejections so far, of any of these states
}

// retain returns the states for keys, reusing existing ones, and forgets every other state.
func (s *states) retain(keys []stateKey) map[stateKey]*endpointState {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[stateKey]*endpointState, len(keys))
	for _, k := range keys {
		st := s.m[k]
		if st == nil {
			st = &endpointState{gen: &s.gen}
		}
		next[k] = st
	}
	s.m = next
	return next
}
