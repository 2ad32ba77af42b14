package registrar_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

func TestGracePeriod(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	s := g.connect(t, request(1, "10.0.0.1"))
	registered(t, s)
	e.advance(5*time.Second, time.Second, g)
	s.Close()
	g.settle(t)
	got := e.mustEntry(entry1)
	if got.Annotations[registrar.AnnotationConnectedAt] != "" ||
		got.Annotations[registrar.AnnotationDisconnectedAt] != t0.Add(5*time.Second).Format(time.RFC3339Nano) {
		t.Fatalf("after disconnect: annotations %v", got.Annotations)
	}
	e.advance(9*time.Second, time.Second, g)
	if e.entry(entry1) == nil {
		t.Fatal("entry deleted before the grace period ended")
	}
	e.advance(time.Second, time.Second, g)
	if e.entry(entry1) != nil {
		t.Fatal("entry still there after the grace period")
	}
	if regs := g.Registrations(); len(regs) != 0 {
		t.Fatalf("registration kept after delete: %+v", regs)
	}
}

func TestReconnectWithinGrace(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a", func(c *registrar.Config) { c.GracePeriod = registrar.Duration(30 * time.Second) })
	s := g.connect(t, request(1, "10.0.0.1"))
	registered(t, s)
	s.Close()
	g.settle(t)
	e.advance(20*time.Second, 5*time.Second, g)
	registered(t, g.connect(t, request(1, "10.0.0.1")))
	e.advance(time.Minute, 5*time.Second, g)
	got := e.mustEntry(entry1)
	if got.Annotations[registrar.AnnotationDisconnectedAt] != "" ||
		got.Annotations[registrar.AnnotationConnectedAt] != t0.Add(20*time.Second).Format(time.RFC3339Nano) {
		t.Fatalf("after reconnect: annotations %v", got.Annotations)
	}
}

func TestStreamCounting(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	a := g.connect(t, request(1, "10.0.0.1"))
	b := g.connect(t, request(1, "10.0.0.1"))
	registered(t, b)
	a.Close()
	a.Close() // a second Close of one session counts once
	g.settle(t)
	e.advance(time.Minute, 5*time.Second, g)
	if got := e.mustEntry(entry1); got.Annotations[registrar.AnnotationDisconnectedAt] != "" {
		t.Fatal("entry disconnected while a stream is open")
	}
	b.Close()
	g.settle(t)
	if got := e.mustEntry(entry1); got.Annotations[registrar.AnnotationDisconnectedAt] == "" {
		t.Fatal("entry not disconnected after the last stream")
	}
}

// TestStaleEvents: a connect older than the connection an entry records changes nothing, a
// disconnect on a replica that lost the entry changes nothing, and a disconnect stamped before
// the connect is not written as such.
func TestStaleEvents(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("gw-a"), e.start("gw-b")
	e.clock.Advance(10 * time.Second)
	sb := b.connect(t, request(1, "10.0.0.1"))
	registered(t, sb)
	before := e.mustEntry(entry1)

	old := request(1, "10.0.0.1")
	old.Time = t0.Add(5 * time.Second) // started before b's stream, processed after it
	sa := a.connect(t, old)
	registered(t, sa)
	a.settle(t)
	if got := e.mustEntry(entry1); got.ResourceVersion != before.ResourceVersion {
		t.Fatalf("stale connect wrote the entry: %v", got.Annotations)
	}
	if regs := a.Registrations(); regs[0].State != "owned-elsewhere" || regs[0].Owned {
		t.Fatalf("stale connect: registration %+v", regs[0])
	}
	sa.Close()
	a.settle(t)
	if got := e.mustEntry(entry1); got.ResourceVersion != before.ResourceVersion {
		t.Fatalf("disconnect by a non-owner wrote the entry: %v", got.Annotations)
	}

	sb.CloseAt(t0) // stamped before its own connect
	b.settle(t)
	if got := e.mustEntry(entry1); got.Annotations[registrar.AnnotationDisconnectedAt] != t0.Add(10*time.Second).Format(time.RFC3339Nano) {
		t.Fatalf("disconnectedAt %q, want the connect time", got.Annotations[registrar.AnnotationDisconnectedAt])
	}
}

