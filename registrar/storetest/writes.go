package storetest

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
)

func testUpdate(t *testing.T, s registrar.Store) {
	es := s.WorkloadEntries()
	v1 := mustCreate(t, s, Entry(Namespaces[0], "web-10.0.0.7"))
	v1.Labels["version"] = "v2"
	v1.Spec.Address = "10.0.0.70"
	v2, err := es.Update(ctx(t), v1)
	if err != nil {
		t.Fatalf("update with current resourceVersion: %v", err)
	}
	if v2.ResourceVersion == v1.ResourceVersion || v2.UID != v1.UID || v2.Labels["version"] != "v2" || v2.Spec.Address != "10.0.0.70" {
		t.Fatalf("update result: %+v", v2)
	}
	stale := v1.DeepCopy() // still carries v1's resourceVersion
	stale.Labels["version"] = "v3"
	_, err = es.Update(ctx(t), stale)
	wantErr(t, "update with stale resourceVersion", err, registrar.ErrConflict)
	got, _ := es.Get(ctx(t), v1.Namespace, v1.Name)
	if got.Labels["version"] != "v2" {
		t.Fatalf("a conflicting update was applied: %v", got.Labels)
	}
	free := v2.DeepCopy()
	free.ResourceVersion = ""
	free.Labels["version"] = "v4"
	if _, err := es.Update(ctx(t), free); err != nil {
		t.Fatalf("update without resourceVersion (unconditional): %v", err)
	}
	_, err = es.Update(ctx(t), Entry(Namespaces[0], "absent"))
	wantErr(t, "update of an absent object", err, registrar.ErrNotFound)
}

func testStatus(t *testing.T, s registrar.Store) {
	es := s.WorkloadEntries()
	e := mustCreate(t, s, Entry(Namespaces[0], "web-10.0.0.8"))
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	e.Status.Conditions = []registrar.Condition{{Type: registrar.ConditionHealthy, Status: "True", LastProbeTime: now, LastTransitionTime: now, Message: "ok"}}
	e.Spec.Address = "10.9.9.9" // UpdateStatus must not write spec
	st, err := es.UpdateStatus(ctx(t), e)
	if err != nil {
		t.Fatalf("update status: %v", err)
	}
	got, _ := es.Get(ctx(t), e.Namespace, e.Name)
	c := got.Status.Condition(registrar.ConditionHealthy)
	if c == nil || c.Status != "True" || c.Message != "ok" || !c.LastProbeTime.Equal(now) {
		t.Fatalf("status not stored: %+v", got.Status)
	}
	if got.Spec.Address != "10.0.0.5" {
		t.Fatalf("UpdateStatus wrote spec: address %s", got.Spec.Address)
	}
	got.Status.Conditions = nil // Update must not write status
	got.Labels["x"] = "y"
	if _, err := es.Update(ctx(t), got); err != nil {
		t.Fatal(err)
	}
	again, _ := es.Get(ctx(t), e.Namespace, e.Name)
	if again.Status.Condition(registrar.ConditionHealthy) == nil || again.Labels["x"] != "y" {
		t.Fatalf("Update dropped status or lost labels: %+v %v", again.Status, again.Labels)
	}
	st.Status.Conditions[0].Status = "False"
	_, err = es.UpdateStatus(ctx(t), st) // st's resourceVersion is older than the Update's
	wantErr(t, "update status with stale resourceVersion", err, registrar.ErrConflict)
}

func testDelete(t *testing.T, s registrar.Store) {
	es := s.WorkloadEntries()
	e := mustCreate(t, s, Entry(Namespaces[0], "web-10.0.0.9"))
	err := es.Delete(ctx(t), e.Namespace, e.Name, registrar.Preconditions{ResourceVersion: e.ResourceVersion + "0"})
	wantErr(t, "delete with wrong resourceVersion", err, registrar.ErrConflict)
	err = es.Delete(ctx(t), e.Namespace, e.Name, registrar.Preconditions{UID: "00000000-0000-4000-8000-000000000000"})
	wantErr(t, "delete with wrong uid", err, registrar.ErrConflict)
	if _, err := es.Get(ctx(t), e.Namespace, e.Name); err != nil {
		t.Fatalf("failed preconditions deleted the object: %v", err)
	}
	if err := es.Delete(ctx(t), e.Namespace, e.Name, registrar.Preconditions{UID: e.UID, ResourceVersion: e.ResourceVersion}); err != nil {
		t.Fatalf("delete with matching preconditions: %v", err)
	}
	_, err = es.Get(ctx(t), e.Namespace, e.Name)
	wantErr(t, "get after delete", err, registrar.ErrNotFound)
	err = es.Delete(ctx(t), e.Namespace, e.Name, registrar.Preconditions{})
	wantErr(t, "second delete", err, registrar.ErrNotFound)
	again := mustCreate(t, s, Entry(Namespaces[0], "web-10.0.0.9"))
	if again.UID == e.UID {
		t.Fatalf("re-created object kept the old uid %s", e.UID)
	}
}

