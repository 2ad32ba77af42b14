// Package registrartest runs the registrar's multi-replica behaviour against any Store, in
// real time: two replicas racing for one VM, a VM handed over between replicas, a replica
// killed without disconnecting (its entries collected after its Lease expires), a churn of VMs
// connecting and disconnecting at random, and the rate of registrations. The registrar's own
// tests check the same behaviour with a fake clock on the memory and file stores; this package
// is for stores whose timing is their own, above all registrar/kube against a real API server.
//
// Every wait is a condition polled under a deadline; durations (grace period, Lease) are short
// so that a scenario takes seconds.
//
// Usage:
//
//	registrartest.KilledReplica(t, registrartest.Options{Namespace: ns, Stores: [2]registrar.Store{a, b}})
package registrartest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
)

// Options describe where a scenario runs.
type Options struct {
	// Namespace holds the scenario's WorkloadGroup and entries; it must exist and hold no
	// entries. The scenario creates the group "web" in it.
	Namespace string
	// Stores are the two replicas' stores: two clients of one backend (as two gateway
	// processes have), or the same store twice.
	Stores [2]registrar.Store
	// LeaseNamespace holds the replicas' Leases. If empty, Namespace.
	LeaseNamespace string
	// Timeout bounds each wait for a condition. If zero, 60 s.
	Timeout time.Duration
	// Logf, if set, receives a line of measurements per scenario.
	Logf func(format string, args ...any)
}

func (o *Options) defaults() {
	if o.LeaseNamespace == "" {
		o.LeaseNamespace = o.Namespace
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Stores[1] == nil {
		o.Stores[1] = o.Stores[0]
	}
}

// Timing of the replicas: short, so that grace periods and Lease expiry pass in seconds.
const (
	GracePeriod   = 2 * time.Second
	LeaseDuration = 3 * time.Second
)

// Replica is one running registrar.
type Replica struct {
	*registrar.Registrar
	Store  registrar.Store
	cancel context.CancelFunc
	done   chan struct{}
}

// StartReplica runs a registrar named instance on store until the test ends or Stop.
func StartReplica(t testing.TB, o Options, store registrar.Store, instance string, mutate ...func(*registrar.Config)) *Replica {
	t.Helper()
	o.defaults()
	cfg := registrar.Config{
		Instance: instance, GracePeriod: registrar.Duration(GracePeriod),
		LeaseNamespace: o.LeaseNamespace, LeaseDuration: registrar.Duration(LeaseDuration),
		LeaseRenew: registrar.Duration(500 * time.Millisecond), SweepInterval: registrar.Duration(time.Second),
		RetryBase: registrar.Duration(20 * time.Millisecond), RetryMax: registrar.Duration(time.Second),
		DeleteRate: 1000,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	r, err := registrar.New(cfg, registrar.Options{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Replica{Registrar: r, Store: store, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		if err := r.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(g.Stop)
	return g
}

// Stop ends Run and waits for it. Sessions are not closed: this is also how a scenario kills
// a replica (no disconnectedAt is written).
func (g *Replica) Stop() {
	g.cancel()
	<-g.done
}

// Group is the WorkloadGroup "web" every scenario registers its VMs in.
func Group(ns string) *registrar.WorkloadGroup {
	return &registrar.WorkloadGroup{
		ObjectMeta: registrar.ObjectMeta{Name: "web", Namespace: ns},
		Spec: registrar.WorkloadGroupSpec{
			Metadata: registrar.GroupMetadata{Labels: map[string]string{"app": "web"}, Annotations: map[string]string{"team": "payments"}},
			Template: registrar.WorkloadEntrySpec{Ports: map[string]uint32{"http": 8080}, ServiceAccount: "web-sa"},
		},
	}
}

// PutGroup creates the group through the first store and waits until both stores show it
// (a store with a cache sees another client's write a little later).
func PutGroup(t testing.TB, o Options) {
	t.Helper()
	o.defaults()
	if _, err := o.Stores[0].WorkloadGroups().Create(context.Background(), Group(o.Namespace)); err != nil {
		t.Fatal(err)
	}
	for _, s := range o.Stores {
		Eventually(t, o.Timeout, "group visible in every store", func() bool {
			_, err := s.WorkloadGroups().Get(context.Background(), o.Namespace, "web")
			return err == nil
		})
	}
}

// Request is the request of VM number i at ip: pilot-agent's node, the group's identity.
func Request(ns string, i int, ip string) registrar.Request {
	return registrar.Request{
		Identity: registrar.Identity{Cluster: "c1", Namespace: ns, ServiceAccount: "web-sa",
			SPIFFEID: "spiffe://cluster.local/ns/" + ns + "/sa/web-sa"},
		Node: registrar.Node{
			ID:                fmt.Sprintf("sidecar~%s~vm-%d.%s~%s.svc.cluster.local", ip, i, ns, ns),
			AutoRegisterGroup: "web", InstanceIPs: []string{ip}, Network: "vm-net", ClusterID: "c1",
			Labels:   map[string]string{"version": "v1"},
			Locality: registrar.Locality{Region: "eu", Zone: "eu-1"},
		},
		Source: netip.MustParseAddr("203.0.113.9"),
	}
}

// EntryName is the entry of a VM at ip in the group "web" on network vm-net.
func EntryName(ip string) string {
	return registrar.EntryName("web", netip.MustParseAddr(ip), "vm-net")
}

// Connect opens a stream and fails the test on a refusal.
func (g *Replica) Connect(t testing.TB, req registrar.Request) *registrar.Session {
	t.Helper()
	s, err := g.Registrar.Connect(context.Background(), req)
	if err != nil {
		t.Fatalf("%s: connect: %v", g.Instance(), err)
	}
	return s
}

// Registered waits until the session's entry is written.
func Registered(t testing.TB, d time.Duration, s *registrar.Session) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-s.Registered():
	case <-timer.C:
		t.Fatalf("entry not written within %s", d)
	}
}

// Eventually polls cond every 10 ms until it holds, failing the test after d.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", d, what)
		}
		<-tick.C
	}
}

// entry reads ns/name from s: nil if absent.
func entry(t testing.TB, s registrar.Store, ns, name string) *registrar.WorkloadEntry {
	t.Helper()
	e, err := s.WorkloadEntries().Get(context.Background(), ns, name)
	if errors.Is(err, registrar.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func owner(e *registrar.WorkloadEntry) string {
	if e == nil {
		return ""
	}
	return e.Annotations[registrar.AnnotationWorkloadController]
}

func connected(e *registrar.WorkloadEntry) bool {
	return e != nil && e.Annotations[registrar.AnnotationConnectedAt] != "" && e.Annotations[registrar.AnnotationDisconnectedAt] == ""
}

// Throughout runs check every period for d: a stability check (something must stay true for a
// while), not a wait for a condition.
func Throughout(d, period time.Duration, check func()) {
	end := time.Now().Add(d)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for check(); time.Now().Before(end); check() {
		<-tick.C
	}
}