// TestIPChange: the VM comes back with a new address; its new entry is written before the old
// one is deleted (watched in the store), and only the new one remains.
func TestIPChange(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	s := g.connect(t, request(1, "10.0.0.1"))
	registered(t, s)
	s.Close()
	g.settle(t)
	_, rv, _ := e.store.WorkloadEntries().List(t.Context(), ns, registrar.ListOptions{})
	ch, err := e.store.WorkloadEntries().Watch(t.Context(), ns, rv)
	if err != nil {
		t.Fatal(err)
	}
	registered(t, g.connect(t, request(1, "10.0.0.2")))
	g.settle(t)
	if names := e.entryNames(); len(names) != 1 || names[0] != entry2 {
		t.Fatalf("entries %v, want [%s]", names, entry2)
	}
	ev1, ev2 := <-ch, <-ch
	if ev1.Type != registrar.Added || ev1.Object.Name != entry2 || ev2.Type != registrar.Deleted || ev2.Object.Name != entry1 {
		t.Fatalf("events %s %s, %s %s; want ADDED new before DELETED old", ev1.Type, ev1.Object.Name, ev2.Type, ev2.Object.Name)
	}
}

// TestIPChangeAcrossReplicas: the old entry was written by another replica; the new replica
// finds it by identity and node and removes it.
func TestIPChangeAcrossReplicas(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("gw-a"), e.start("gw-b")
	s := a.connect(t, request(1, "10.0.0.1"))
	registered(t, s)
	e.clock.Advance(time.Second)
	registered(t, b.connect(t, request(1, "10.0.0.2")))
	b.settle(t)
	if names := e.entryNames(); len(names) != 1 || names[0] != entry2 {
		t.Fatalf("entries %v, want [%s]", names, entry2)
	}
	// A different VM (another node) on another address is left alone.
	registered(t, a.connect(t, request(2, "10.0.0.3")))
	e.clock.Advance(time.Second)
	registered(t, b.connect(t, request(3, "10.0.0.4")))
	if names := e.entryNames(); len(names) != 3 {
		t.Fatalf("entries %v, want 3", names)
	}
	s.Close()
	a.settle(t)
	if got := e.mustEntry(entry2); got.Annotations[registrar.AnnotationWorkloadController] != "gw-b" {
		t.Fatalf("owner %q", got.Annotations[registrar.AnnotationWorkloadController])
	}
}

// TestReconnectReconciles: labels, locality and network are recomputed on reconnect (istiod
// only refreshes timestamps, istio#37868), and a group template change reaches connected VMs.
func TestReconnectReconciles(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	s := g.connect(t, request(1, "10.0.0.1"))
	registered(t, s)
	s.Close()
	g.settle(t)
	req := request(1, "10.0.0.1")
	req.Node.Labels = map[string]string{"canary": "true"}
	req.Node.Locality = registrar.Locality{Region: "us", Zone: "us-2", SubZone: "c"}
	req.Node.HasReadinessProbe = true
	registered(t, g.connect(t, req))
	g.settle(t)
	got := e.mustEntry(entry1)
	want := map[string]string{"app": "web", "tier": "group", "from-template": "yes", "canary": "true"}
	if !maps.Equal(got.Spec.Labels, want) || got.Spec.Locality != "us/us-2/c" ||
		got.Annotations[registrar.AnnotationHealthChecksEnabled] != "true" {
		t.Fatalf("not reconciled: labels %v locality %s annotations %v", got.Labels, got.Spec.Locality, got.Annotations)
	}

	grp, _ := e.store.WorkloadGroups().Get(t.Context(), ns, "web")
	grp.Spec.Template.Ports["grpc"] = 9090
	grp.Spec.Metadata.Annotations["team"] = "platform"
	if _, err := e.store.WorkloadGroups().Update(t.Context(), grp); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "group change reaches the entry", func() bool {
		got := e.mustEntry(entry1)
		return got.Spec.Ports["grpc"] == 9090 && got.Annotations["team"] == "platform"
	})
}

// TestGroupRecreated: deleting the group withdraws the entries and refuses new VMs; creating
// it again brings the connected VMs' entries back without a reconnect (istio#45329).
func TestGroupRecreated(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	registered(t, g.connect(t, request(1, "10.0.0.1")))
	registered(t, g.connect(t, request(2, "10.0.0.2")))
	if err := e.store.WorkloadGroups().Delete(t.Context(), ns, "web", registrar.Preconditions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "entries withdrawn", func() bool { return len(e.entryNames()) == 0 })
	if _, err := g.Connect(t.Context(), request(3, "10.0.0.3")); err == nil {
		t.Fatal("connect accepted with the group deleted")
	}
	grp := e.putGroup(webGroup())
	testkit.Eventually(t, "entries restored", func() bool { return len(e.entryNames()) == 2 })
	if got := e.mustEntry(entry1); got.OwnerReferences[0].UID != grp.UID {
		t.Fatalf("owner uid %s, want the new group's %s", got.OwnerReferences[0].UID, grp.UID)
	}
	if regs := g.Registrations(); regs[0].State != "registered" {
		t.Fatalf("registration %+v", regs[0])
	}
}

