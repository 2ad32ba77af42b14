package registrar_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const ns = "vm-ns"

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is testkit's clock as a registrar.Clock, whose AfterFunc returns a registrar.Timer.
type clock struct{ *testkit.Clock }

func (c clock) AfterFunc(d time.Duration, f func()) registrar.Timer { return c.Clock.AfterFunc(d, f) }

// env is a store and a fake clock shared by the registrars of one test.
type env struct {
	t     *testing.T
	store registrar.Store
	clock clock
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, store: registrar.NewMemoryStore(), clock: clock{testkit.NewClock(t0)}}
	e.putGroup(webGroup())
	return e
}

func webGroup() *registrar.WorkloadGroup {
	return &registrar.WorkloadGroup{
		ObjectMeta: registrar.ObjectMeta{Name: "web", Namespace: ns},
		Spec: registrar.WorkloadGroupSpec{
			Metadata: registrar.GroupMetadata{
				Labels:      map[string]string{"app": "web", "tier": "group"},
				Annotations: map[string]string{"team": "payments"},
			},
			Template: registrar.WorkloadEntrySpec{
				Ports:          map[string]uint32{"http": 8080},
				Labels:         map[string]string{"tier": "template", "from-template": "yes"},
				ServiceAccount: "web-sa",
			},
		},
	}
}

func (e *env) putGroup(g *registrar.WorkloadGroup) *registrar.WorkloadGroup {
	e.t.Helper()
	got, err := e.store.WorkloadGroups().Create(e.t.Context(), g)
	if err != nil {
		e.t.Fatal(err)
	}
	return got
}

// rig is one running registrar.
type rig struct {
	*registrar.Registrar
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *env) start(instance string, mutate ...func(*registrar.Config)) *rig {
	e.t.Helper()
	cfg := registrar.Config{Instance: instance}
	for _, m := range mutate {
		m(&cfg)
	}
	r, err := registrar.New(cfg, registrar.Options{Store: e.store, Clock: e.clock})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &rig{Registrar: r, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		if err := r.Run(ctx); err != nil {
			e.t.Errorf("Run: %v", err)
		}
	}()
	e.t.Cleanup(g.stop)
	return g
}

// stop ends Run and waits for it: also how a test "kills" a replica (its sessions never close).
func (g *rig) stop() {
	g.cancel()
	<-g.done
}

// settle waits until the registrar's queue has nothing ready or in flight.
func (g *rig) settle(t *testing.T) {
	t.Helper()
	select {
	case <-g.Idle():
	case <-time.After(10 * time.Second):
		t.Fatal("registrar queue not idle within 10s")
	}
}

func ident() registrar.Identity {
	return registrar.Identity{Cluster: "c1", Namespace: ns, ServiceAccount: "web-sa", SPIFFEID: "spiffe://cluster.local/ns/vm-ns/sa/web-sa"}
}

// vmNode is pilot-agent's node of VM number i at ip.
func vmNode(i int, ip string) registrar.Node {
	return registrar.Node{
		ID:                fmt.Sprintf("sidecar~%s~vm-%d.%s~%s.svc.cluster.local", ip, i, ns, ns),
		AutoRegisterGroup: "web", InstanceIPs: []string{ip}, Network: "vm-net", ClusterID: "c1",
		Labels:   map[string]string{"version": "v1"},
		Locality: registrar.Locality{Region: "eu", Zone: "eu-1"},
	}
}

func request(i int, ip string) registrar.Request {
	return registrar.Request{Identity: ident(), Node: vmNode(i, ip), Source: netip.MustParseAddr("203.0.113.9")}
}

func (g *rig) connect(t *testing.T, req registrar.Request) *registrar.Session {
	t.Helper()
	s, err := g.Connect(t.Context(), req)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	return s
}

// registered waits for the session's entry to be written.
func registered(t *testing.T, s *registrar.Session) {
	t.Helper()
	select {
	case <-s.Registered():
	case <-time.After(10 * time.Second):
		t.Fatal("entry not written within 10s")
	}
}

func (e *env) entry(name string) *registrar.WorkloadEntry {
	e.t.Helper()
	got, err := e.store.WorkloadEntries().Get(e.t.Context(), ns, name)
	if errors.Is(err, registrar.ErrNotFound) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return got
}

func (e *env) mustEntry(name string) *registrar.WorkloadEntry {
	e.t.Helper()
	got := e.entry(name)
	if got == nil {
		e.t.Fatalf("entry %s missing", name)
	}
	return got
}

func (e *env) entryNames() []string {
	e.t.Helper()
	list, _, err := e.store.WorkloadEntries().List(e.t.Context(), "", registrar.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, x := range list {
		names = append(names, x.Name)
	}
	return names
}

// advance moves the clock in steps, letting the registrars finish each step's work.
func (e *env) advance(d, step time.Duration, rigs ...*rig) {
	e.t.Helper()
	for d > 0 {
		s := min(d, step)
		e.clock.Advance(s)
		d -= s
		for _, g := range rigs {
			g.settle(e.t)
		}
	}
}

const (
	entry1 = "web-10.0.0.1-vm-net"
	entry2 = "web-10.0.0.2-vm-net"
)
