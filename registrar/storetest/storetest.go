// Package storetest is the conformance suite of registrar.Store: every implementation (the memory
// and file stores of package registrar, the Kubernetes store) runs it, so that the registrar can
// rely on one contract. It checks the Kubernetes semantics the registrar depends on: optimistic
// concurrency by resourceVersion, delete preconditions, status written only through
// UpdateStatus, list-then-watch without a gap, watch ordering, and copies never shared.
//
// Usage:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) registrar.Store { return newMyStore(t) })
//	}
//
// The objects live in the namespaces of Namespaces, which a store backed by a real API server
// must create; newStore must return a store in which they hold no objects.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
)

// Namespaces are the namespaces the suite writes to.
var Namespaces = []string{"storetest-a", "storetest-b"}

// Timeout bounds every wait of the suite for a watch event.
var Timeout = 10 * time.Second

// Run runs the whole suite, each case on a store of its own from newStore.
func Run(t *testing.T, newStore func(t *testing.T) registrar.Store) {
	cases := []struct {
		name string
		f    func(t *testing.T, s registrar.Store)
	}{
		{"CreateGet", testCreateGet},
		{"RoundTrip", testRoundTrip},
		{"NotShared", testNotShared},
		{"Update", testUpdate},
		{"StatusSubresource", testStatus},
		{"Delete", testDelete},
		{"List", testList},
		{"Groups", testGroups},
		{"Leases", testLeases},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"WatchOrder", testWatchOrder},
		{"WatchFromListVersion", testWatchFromList},
		{"WatchNamespace", testWatchNamespace},
		{"WatchEndsWithContext", testWatchEnds},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.f(t, newStore(t)) })
	}
}

// Entry returns a plausible auto-registered entry for tests.
func Entry(ns, name string) *registrar.WorkloadEntry {
	yes := true
	return &registrar.WorkloadEntry{
		ObjectMeta: registrar.ObjectMeta{
			Name: name, Namespace: ns,
			Labels:      map[string]string{"app": "web", "version": "v1"},
			Annotations: map[string]string{registrar.AnnotationAutoRegistrationGroup: "web"},
			OwnerReferences: []registrar.OwnerReference{{
				APIVersion: registrar.IstioAPIVersion, Kind: registrar.KindWorkloadGroup,
				Name: "web", UID: "6f1c1a2e-0000-4000-8000-000000000001", Controller: &yes,
			}},
		},
		Spec: registrar.WorkloadEntrySpec{
			Address: "10.0.0.5", Network: "vm-net", Locality: "eu/eu-1/a",
			Ports:  map[string]uint32{"http": 8080, "grpc": 9090},
			Labels: map[string]string{"app": "web", "version": "v1"},
			Weight: 3, ServiceAccount: "web-sa",
		},
	}
}

