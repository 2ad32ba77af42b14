package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube/kapi"
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
	u := kapi.Object(m)
	if u["apiVersion"] != "networking.istio.io/v1" || u.Kind() != "WorkloadEntry" || u.ResourceVersion() != "42" {
		t.Fatalf("encoded object: %v", m)
	}
	back, err := fromObject(u.DeepCopy(), &registrar.WorkloadEntry{})
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
	if _, ts := u["metadata"].(map[string]any)["creationTimestamp"]; u.ResourceVersion() != "" || u.UID() != "" || ts {
		t.Fatalf("create body keeps server fields: %v", u["metadata"])
	}
	if _, ok := u["status"]; ok {
		t.Fatal("create body has a status")
	}
	if meta := u["metadata"].(map[string]any); meta["labels"].(map[string]any)["app"] != "web" || len(meta["ownerReferences"].([]any)) != 1 {
		t.Fatalf("create body lost metadata: %v", u["metadata"])
	}
}

// TestUpdateBodyKeepsUnmodelled: finalizers and spec come from the right places; labels the
// caller dropped are dropped.
func TestUpdateBodyKeepsUnmodelled(t *testing.T) {
	base := kapi.Object{
		"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
		"metadata": map[string]any{
			"name": "x", "namespace": "ns", "resourceVersion": "5", "uid": "u",
			"finalizers": []any{"example.com/keep"},
			"labels":     map[string]any{"old": "1"},
		},
		"spec":   map[string]any{"address": "10.0.0.1"},
		"status": map[string]any{"conditions": []any{map[string]any{"type": "Healthy", "status": "True"}}},
	}
	in := storetest.Entry("ns", "x")
	in.Labels = nil
	m, err := toMap(in, registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	if err != nil {
		t.Fatal(err)
	}
	b := updateBody(base, m, "5")
	bm := b["metadata"].(map[string]any)
	if _, labels := bm["labels"]; len(bm["finalizers"].([]any)) != 1 || labels || b.ResourceVersion() != "5" {
		t.Fatalf("update body metadata: %v", bm)
	}
	if addr := b["spec"].(map[string]any)["address"]; addr != "10.0.0.5" {
		t.Fatalf("update body spec address %q", addr)
	}
	if base["metadata"].(map[string]any)["labels"].(map[string]any)["old"] != "1" {
		t.Fatal("updateBody modified its base")
	}
	in.Status.Conditions = nil
	m, _ = toMap(in, registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	st := statusBody(base, m, "6")
	if _, ok := st["status"]; ok || st.ResourceVersion() != "6" {
		t.Fatalf("status body: %v", st)
	}
}

// TestAPIErrorSentinels maps refusals as the API server words them (metav1.Status reason and
// code) onto the registrar's sentinels.
func TestAPIErrorSentinels(t *testing.T) {
	st := func(code int, reason string) error {
		return fmt.Errorf("kapi: PUT /x: %w", &kapi.StatusError{Code: code, Reason: reason, Message: "m"})
	}
	for _, c := range []struct {
		err  error
		want error
	}{
		{st(404, "NotFound"), registrar.ErrNotFound},
		{st(409, "AlreadyExists"), registrar.ErrAlreadyExists},
		{st(409, "Conflict"), registrar.ErrConflict},
		{st(410, "Gone"), registrar.ErrGone},
		{st(410, "Expired"), registrar.ErrGone},
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
	if err := apiError("get", "leases", "ns", "x", st(403, "Forbidden")); errors.Is(err, registrar.ErrNotFound) {
		t.Errorf("forbidden mapped to not found: %v", err)
	}
}

func raw(ns, name, rv string) kapi.Object {
	m, _ := toMap(storetest.Entry(ns, name), registrar.IstioAPIVersion, registrar.KindWorkloadEntry)
	u := kapi.Object(m)
	u.SetResourceVersion(rv)
	u["metadata"].(map[string]any)["uid"] = "uid-" + name
	return u
}

// TestCacheVersionFollowsChanges: List returns the version of the last change applied with
// the listing; waiters wake when a write's version arrives and give up after their bound.
func TestCacheVersionFollowsChanges(t *testing.T) {
	var errs []error
	c := newObjectCache("workloadentries", func(u kapi.Object) (*registrar.WorkloadEntry, error) {
		return fromObject(u, &registrar.WorkloadEntry{})
	}, func(err error) { errs = append(errs, err) })
	if c.hasSynced() {
		t.Fatal("synced before the first listing")
	}
	c.replace([]kapi.Object{raw("a", "x", "10"), raw("b", "y", "9")}, "12")
	items, rv := c.list("", func(*registrar.ObjectMeta) bool { return true })
	if !c.hasSynced() || rv != "12" || len(items) != 2 || items[0].Name != "x" || items[1].Name != "y" {
		t.Fatalf("after replace: rv %s, %d items", rv, len(items))
	}
	got := make(chan bool)
	go func() { got <- c.waitRV(context.Background(), 5*time.Second, "14") }()
	c.put(raw("a", "z", "13"), false)
	c.put(raw("a", "x", "14"), true)
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
	bad["spec"] = "not an object"
	c.put(bad, false)
	if len(errs) != 1 {
		t.Fatalf("undecodable object: reported %d", len(errs))
	}
	c.bookmark("20")
	if _, rv := c.list("", func(*registrar.ObjectMeta) bool { return true }); rv != "20" {
		t.Fatalf("after a bookmark: rv %s", rv)
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
	if *k.Spec.HolderIdentity != "gw-1" || *k.Spec.LeaseDurationSeconds != 30 || k.Metadata.ResourceVersion != "3" ||
		*k.Spec.RenewTime != "2026-01-02T03:04:05.123456Z" {
		t.Fatalf("to kube: %+v", k)
	}
	// Through JSON, as the API server sees it: MicroTime keeps microseconds.
	var back kubeLease
	if b, err := json.Marshal(k); err != nil || json.Unmarshal(b, &back) != nil {
		t.Fatalf("lease JSON: %v", err)
	}
	got, err := leaseFromKube("get", &back)
	if err != nil || got.Spec.HolderIdentity != "gw-1" || !got.Spec.RenewTime.Equal(at.Truncate(time.Microsecond)) || got.Name != "gw-1" {
		t.Fatalf("from kube: %+v, %v", got, err)
	}
	empty, err := leaseFromKube("get", leaseToKube(&registrar.Lease{ObjectMeta: registrar.ObjectMeta{Name: "n"}}))
	if err != nil || !empty.Spec.RenewTime.IsZero() || !empty.Expired(at) {
		t.Fatalf("lease without renew time: %+v, %v", empty, err)
	}
	l := &leases{namespace: "istio-system"}
	if _, err := l.Get(context.Background(), "other", "gw-1"); err == nil {
		t.Fatal("lease outside the configured namespace allowed")
	}
}

func TestNewNeedsConfig(t *testing.T) {
	if _, err := New(context.Background(), Options{}); err == nil {
		t.Fatal("New without a Config succeeded")
	}
}
