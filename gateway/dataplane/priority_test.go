package dataplane

import (
	"fmt"
	"testing"
	"time"
)

// levelsOf builds a prioritized balancer whose level i has totals[i] endpoints, the first
// healthy[i] of them in rotation and the rest ejected until 1000 (nanoseconds).
func levelsOf(t *testing.T, totals, healthy []int) *prioritized {
	t.Helper()
	var st states
	var keys []stateKey
	var eps []*Endpoint
	for i, n := range totals {
		for j := range n {
			e := &Endpoint{Address: fmt.Sprintf("10.%d.%d.%d:8443", i, j/250, j%250+1), Weight: 1, Priority: uint32(i)}
			eps = append(eps, e)
			keys = append(keys, stateKey{"c", e.Address})
		}
	}
	kept := st.retain(keys)
	k := 0
	for i, n := range totals {
		for j := range n {
			eps[k].state = kept[keys[k]]
			if j >= healthy[i] {
				eps[k].state.ejectedUntil.Store(1000)
			}
			k++
		}
	}
	p, ok := newPrioritized(RoundRobin, eps, nil, false, 0, &st.gen).(*prioritized)
	if !ok {
		t.Fatal("endpoints in several priorities did not get a prioritized balancer")
	}
	return p
}

// TestPriorityLoadIsEnvoys checks the load per priority against the examples of Envoy's
// "Priority levels" and "Panic threshold" pages (health = healthy% × 1.4, capped at 100).
func TestPriorityLoadIsEnvoys(t *testing.T) {
	for _, tc := range []struct {
		name           string
		totals, health []int
		want           []uint32
	}{
		{"both healthy", []int{100, 100}, []int{100, 100}, []uint32{100, 0}},
		{"P0 72% healthy is 100% available", []int{100, 100}, []int{72, 100}, []uint32{100, 0}},
		{"P0 71% healthy", []int{100, 100}, []int{71, 100}, []uint32{99, 1}},
		{"P0 50% healthy keeps 70%", []int{100, 100}, []int{50, 100}, []uint32{70, 30}},
		{"P0 25% healthy", []int{100, 100}, []int{25, 100}, []uint32{35, 65}},
		{"P0 down", []int{100, 100}, []int{0, 100}, []uint32{0, 100}},
		{"three levels", []int{100, 100, 100}, []int{20, 20, 100}, []uint32{28, 28, 44}},
		{"normalised below 100", []int{100, 100}, []int{20, 20}, []uint32{50, 50}},
		{"normalised, three levels", []int{100, 100, 100}, []int{20, 20, 10}, []uint32{40, 40, 20}},
		{"half of two endpoints", []int{2, 1}, []int{1, 1}, []uint32{70, 30}},
		{"total panic: by endpoint count", []int{2, 6}, []int{0, 0}, []uint32{25, 75}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := levelsOf(t, tc.totals, tc.health)
			v := p.current(0)
			for i := range tc.want {
				if v.load[i] != tc.want[i] {
					t.Fatalf("loads %v; want %v", v.load, tc.want)
				}
			}
			// The picks follow the load: over 1000 connections each level within 1%.
			got := make([]int, len(tc.totals))
			for range 1000 {
				e := p.pick(0, nil, 0)
				if e == nil {
					t.Fatal("no endpoint")
				}
				got[e.Priority]++
			}
			for i := range got {
				if d := got[i] - int(tc.want[i])*10; d < -10 || d > 10 {
					t.Fatalf("1000 picks by priority %v; want about %v per mille", got, tc.want)
				}
			}
		})
	}
}