// Group returns a plausible WorkloadGroup for tests.
func Group(ns, name string) *registrar.WorkloadGroup {
	return &registrar.WorkloadGroup{
		ObjectMeta: registrar.ObjectMeta{Name: name, Namespace: ns},
		Spec: registrar.WorkloadGroupSpec{
			Metadata: registrar.GroupMetadata{
				Labels:      map[string]string{"app": name},
				Annotations: map[string]string{"team": "payments"},
			},
			Template: registrar.WorkloadEntrySpec{
				Ports: map[string]uint32{"http": 8080}, ServiceAccount: name + "-sa",
				Labels: map[string]string{"tier": "backend"},
			},
			Probe: &registrar.ReadinessProbe{
				PeriodSeconds: 5, HTTPGet: &registrar.HTTPGetAction{Path: "/ready", Port: 8080},
			},
		},
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

func mustCreate(t *testing.T, s registrar.Store, e *registrar.WorkloadEntry) *registrar.WorkloadEntry {
	t.Helper()
	got, err := s.WorkloadEntries().Create(ctx(t), e)
	if err != nil {
		t.Fatalf("create %s/%s: %v", e.Namespace, e.Name, err)
	}
	return got
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

func testCreateGet(t *testing.T, s registrar.Store) {
	ns := Namespaces[0]
	_, err := s.WorkloadEntries().Get(ctx(t), ns, "web-10.0.0.5")
	wantErr(t, "get before create", err, registrar.ErrNotFound)
	in := Entry(ns, "web-10.0.0.5")
	in.ResourceVersion = "12345" // ignored by Create
	got := mustCreate(t, s, in)
	if got.UID == "" || got.ResourceVersion == "" || got.ResourceVersion == "12345" || got.CreationTimestamp.IsZero() {
		t.Fatalf("create did not set uid/resourceVersion/creationTimestamp: %+v", got.ObjectMeta)
	}
	again, err := s.WorkloadEntries().Get(ctx(t), ns, "web-10.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	if again.UID != got.UID || again.ResourceVersion != got.ResourceVersion {
		t.Fatalf("get: uid/rv %s/%s, create returned %s/%s", again.UID, again.ResourceVersion, got.UID, got.ResourceVersion)
	}
	_, err = s.WorkloadEntries().Create(ctx(t), Entry(ns, "web-10.0.0.5"))
	wantErr(t, "second create", err, registrar.ErrAlreadyExists)
	if _, err := s.WorkloadEntries().Create(ctx(t), Entry(Namespaces[1], "web-10.0.0.5")); err != nil {
		t.Fatalf("same name in another namespace: %v", err)
	}
}

func testRoundTrip(t *testing.T, s registrar.Store) {
	in := Entry(Namespaces[0], "web-fd00--1-vm-net")
	in.Annotations[registrar.AnnotationConnectedAt] = "2026-01-02T03:04:05.123456789Z"
	mustCreate(t, s, in)
	got, err := s.WorkloadEntries().Get(ctx(t), in.Namespace, in.Name)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffEntry(in, got); d != "" {
		t.Fatalf("round trip changed the entry: %s", d)
	}
}

// diffEntry compares what a caller writes (not the server-set fields).
func diffEntry(a, b *registrar.WorkloadEntry) string {
	switch {
	case a.Name != b.Name || a.Namespace != b.Namespace:
		return fmt.Sprintf("name %s/%s vs %s/%s", a.Namespace, a.Name, b.Namespace, b.Name)
	case fmt.Sprint(a.Labels) != fmt.Sprint(b.Labels):
		return fmt.Sprintf("labels %v vs %v", a.Labels, b.Labels)
	case fmt.Sprint(a.Annotations) != fmt.Sprint(b.Annotations):
		return fmt.Sprintf("annotations %v vs %v", a.Annotations, b.Annotations)
	case fmt.Sprintf("%+v", a.Spec) != fmt.Sprintf("%+v", b.Spec):
		return fmt.Sprintf("spec %+v vs %+v", a.Spec, b.Spec)
	case len(a.OwnerReferences) != len(b.OwnerReferences):
		return fmt.Sprintf("owners %+v vs %+v", a.OwnerReferences, b.OwnerReferences)
	}
	for i, o := range a.OwnerReferences {
		p := b.OwnerReferences[i]
		if o.APIVersion != p.APIVersion || o.Kind != p.Kind || o.Name != p.Name || o.UID != p.UID ||
			(o.Controller == nil) != (p.Controller == nil) || o.Controller != nil && *o.Controller != *p.Controller {
			return fmt.Sprintf("owner %+v vs %+v", o, p)
		}
	}
	return ""
}

func testNotShared(t *testing.T, s registrar.Store) {
	in := Entry(Namespaces[0], "web-10.0.0.6")
	got := mustCreate(t, s, in)
	in.Labels["app"] = "changed-after-create"
	got.Labels["app"] = "changed-returned"
	got.Spec.Ports["http"] = 1
	again, err := s.WorkloadEntries().Get(ctx(t), in.Namespace, in.Name)
	if err != nil {
		t.Fatal(err)
	}
	if again.Labels["app"] != "web" || again.Spec.Ports["http"] != 8080 {
		t.Fatalf("store shares maps with callers: labels %v ports %v", again.Labels, again.Spec.Ports)
	}
}