func testList(t *testing.T, s registrar.Store) {
	for i := range 3 {
		mustCreate(t, s, Entry(Namespaces[0], "a-"+strconv.Itoa(i)))
	}
	mustCreate(t, s, Entry(Namespaces[1], "b-0"))
	a, rv, err := s.WorkloadEntries().List(ctx(t), Namespaces[0], registrar.ListOptions{})
	if err != nil || rv == "" {
		t.Fatalf("list: %v (resourceVersion %q)", err, rv)
	}
	if len(a) != 3 {
		t.Fatalf("list %s: %d items, want 3", Namespaces[0], len(a))
	}
	all, _, err := s.WorkloadEntries().List(ctx(t), "", registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range all {
		if e.Namespace == Namespaces[0] || e.Namespace == Namespaces[1] {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("list all namespaces: %d items of the suite's, want 4", n)
	}
	sel := Entry(Namespaces[0], "selected")
	sel.Labels["ewgate.io/vm"] = "0123abcd"
	mustCreate(t, s, sel)
	for _, c := range []struct {
		ns       string
		selector map[string]string
		want     int
	}{
		{Namespaces[0], map[string]string{"ewgate.io/vm": "0123abcd"}, 1},
		{"", map[string]string{"ewgate.io/vm": "0123abcd", "app": "web"}, 1},
		{Namespaces[0], map[string]string{"ewgate.io/vm": "0123abcd", "app": "db"}, 0},
		{Namespaces[1], map[string]string{"ewgate.io/vm": "0123abcd"}, 0},
		{Namespaces[0], map[string]string{"app": "web"}, 4},
	} {
		got, _, err := s.WorkloadEntries().List(ctx(t), c.ns, registrar.ListOptions{LabelSelector: c.selector})
		if err != nil || len(got) != c.want {
			t.Fatalf("list %q %v: %d items (%v), want %d", c.ns, c.selector, len(got), err, c.want)
		}
	}
}

func testGroups(t *testing.T, s registrar.Store) {
	gs := s.WorkloadGroups()
	in := Group(Namespaces[0], "web")
	got, err := gs.Create(ctx(t), in)
	if err != nil {
		t.Fatal(err)
	}
	back, err := gs.Get(ctx(t), in.Namespace, in.Name)
	if err != nil {
		t.Fatal(err)
	}
	if back.UID != got.UID || fmt.Sprintf("%+v", back.Spec.Template) != fmt.Sprintf("%+v", in.Spec.Template) ||
		back.Spec.Metadata.Annotations["team"] != "payments" || back.Spec.Probe == nil ||
		back.Spec.Probe.HTTPGet == nil || back.Spec.Probe.HTTPGet.Path != "/ready" {
		t.Fatalf("group round trip: %+v", back)
	}
	back.Spec.Template.ServiceAccount = "other"
	if _, err := gs.Update(ctx(t), back); err != nil {
		t.Fatal(err)
	}
	_, err = gs.Update(ctx(t), got)
	wantErr(t, "stale group update", err, registrar.ErrConflict)
}

func testLeases(t *testing.T, s registrar.Store) {
	ls := s.Leases()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	_, err := ls.Get(ctx(t), Namespaces[0], "gw-1")
	wantErr(t, "get absent lease", err, registrar.ErrNotFound)
	l, err := ls.Create(ctx(t), &registrar.Lease{
		ObjectMeta: registrar.ObjectMeta{Name: "gw-1", Namespace: Namespaces[0]},
		Spec:       registrar.LeaseSpec{HolderIdentity: "gw-1", LeaseDurationSeconds: 30, AcquireTime: now, RenewTime: now},
	})
	if err != nil {
		t.Fatal(err)
	}
	renew := l.DeepCopy()
	renew.Spec.RenewTime = now.Add(10 * time.Second)
	r2, err := ls.Update(ctx(t), renew)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	_, err = ls.Update(ctx(t), l)
	wantErr(t, "renew with stale resourceVersion", err, registrar.ErrConflict)
	got, _ := ls.Get(ctx(t), Namespaces[0], "gw-1")
	if got.ResourceVersion != r2.ResourceVersion || !got.Spec.RenewTime.Equal(now.Add(10*time.Second)) ||
		got.Spec.LeaseDurationSeconds != 30 || got.Spec.HolderIdentity != "gw-1" {
		t.Fatalf("lease after renew: %+v", got)
	}
	if got.Expired(now.Add(39*time.Second)) || !got.Expired(now.Add(41*time.Second)) {
		t.Fatalf("lease expiry: renewed at +10s for 30s")
	}
	_, err = ls.Create(ctx(t), got)
	wantErr(t, "second lease create", err, registrar.ErrAlreadyExists)
}

// testConcurrentUpdates runs read-modify-write loops that retry on conflict: every increment
// must land exactly once.
func testConcurrentUpdates(t *testing.T, s registrar.Store) {
	es := s.WorkloadEntries()
	e := mustCreate(t, s, Entry(Namespaces[0], "counter"))
	const writers, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			for range each {
				if err := increment(t, es, e.Namespace, e.Name); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, _ := es.Get(ctx(t), e.Namespace, e.Name)
	if got.Annotations["n"] != strconv.Itoa(writers*each) {
		t.Fatalf("counter %q after %d increments", got.Annotations["n"], writers*each)
	}
}

func increment(t *testing.T, es registrar.Resource[*registrar.WorkloadEntry], ns, name string) error {
	for {
		cur, err := es.Get(ctx(t), ns, name)
		if err != nil {
			return err
		}
		n, _ := strconv.Atoi(cur.Annotations["n"])
		cur.Annotations["n"] = strconv.Itoa(n + 1)
		_, err = es.Update(ctx(t), cur)
		if errors.Is(err, registrar.ErrConflict) {
			continue
		}
		return err
	}
}