// TestPriorityViewFollowsEjections: an ejection (through failure, which bumps the generation)
// moves the load at once; the end of the ejection moves it back without any other event.
func TestPriorityViewFollowsEjections(t *testing.T) {
	p := levelsOf(t, []int{2, 1}, []int{2, 1})
	od := &OutlierDetection{ConsecutiveFailures: 1, BaseEjectionTime: time.Second, MaxEjectionTime: time.Minute}
	now := time.Unix(100, 0)
	if l := p.priorityLoads(now.UnixNano()); l[0] != 100 {
		t.Fatalf("all healthy: %v; want P0 100", l)
	}
	if !p.levels[0].eps[0].state.failure(now, od) {
		t.Fatal("one failure with consecutive_failures 1 did not eject")
	}
	if l := p.priorityLoads(now.UnixNano()); l[0] != 70 || l[1] != 30 {
		t.Fatalf("one of two P0 endpoints ejected: %v; want 70/30", l)
	}
	if l := p.priorityLoads(now.Add(time.Second).UnixNano()); l[0] != 100 {
		t.Fatalf("after the ejection ended: %v; want P0 100", l)
	}
}

// TestLocalityWeights: with locality-weighted balancing a priority's localities share by
// weight × health; without it the weights are ignored, as Envoy ignores them.
func TestLocalityWeights(t *testing.T) {
	build := func(weighted bool) (*prioritized, []*Endpoint) {
		var st states
		var eps []*Endpoint
		var keys []stateKey
		for i := range 8 {
			e := &Endpoint{Address: fmt.Sprintf("10.0.0.%d:8443", i+1), Weight: 1, Locality: []string{"r/a", "r/b"}[i/4]}
			eps = append(eps, e)
			keys = append(keys, stateKey{"c", e.Address})
		}
		// A second priority, so that the cluster gets the prioritized balancer either way.
		eps = append(eps, &Endpoint{Address: "10.0.1.1:8443", Weight: 1, Priority: 1, Locality: "s/c"})
		keys = append(keys, stateKey{"c", "10.0.1.1:8443"})
		kept := st.retain(keys)
		for i, e := range eps {
			e.state = kept[keys[i]]
		}
		b := newPrioritized(RoundRobin, eps, map[string]uint32{"r/a": 1, "r/b": 3, "s/c": 1}, weighted, 0, &st.gen)
		return b.(*prioritized), eps
	}
	share := func(p *prioritized, n int) map[string]int {
		got := map[string]int{}
		for range n {
			got[p.pick(0, nil, 0).Locality]++
		}
		return got
	}
	p, eps := build(true)
	if got := share(p, 800); got["r/a"] < 190 || got["r/a"] > 210 || got["r/b"] < 590 || got["r/b"] > 610 {
		t.Fatalf("weights 1:3, 800 picks: %v; want about 200/600", got)
	}
	// Half of r/b ejected: r/b's health is 70%, so 3×70 against 1×100: r/b takes 210/310.
	eps[4].state.ejectedUntil.Store(1000)
	eps[5].state.ejectedUntil.Store(1000)
	p.gen.Add(1)
	got := share(p, 3100)
	if got["r/b"] < 2080 || got["r/b"] > 2120 || got["s/c"] != 0 {
		t.Fatalf("r/b half ejected, 3100 picks: %v; want r/b about 2100, nothing to priority 1", got)
	}
	for _, e := range eps[4:6] {
		if n := countPicks(p, e, 3100); n != 0 {
			t.Fatalf("ejected %s picked %d times", e.Address, n)
		}
	}
	p, _ = build(false)
	if got := share(p, 800); got["r/a"] != 400 || got["r/b"] != 400 {
		t.Fatalf("without locality weighting, 800 picks: %v; want 400/400 (endpoint weights only)", got)
	}
}

func countPicks(p *prioritized, e *Endpoint, n int) int {
	c := 0
	for range n {
		if p.pick(0, nil, 0) == e {
			c++
		}
	}
	return c
}

