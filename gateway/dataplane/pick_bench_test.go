package dataplane

import (
	"fmt"
	"testing"
)

// benchSpec is a mesh cluster of n endpoints in two localities of one region.
func benchSpec(policy string, n int) ClusterSpec {
	s := ClusterSpec{Name: "outbound_.8443_._.bench.ns.svc.cluster.local", LBPolicy: policy}
	for i := range n {
		s.Endpoints = append(s.Endpoints, EndpointSpec{Address: fmt.Sprintf("10.0.0.%d:8443", i+1), Weight: 1,
			Locality: fmt.Sprintf("r1/z%d", i%2)})
	}
	return s
}

func benchPick(b *testing.B, s ClusterSpec) {
	var st states
	var keys []stateKey
	for _, e := range s.Endpoints {
		keys = append(keys, stateKey{"mesh/" + s.Name, e.Address})
	}
	c := buildDynamicCluster("mesh", s, st.retain(keys))
	b.ReportAllocs()
	var h uint64
	for b.Loop() {
		h += 0x9e3779b97f4a7c15
		if c.lb.pick(h, nil, 1) == nil {
			b.Fatal("nil")
		}
	}
}

// BenchmarkClusterPick is endpoint choice in a dynamic cluster of 8 endpoints, as a connection
// makes it (dial.go): flat (one priority), in two priorities, and in two priorities of two
// weighted localities each.
func BenchmarkClusterPick(b *testing.B) {
	for _, p := range []string{RoundRobin, LeastConn, Maglev} {
		b.Run(p, func(b *testing.B) { benchPick(b, benchSpec(p, 8)) })
		b.Run("priorities/"+p, func(b *testing.B) {
			s := benchSpec(p, 8)
			for i := range s.Endpoints {
				s.Endpoints[i].Priority = uint32(i / 4)
			}
			benchPick(b, s)
		})
		b.Run("localities/"+p, func(b *testing.B) {
			s := benchSpec(p, 8)
			s.LocalityWeighted = true
			for i := range s.Endpoints {
				s.Endpoints[i].Priority = uint32(i / 4)
				s.Endpoints[i].LocalityWeight = uint32(1 + i%2)
			}
			benchPick(b, s)
		})
	}
}
