package kube

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestEntryRoundTrip: an entry encoded for the API server and decoded from its answer is the
// same entry (what storetest's RoundTrip then checks against a real API server).
func TestEntryRoundTrip(t *testing.T) {
	in := storetest.Entry("vm-ns", "web-10.0.0.5-vm-net")
	in.ResourceVersion, in.UID = "42", "u-1"
	in.CreationTimestamp = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	in.Status.Conditions = []registrar.Condition{{Type: registrar.ConditionHealthy, Status: "True",
		LastProbeTime: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC), Message: "ok"}}
	m, err := toMap(in, registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: m}
	if u.GetAPIVersion() != "networking.istio.io/v1" || u.GetKind() != "WorkloadEntry" || u.GetResourceVersion() != "42" {
		t.Fatalf("encoded object: %v", m)
	}
	back, err := fromUnstructured(u.DeepCopy(), &registrar.WorkloadEntry{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, in) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", back, in)
	}
}

func TestCreateBodyDropsServerFields(t *testing.T) {
	in := storetest.Entry("ns", "x")
	in.ResourceVersion, in.UID, in.CreationTimestamp = "7", "u", time.Now()
	in.Status.Conditions = []registrar.Condition{{Type: "Healthy", Status: "True"}}
	m, err := toMap(in, registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	if err != nil {
		t.Fatal(err)
	}
	u := createBody(m)
	if ts := u.GetCreationTimestamp(); u.GetResourceVersion() != "" || u.GetUID() != "" || !ts.IsZero() {
		t.Fatalf("create body keeps server fields: %v", u.Object["metadata"])
	}
	if _, ok := u.Object["status"]; ok {
		t.Fatal("create body has a status")
	}
	if u.GetLabels()["app"] != "web" || len(u.GetOwnerReferences()) != 1 {
		t.Fatalf("create body lost metadata: %v", u.Object["metadata"])
	}
}

// TestUpdateBodyKeepsUnmodelled: finalizers and spec come from the right places; labels the
// caller dropped are dropped.
func TestUpdateBodyKeepsUnmodelled(t *testing.T) {
	base := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
		"metadata": map[string]any{
			"name": "x", "namespace": "ns", "resourceVersion": "5", "uid": "u",
			"finalizers": []any{"example.com/keep"},
			"labels":     map[string]any{"old": "1"},
		},
		"spec":   map[string]any{"address": "10.0.0.1"},
		"status": map[string]any{"conditions": []any{map[string]any{"type": "Healthy", "status": "True"}}},
	}}
	in := storetest.Entry("ns", "x")
	in.Labels = nil
	m, err := toMap(in, registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	if err != nil {
		t.Fatal(err)
	}
	b := updateBody(base, m, "5")
	if len(b.GetFinalizers()) != 1 || b.GetLabels() != nil || b.GetResourceVersion() != "5" {
		t.Fatalf("update body metadata: %v", b.Object["metadata"])
	}
	if addr, _, _ := unstructured.NestedString(b.Object, "spec", "address"); addr != "10.0.0.5" {
		t.Fatalf("update body spec address %q", addr)
	}
	if base.GetLabels()["old"] != "1" {
		t.Fatal("updateBody modified its base")
	}
	in.Status.Conditions = nil
	m, _ = toMap(in, registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	st := statusBody(base, m, "6")
	if _, ok := st.Object["status"]; ok || st.GetResourceVersion() != "6" {
		t.Fatalf("status body: %v", st.Object)
	}
}

func TestAPIErrorSentinels(t *testing.T) {
	gr := schema.GroupResource{Group: "networking.istio.io", Resource: "workloadentries"}
	for _, c := range []struct {
		err  error
		want error
	}{
		{apierrors.NewNotFound(gr, "x"), registrar.ErrNotFound},
		{apierrors.NewAlreadyExists(gr, "x"), registrar.ErrAlreadyExists},
		{apierrors.NewConflict(gr, "x", errors.New("the object has been modified")), registrar.ErrConflict},
		{apierrors.NewGone("too old resource version"), registrar.ErrGone},
		{apierrors.NewResourceExpired("too old resource version"), registrar.ErrGone},
	} {
		got := apiError("update", "workloadentries", "ns", "x", c.err)
		if !errors.Is(got, c.want) || !errors.Is(got, c.err) {
			t.Errorf("%v: got %v, want %v", c.err, got, c.want)
		}
		for _, other := range []error{registrar.ErrNotFound, registrar.ErrAlreadyExists, registrar.ErrConflict, registrar.ErrGone} {
			if other != c.want && errors.Is(got, other) {
				t.Errorf("%v also maps to %v", c.err, other)
			}
		}
	}
	if err := apiError("get", "leases", "ns", "x", apierrors.NewForbidden(gr, "x", errors.New("no"))); errors.Is(err, registrar.ErrNotFound) {
		t.Errorf("forbidden mapped to not found: %v", err)
	}
}

func raw(ns, name, rv string) *unstructured.Unstructured {
	m, _ := toMap(storetest.Entry(ns, name), registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	u := &unstructured.Unstructured{Object: m}
	u.SetResourceVersion(rv)
	u.SetUID(k8sUID("uid-" + name))
	return u
}

// TestCacheVersionFollowsChanges: List returns the version of the last change applied with
// the listing; waiters wake when a write's version arrives and give up after their bound.
func TestCacheVersionFollowsChanges(t *testing.T) {
	var errs []error
	c := newObjectCache("workloadentries", func(u *unstructured.Unstructured) (*registrar.WorkloadEntry, error) {
		return fromUnstructured(u, &registrar.WorkloadEntry{})
	}, func(err error) { errs = append(errs, err) })
	if c.hasSynced() {
		t.Fatal("synced before the first listing")
	}
	if err := c.Replace([]any{raw("a", "x", "10"), raw("b", "y", "9")}, "12"); err != nil {
		t.Fatal(err)
	}
	items, rv := c.list("", func(*registrar.ObjectMeta) bool { return true })
	if !c.hasSynced() || rv != "12" || len(items) != 2 || items[0].Name != "x" || items[1].Name != "y" {
		t.Fatalf("after replace: rv %s, %d items", rv, len(items))
	}
	got := make(chan bool)
	go func() { got <- c.waitRV(context.Background(), 5*time.Second, "14") }()
	if err := c.Add(raw("a", "z", "13")); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(raw("a", "x", "14")); err != nil {
		t.Fatal(err)
	}
	if !<-got {
		t.Fatal("waiter not woken by the change to version 14")
	}
	items, rv = c.list("a", func(*registrar.ObjectMeta) bool { return true })
	if rv != "14" || len(items) != 1 || items[0].Name != "z" {
		t.Fatalf("after add+delete: rv %s, items %d", rv, len(items))
	}
	if !c.waitGone(context.Background(), time.Millisecond, "a", "x", "uid-x") {
		t.Fatal("deleted object still cached")
	}
	if c.waitRV(context.Background(), 20*time.Millisecond, "99") {
		t.Fatal("waitRV returned true for a version never applied")
	}
	o, _, ok := c.get("a", "z")
	if !ok {
		t.Fatal("get z")
	}
	o.Labels["app"] = "changed"
	again, _, _ := c.get("a", "z")
	if again.Labels["app"] != "web" {
		t.Fatal("cache shares objects with callers")
	}
	bad := raw("a", "bad", "15")
	bad.Object["spec"] = "not an object"
	if err := c.Update(bad); err != nil || len(errs) != 1 {
		t.Fatalf("undecodable object: err %v, reported %d", err, len(errs))
	}
	if _, _, ok := c.get("a", "bad"); ok {
		t.Fatal("undecodable object cached")
	}
}

func TestLeaseConversion(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	in := &registrar.Lease{
		ObjectMeta: registrar.ObjectMeta{Name: "gw-1", Namespace: "istio-system", ResourceVersion: "3"},
		Spec:       registrar.LeaseSpec{HolderIdentity: "gw-1", LeaseDurationSeconds: 30, AcquireTime: at, RenewTime: at},
	}
	k := leaseToKube(in)
	if *k.Spec.HolderIdentity != "gw-1" || *k.Spec.LeaseDurationSeconds != 30 || k.ResourceVersion != "3" {
		t.Fatalf("to kube: %+v", k)
	}
	back := leaseFromKube(k)
	if back.Spec.HolderIdentity != "gw-1" || !back.Spec.RenewTime.Equal(at) || back.Name != "gw-1" {
		t.Fatalf("from kube: %+v", back)
	}
	empty := leaseFromKube(leaseToKube(&registrar.Lease{ObjectMeta: registrar.ObjectMeta{Name: "n"}}))
	if !empty.Spec.RenewTime.IsZero() || !empty.Expired(at) {
		t.Fatalf("lease without renew time: %+v", empty)
	}
	l := &leases{namespace: "istio-system"}
	if _, err := l.Get(context.Background(), "other", "gw-1"); err == nil {
		t.Fatal("lease outside the configured namespace allowed")
	}
}

func TestNewNeedsConfig(t *testing.T) {
	if _, err := New(context.Background(), Options{}); err == nil {
		t.Fatal("New without a rest.Config succeeded")
	}
}
