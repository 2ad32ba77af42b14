package controlplane

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/registrar"
)

func benchInput(services, perService int) ([]config.Service, []*registrar.WorkloadEntry) {
	var svcs []config.Service
	var entries []*registrar.WorkloadEntry
	for i := range services {
		app := fmt.Sprintf("svc%d", i)
		svcs = append(svcs, config.Service{Name: app, Namespace: "default", Location: config.MeshInternal,
			Hosts: []string{app + ".default.svc.cluster.local"}, Ports: []config.ServicePort{{Number: 8080, Name: "http", TargetPort: 8080}},
			WorkloadSelector: &config.WorkloadSelector{Labels: map[string]string{"app": app}}})
		for j := range perService {
			entries = append(entries, &registrar.WorkloadEntry{
				ObjectMeta: registrar.ObjectMeta{Name: fmt.Sprintf("%s-%d", app, j), Namespace: "default"},
				Spec: registrar.WorkloadEntrySpec{Address: fmt.Sprintf("10.%d.%d.%d", i%250, j/250, j%250), Labels: map[string]string{"app": app},
					ServiceAccount: app, Locality: fmt.Sprintf("r1/z%d", j%3)},
			})
		}
	}
	return svcs, entries
}

// Snapshot build time for 10,000 endpoints (100 services x 100 WorkloadEntries), both views.
func BenchmarkBuild10kEndpoints(b *testing.B) {
	svcs, entries := benchInput(100, 100)
	b.ReportAllocs()
	for b.Loop() {
		built := buildResources(buildModel(svcs, entries), "", "", 15443)
		if built.endpoints != 10000 {
			b.Fatalf("endpoints = %d", built.endpoints)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ms/build")
}

// Pushes for a burst of 1,000 registrations (the default debounce and max delay).
func BenchmarkBurst1000Registrations(b *testing.B) {
	svcs, entries := benchInput(10, 100)
	for b.Loop() {
		store := registrar.NewMemoryStore()
		s := New(Options{Services: svcs, Entries: store.WorkloadEntries()})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx, ln) }()
		<-s.Synced()
		before := s.Pushes()
		start := time.Now()
		for _, e := range entries {
			if _, err := store.WorkloadEntries().Create(ctx, e.DeepCopy()); err != nil {
				b.Fatal(err)
			}
		}
		deadline := time.Now().Add(30 * time.Second)
		for s.lastEndpoints() != 1000 {
			if time.Now().After(deadline) {
				b.Fatal("burst never fully pushed")
			}
			time.Sleep(time.Millisecond) // polling a counter with a deadline
		}
		b.ReportMetric(float64(s.Pushes()-before), "pushes/1000regs")
		b.ReportMetric(time.Since(start).Seconds(), "s/burst")
		cancel()
		<-done
	}
}

// A push after one of 10,000 WorkloadEntries (100 services x 100) changed: the incremental
// model and build the push loop does (BenchmarkBuild10kEndpoints is the full build of the first
// push).
func BenchmarkPushOneChangeOf10k(b *testing.B) {
	svcs, entries := benchInput(100, 100)
	all := map[string]*registrar.WorkloadEntry{}
	for _, e := range entries {
		all[e.Namespace+"/"+e.Name] = e
	}
	var m modelCache
	bd := newBuilder("", "", 15443)
	bd.build(m.rebuild(svcs, all))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		e := entries[i%len(entries)].DeepCopy()
		e.Spec.Weight = uint32(2 + i%2) // a change of one endpoint of one service
		i++
		built := bd.build(m.update(map[string]*registrar.WorkloadEntry{e.Namespace + "/" + e.Name: e}))
		if built.rebuilt != 1 || built.endpoints != 10000 {
			b.Fatalf("rebuilt %d ports, %d endpoints", built.rebuilt, built.endpoints)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ms/push")
}