// TestGroupCreatedAfterConnect: a VM whose group disappears between admission and write gets
// its entry as soon as the group exists.
func TestGroupExcludesVM(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	registered(t, g.connect(t, request(1, "10.0.0.1")))
	grp, _ := e.store.WorkloadGroups().Get(t.Context(), ns, "web")
	grp.Spec.Template.ServiceAccount = "other-sa"
	if _, err := e.store.WorkloadGroups().Update(context.Background(), grp); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "entry of a VM the group no longer admits is withdrawn", func() bool { return len(e.entryNames()) == 0 })
}

func TestHealth(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	s := g.connect(t, request(1, "10.0.0.1"))
	registered(t, s)
	if err := s.SetHealth(false, "probe failed: connection refused"); err != nil {
		t.Fatal(err)
	}
	g.settle(t)
	c := e.mustEntry(entry1).Status.Condition(registrar.ConditionHealthy)
	if c == nil || c.Status != "False" || c.Message != "probe failed: connection refused" {
		t.Fatalf("condition %+v", c)
	}
	e.clock.Advance(time.Second)
	if err := g.SetHealth(s.Key(), true, ""); err != nil {
		t.Fatal(err)
	}
	g.settle(t)
	c = e.mustEntry(entry1).Status.Condition(registrar.ConditionHealthy)
	if c == nil || c.Status != "True" || !c.LastTransitionTime.Equal(t0.Add(time.Second)) {
		t.Fatalf("condition %+v", c)
	}
	s.Close()
	if err := g.SetHealth(s.Key(), true, ""); err == nil {
		t.Fatal("health accepted for a disconnected VM")
	}
}

// TestForeignEntryUntouched: an entry of the same name written by hand (no
// istio.io/autoRegistrationGroup) is never overwritten; the VM's write keeps retrying.
func TestForeignEntryUntouched(t *testing.T) {
	e := newEnv(t)
	manual := &registrar.WorkloadEntry{
		ObjectMeta: registrar.ObjectMeta{Name: entry1, Namespace: ns},
		Spec:       registrar.WorkloadEntrySpec{Address: "10.0.0.1", Labels: map[string]string{"app": "legacy"}},
	}
	before, err := e.store.WorkloadEntries().Create(t.Context(), manual)
	if err != nil {
		t.Fatal(err)
	}
	g := e.start("gw-a")
	g.connect(t, request(1, "10.0.0.1"))
	e.advance(5*time.Second, 100*time.Millisecond, g)
	if got := e.mustEntry(entry1); got.ResourceVersion != before.ResourceVersion {
		t.Fatalf("hand-written entry overwritten: %v", got.Annotations)
	}
	if regs := g.Registrations(); regs[0].State != "pending" || regs[0].LastError == "" {
		t.Fatalf("registration %+v", regs[0])
	}
}

// TestAddressCollision: a second VM claiming the address of a connected VM does not take its
// entry (istio#43950); it gets it once the first VM has gone.
func TestAddressCollision(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("gw-a"), e.start("gw-b")
	first := a.connect(t, request(1, "10.0.0.1"))
	registered(t, first)
	e.clock.Advance(time.Second)
	second := b.connect(t, request(2, "10.0.0.1"))
	e.advance(3*time.Second, 100*time.Millisecond, a, b)
	got := e.mustEntry(entry1)
	if got.Annotations[registrar.AnnotationWorkloadController] != "gw-a" ||
		got.Annotations[registrar.AnnotationNode] != "sidecar~vm-1.vm-ns~vm-ns.svc.cluster.local" {
		t.Fatalf("entry taken by the second VM: %v", got.Annotations)
	}
	first.Close()
	e.advanceUntil("second VM registered after the first left", time.Second, time.Minute, func() bool {
		x := e.entry(entry1)
		return x != nil && x.Annotations[registrar.AnnotationNode] == "sidecar~vm-2.vm-ns~vm-ns.svc.cluster.local" &&
			x.Annotations[registrar.AnnotationDisconnectedAt] == ""
	}, a, b)
	registered(t, second)
}

// TestLeaseRenewed: a replica's Lease is created at start and renewed on its interval.
func TestLeaseRenewed(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a")
	testkit.Eventually(t, "lease created", func() bool {
		_, err := e.store.Leases().Get(t.Context(), "istio-system", "gw-a")
		return err == nil
	})
	e.advance(25*time.Second, 5*time.Second, g)
	l, err := e.store.Leases().Get(t.Context(), "istio-system", "gw-a")
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity != "gw-a" || l.Spec.LeaseDurationSeconds != 30 || !l.Spec.RenewTime.Equal(t0.Add(20*time.Second)) ||
		!l.Spec.AcquireTime.Equal(t0) || l.Expired(t0.Add(45*time.Second)) {
		t.Fatalf("lease %+v", l.Spec)
	}
}
