package registrar_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewgate/ewgate/registrar"
)

// faultyStore fails entry creates while failing is positive, as an unavailable API server would.
type faultyStore struct {
	registrar.Store
	entries *faultyEntries
}

type faultyEntries struct {
	registrar.Resource[*registrar.WorkloadEntry]
	mu      sync.Mutex
	failing int
	tries   int
}

func (s *faultyStore) WorkloadEntries() registrar.Resource[*registrar.WorkloadEntry] {
	return s.entries
}

func (f *faultyEntries) Create(ctx context.Context, e *registrar.WorkloadEntry) (*registrar.WorkloadEntry, error) {
	f.mu.Lock()
	f.tries++
	fail := f.failing != 0
	if f.failing > 0 {
		f.failing--
	}
	f.mu.Unlock()
	if fail {
		return nil, errors.New("injected: connection refused")
	}
	return f.Resource.Create(ctx, e)
}

func (f *faultyEntries) attempts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tries
}

func newFaultyEnv(t *testing.T, failing int) (*env, *faultyEntries) {
	e := newEnv(t)
	f := &faultyEntries{Resource: e.store.WorkloadEntries(), failing: failing}
	e.store = &faultyStore{Store: e.store, entries: f}
	return e, f
}

// TestRetryUntilWritten: failed writes back off exponentially (100ms, 200ms, 400ms, ...) and the
// registration lands once the store answers. The store fails six times: more than the immediate
// attempts that events cause without any time passing (the connect, the first listings of the
// group and entry watches), so only the backoff, on the fake clock, can get the entry written.
func TestRetryUntilWritten(t *testing.T) {
	const failing = 6
	e, f := newFaultyEnv(t, failing)
	reg := prometheus.NewRegistry()
	r, err := registrar.New(registrar.Config{Instance: "gw-a"}, registrar.Options{Store: e.store, Clock: e.clock, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	g := e.run(r)
	s := g.connect(t, request(1, "10.0.0.1"))
	g.settle(t)
	select {
	case <-s.Registered():
		t.Fatalf("registered while the store fails (%d attempts)", f.attempts())
	default:
	}
	// The remaining failures back off 100ms, 200ms, 400ms, ... (exact delays: TestQueueBackoff).
	e.advanceUntil("registered after retries", 10*time.Millisecond, 10*time.Second, func() bool {
		return e.entry(entry1) != nil
	}, g)
	// The failures and then a success; an event after the success may add one more attempt.
	n := f.attempts()
	if n < failing+1 || n > failing+2 {
		t.Fatalf("%d attempts, want %d or %d", n, failing+1, failing+2)
	}
	registered(t, s)
	if regs := g.Registrations(); regs[0].State != "registered" || regs[0].LastError != "" {
		t.Fatalf("registration %+v", regs[0])
	}
	if v := value(t, reg, "ewgate_registrar_errors_total", "store"); v != float64(n-1) {
		t.Fatalf("errors_total{reason=store} = %v, want %d", v, n-1)
	}
}

// TestRetryStopsOnDisconnect: a VM that leaves while its entry cannot be written is forgotten.
func TestRetryStopsOnDisconnect(t *testing.T) {
	e, f := newFaultyEnv(t, -1) // fails forever
	g := e.start("gw-a")
	s := g.connect(t, request(1, "10.0.0.1"))
	e.advance(time.Second, 100*time.Millisecond, g)
	if regs := g.Registrations(); len(regs) != 1 || !strings.Contains(regs[0].LastError, "injected") {
		t.Fatalf("registrations %+v", regs)
	}
	s.Close()
	g.settle(t)
	before := f.attempts()
	e.advance(time.Minute, time.Second, g)
	if f.attempts() != before || len(g.Registrations()) != 0 {
		t.Fatalf("still retrying after disconnect: %d -> %d attempts, %d registrations", before, f.attempts(), len(g.Registrations()))
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	r, err := registrar.New(registrar.Config{Instance: "gw-a"}, registrar.Options{Store: e.store, Clock: e.clock, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	g := e.run(r)
	s := g.connect(t, request(1, "10.0.0.1"))
	registered(t, s)
	bad := request(2, "10.0.0.2")
	bad.Node.AutoRegisterGroup = "nope"
	if _, err := g.Connect(t.Context(), bad); err == nil {
		t.Fatal("connect to a missing group accepted")
	}
	if v := value(t, reg, "ewgate_registrar_entries_owned", ""); v != 1 {
		t.Fatalf("entries_owned %v", v)
	}
	s.Close()
	g.settle(t)
	e.advance(11*time.Second, time.Second, g)
	want := map[string]float64{
		"ewgate_registrar_registrations_total": 1, "ewgate_registrar_disconnects_total": 1,
		"ewgate_registrar_deletes_total": 1, "ewgate_registrar_takeovers_total": 0,
		"ewgate_registrar_entries_owned": 0,
	}
	for name, v := range want {
		if got := value(t, reg, name, ""); got != v {
			t.Errorf("%s = %v, want %v", name, got, v)
		}
	}
	if got := value(t, reg, "ewgate_registrar_errors_total", "group_not_found"); got != 1 {
		t.Errorf("errors_total{group_not_found} = %v", got)
	}
	if got := value(t, reg, "ewgate_registrar_reconciles_total", "created"); got != 1 {
		t.Errorf("reconciles_total{created} = %v", got)
	}
}

// run starts an already built registrar like env.start does.
func (e *env) run(r *registrar.Registrar) *rig {
	ctx, cancel := context.WithCancel(context.Background())
	g := &rig{Registrar: r, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		_ = r.Run(ctx)
	}()
	e.t.Cleanup(g.stop)
	return g
}

// value reads one series from reg: by name, and by the value of its only label if label is set.
// A labelled family with no series yet reads 0.
func value(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" || len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
		return 0
	}
	if label != "" {
		return 0
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
