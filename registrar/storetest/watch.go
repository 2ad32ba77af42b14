package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ewgate/ewgate/registrar"
)

type seen struct {
	typ  registrar.EventType
	name string
	rv   string
}

func (s seen) String() string { return fmt.Sprintf("%s %s", s.typ, s.name) }

// next reads one event or fails after Timeout.
func next(t *testing.T, ch <-chan registrar.Event[*registrar.WorkloadEntry]) seen {
	t.Helper()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch closed early")
		}
		return seen{ev.Type, ev.Object.Name, ev.Object.ResourceVersion}
	case <-timer.C:
		t.Fatalf("no watch event within %s", Timeout)
	}
	return seen{}
}

func expect(t *testing.T, ch <-chan registrar.Event[*registrar.WorkloadEntry], want ...string) []seen {
	t.Helper()
	var got []seen
	for i, w := range want {
		s := next(t, ch)
		got = append(got, s)
		if s.String() != w {
			t.Fatalf("event %d: got %q, want %q (so far %v)", i, s, w, got)
		}
	}
	return got
}

func testWatchOrder(t *testing.T, s registrar.Store) {
	es := s.WorkloadEntries()
	_, rv, err := es.List(ctx(t), Namespaces[0], registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := es.Watch(ctx(t), Namespaces[0], rv)
	if err != nil {
		t.Fatal(err)
	}
	x := mustCreate(t, s, Entry(Namespaces[0], "x"))
	x.Labels["v"] = "2"
	x, err = es.Update(ctx(t), x)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, Entry(Namespaces[0], "y"))
	if err := es.Delete(ctx(t), x.Namespace, x.Name, registrar.Preconditions{}); err != nil {
		t.Fatal(err)
	}
	got := expect(t, ch, "ADDED x", "MODIFIED x", "ADDED y", "DELETED x")
	if got[1].rv != x.ResourceVersion {
		t.Fatalf("MODIFIED carries resourceVersion %s, update returned %s", got[1].rv, x.ResourceVersion)
	}
	for i := 1; i < len(got); i++ {
		if got[i].rv == got[i-1].rv {
			t.Fatalf("events %d and %d share resourceVersion %s", i-1, i, got[i].rv)
		}
	}
}

// testWatchFromList: changes made between a List and the Watch from its resourceVersion are
// delivered, and none from before the List.
func testWatchFromList(t *testing.T, s registrar.Store) {
	es := s.WorkloadEntries()
	mustCreate(t, s, Entry(Namespaces[0], "before"))
	items, rv, err := es.List(ctx(t), Namespaces[0], registrar.ListOptions{})
	if err != nil || len(items) != 1 {
		t.Fatalf("list: %d items, %v", len(items), err)
	}
	mustCreate(t, s, Entry(Namespaces[0], "between"))
	ch, err := es.Watch(ctx(t), Namespaces[0], rv)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, Entry(Namespaces[0], "after"))
	expect(t, ch, "ADDED between", "ADDED after")
}

func testWatchNamespace(t *testing.T, s registrar.Store) {
	es := s.WorkloadEntries()
	_, rv, err := es.List(ctx(t), "", registrar.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	one, err := es.Watch(ctx(t), Namespaces[1], rv)
	if err != nil {
		t.Fatal(err)
	}
	all, err := es.Watch(ctx(t), "", rv)
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, Entry(Namespaces[0], "in-a"))
	mustCreate(t, s, Entry(Namespaces[1], "in-b"))
	expect(t, one, "ADDED in-b")
	var got []string
	for len(got) < 2 { // a shared API server may carry other namespaces' events
		ev := next(t, all)
		if ev.name == "in-a" || ev.name == "in-b" {
			got = append(got, ev.name)
		}
	}
	if got[0] != "in-a" || got[1] != "in-b" {
		t.Fatalf("all-namespace watch saw %v, want [in-a in-b]", got)
	}
	// Groups are a separate resource: an entry write is never seen by a group watch.
	gch, err := s.WorkloadGroups().Watch(ctx(t), Namespaces[1], "")
	if err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, Entry(Namespaces[1], "in-b-2"))
	if _, err := s.WorkloadGroups().Create(ctx(t), Group(Namespaces[1], "g")); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-gch:
		if ev.Object == nil || ev.Object.Name != "g" || ev.Type != registrar.Added {
			t.Fatalf("group watch: got %s %v, want ADDED g", ev.Type, ev.Object)
		}
	case <-time.After(Timeout):
		t.Fatal("no group event")
	}
}

func testWatchEnds(t *testing.T, s registrar.Store) {
	c, cancel := context.WithCancel(ctx(t))
	ch, err := s.WorkloadEntries().Watch(c, Namespaces[0], "")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	timer := time.NewTimer(Timeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timer.C:
			t.Fatal("watch channel not closed after its context ended")
		}
	}
}