// TestPriorityFailoverAndFailBack runs connections through the gateway to real loopback
// backends: priority 0 while it is healthy, 70/30 when one of its two endpoints is ejected,
// priority 1 when both are, and priority 0 again once the ejections end.
func TestPriorityFailoverAndFailBack(t *testing.T) {
	pki := newPKI(t)
	a1 := startBackend(t, pki, reviews)
	a2 := startBackend(t, pki, reviews)
	b := startBackend(t, pki, reviews)
	clock := newTestClock()
	g := startGatewayClock(t, xdsYAML, clock.Now)
	spec := ClusterSpec{Name: reviews,
		OutlierDetection: &OutlierDetection{ConsecutiveFailures: 1, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: time.Minute},
		Endpoints: []EndpointSpec{
			{Address: a1.addr(), Locality: "r1/z1", Priority: 0},
			{Address: a2.addr(), Locality: "r1/z1", Priority: 0},
			{Address: b.addr(), Locality: "r2/z1", Priority: 1},
		}}
	if err := g.SetMeshClusters("mesh", []ClusterSpec{spec}); err != nil {
		t.Fatal(err)
	}
	run := func(n int) (p0, p1 int) {
		t.Helper()
		before := []int{len(a1.hellos()) + len(a2.hellos()), len(b.hellos())}
		for range n {
			if err := dialMesh(t, g, pki, reviews, "istio"); err != nil {
				t.Fatalf("connection through the gateway: %v", err)
			}
		}
		return len(a1.hellos()) + len(a2.hellos()) - before[0], len(b.hellos()) - before[1]
	}
	if p0, p1 := run(20); p0 != 20 || p1 != 0 {
		t.Fatalf("all healthy: priority 0 got %d, priority 1 %d; want 20 and 0", p0, p1)
	}
	// a1 stops: its first connect failure ejects it (the connection is retried elsewhere);
	// then P0 is 50% healthy, 70% available: 70/30.
	a1Addr := a1.addr()
	a1.stop()
	if p0, p1 := run(100); p0 < 66 || p0 > 74 || p0+p1 != 100 {
		t.Fatalf("one of two P0 endpoints down: priority 0 got %d of 100, priority 1 %d; want about 70/30", p0, p1)
	}
	if got := g.counter("ewgate_endpoint_ejections_total", map[string]string{"cluster": reviews}); got != 1 {
		t.Fatalf("ejections = %v; want 1", got)
	}
	// a2 stops too: everything fails over to priority 1 (no connection fails: each failed
	// connect ejects and the connection is retried on the next choice).
	a2.stop()
	if _, p1 := run(20); p1 != 20 {
		t.Fatalf("priority 0 down: priority 1 got %d of 20", p1)
	}
	// Both come back; after the ejection time priority 0 takes everything again.
	a1 = startBackendOn(t, pki, a1Addr, reviews)
	a2 = startBackendOn(t, pki, a2.addr(), reviews)
	clock.Advance(11 * time.Second)
	if p0, p1 := run(20); p0 != 20 || p1 != 0 {
		t.Fatalf("after fail-back: priority 0 got %d, priority 1 %d; want 20 and 0", p0, p1)
	}
}

// TestRetryLeavesTheLevel: a connection whose only priority-0 endpoint failed (not yet ejected:
// consecutive_failures is 5) is retried on priority 1 rather than refused.
func TestRetryLeavesTheLevel(t *testing.T) {
	p := levelsOf(t, []int{1, 1, 1}, []int{1, 0, 1})
	first := p.pick(0, nil, 0)
	if first.Priority != 0 {
		t.Fatalf("first pick at priority %d; want 0", first.Priority)
	}
	second := p.pick(0, []*Endpoint{first}, 0)
	if second == nil || second.Priority != 2 {
		t.Fatalf("retry after priority 0 failed: %v; want the healthy priority-2 endpoint (priority 1 is ejected)", second)
	}
	if third := p.pick(0, []*Endpoint{first, second}, 0); third != nil {
		t.Fatalf("every healthy endpoint tried: got %s; want none (ejected ones only in total panic)", third.Address)
	}
}
