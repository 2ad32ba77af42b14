package registrar_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

// advanceUntil moves the clock by step until cond holds (at most limit of fake time), letting
// the registrars settle after each step. The Run loops' lease and sweep ticks run concurrently
// with the test, so the condition, not a fixed amount of fake time, ends the wait.
func (e *env) advanceUntil(what string, step, limit time.Duration, cond func() bool, rigs ...*rig) {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for passed := time.Duration(0); !cond(); passed += step {
		if passed > limit || time.Now().After(deadline) {
			names := e.entryNames()
			e.t.Fatalf("not within %s of fake time: %s (%d entries: %.10v)", limit, what, len(names), names)
		}
		e.advance(step, step, rigs...)
	}
}

// TestTwoRegistrarsRace: every VM connects to both replicas at once, with random start times;
// the newest connection owns each entry, whatever order the writes land in.
func TestTwoRegistrarsRace(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("gw-a"), e.start("gw-b")
	const vms = 40
	rng := rand.New(rand.NewPCG(1, 2))
	winner := map[string]string{}
	sessions := map[string][]*registrar.Session{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range vms {
		ip := fmt.Sprintf("10.0.1.%d", i+1)
		ta, tb := t0.Add(time.Duration(rng.IntN(1000))*time.Millisecond), t0.Add(time.Duration(rng.IntN(1000))*time.Millisecond)
		if ta.Equal(tb) {
			tb = tb.Add(time.Millisecond)
		}
		name := "web-" + ip + "-vm-net"
		winner[name] = map[bool]string{true: "gw-a", false: "gw-b"}[ta.After(tb)]
		for _, side := range []struct {
			g  *rig
			at time.Time
		}{{a, ta}, {b, tb}} {
			wg.Go(func() {
				req := request(i, ip)
				req.Time = side.at
				s := side.g.connect(t, req)
				mu.Lock()
				sessions[name] = append(sessions[name], s)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	e.advanceUntil("every entry owned by its newest connection", 50*time.Millisecond, 10*time.Second, func() bool {
		for name, w := range winner {
			got := e.entry(name)
			if got == nil || got.Annotations[registrar.AnnotationWorkloadController] != w {
				return false
			}
		}
		return true
	}, a, b)
	if n := len(e.entryNames()); n != vms {
		t.Fatalf("%d entries, want %d", n, vms)
	}
	for _, ss := range sessions {
		for _, s := range ss {
			s.Close()
		}
	}
	e.advanceUntil("all entries deleted after the grace period", time.Second, time.Minute,
		func() bool { return len(e.entryNames()) == 0 }, a, b)
}

// TestKilledRegistrarCollected: a replica dies without disconnecting its VMs. The survivor takes
// over the entry of a VM that reconnected to it, and once the dead replica's Lease has expired
// it takes over the VM it also holds an (older) stream of, and cleans the rest after the grace
// period.
func TestKilledRegistrarCollected(t *testing.T) {
	e := newEnv(t)
	a, b := e.start("gw-a"), e.start("gw-b")
	for i := 1; i <= 4; i++ {
		registered(t, a.connect(t, request(i, fmt.Sprintf("10.0.0.%d", i))))
	}
	older := request(3, "10.0.0.3")
	older.Time = t0.Add(-time.Minute) // b's stream of VM 3 predates a's
	s3 := b.connect(t, older)
	registered(t, s3)
	a.stop() // killed: no Close, no disconnectedAt
	e.clock.Advance(time.Second)
	registered(t, b.connect(t, request(1, "10.0.0.1"))) // VM 1 comes back to b: newer wins at once
	if got := e.mustEntry(entry1); got.Annotations[registrar.AnnotationWorkloadController] != "gw-b" {
		t.Fatalf("reconnected VM's entry owner %q", got.Annotations[registrar.AnnotationWorkloadController])
	}
	if got := e.mustEntry("web-10.0.0.3-vm-net"); got.Annotations[registrar.AnnotationWorkloadController] != "gw-a" {
		t.Fatal("an older stream took the entry from a live lease")
	}
	e.advanceUntil("dead replica's entries collected", 5*time.Second, 3*time.Minute, func() bool {
		names := e.entryNames()
		return len(names) == 2 && names[0] == entry1 && names[1] == "web-10.0.0.3-vm-net"
	}, b)
	if got := e.mustEntry("web-10.0.0.3-vm-net"); got.Annotations[registrar.AnnotationWorkloadController] != "gw-b" ||
		got.Annotations[registrar.AnnotationDisconnectedAt] != "" {
		t.Fatalf("VM 3 not taken over as connected: %v", got.Annotations)
	}
}

// TestRestartReconcilesOwn: a replica restarted under the same name finds the entries it owned
// and treats their VMs as disconnected as of its start; a VM that reconnects in time keeps its
// entry.
func TestRestartReconcilesOwn(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	fs := openFileStore(t, dir)
	e.store = fs
	e.putGroup(webGroup())
	a := e.start("gw-a")
	registered(t, a.connect(t, request(1, "10.0.0.1")))
	registered(t, a.connect(t, request(2, "10.0.0.2")))
	a.stop()
	_ = fs.Close()
	e.store = openFileStore(t, dir)

	e.clock.Advance(time.Minute)
	a2 := e.start("gw-a")
	testkit.Eventually(t, "own entries marked disconnected at start", func() bool {
		x, y := e.entry(entry1), e.entry(entry2)
		return x != nil && y != nil && x.Annotations[registrar.AnnotationDisconnectedAt] != "" &&
			y.Annotations[registrar.AnnotationDisconnectedAt] != ""
	})
	e.advance(5*time.Second, time.Second, a2)
	registered(t, a2.connect(t, request(2, "10.0.0.2")))
	e.advanceUntil("VM 1's entry deleted", time.Second, time.Minute,
		func() bool { return e.entry(entry1) == nil }, a2)
	e.advance(time.Minute, 5*time.Second, a2)
	if got := e.mustEntry(entry2); got.Annotations[registrar.AnnotationDisconnectedAt] != "" {
		t.Fatalf("reconnected VM's entry: %v", got.Annotations)
	}
}

func TestDeleteRateLimit(t *testing.T) {
	e := newEnv(t)
	g := e.start("gw-a") // 20 deletes/s, burst 20
	var ss []*registrar.Session
	for i := range 30 {
		ss = append(ss, g.connect(t, request(i, fmt.Sprintf("10.0.2.%d", i+1))))
	}
	for _, s := range ss {
		registered(t, s)
		s.Close()
	}
	g.settle(t)
	e.advance(10*time.Second, 10*time.Second, g)
	if n := len(e.entryNames()); n != 10 {
		t.Fatalf("%d entries left right after the grace period, want 10 (burst of 20 deleted)", n)
	}
	e.advance(250*time.Millisecond, 50*time.Millisecond, g)
	if n := len(e.entryNames()); n < 4 || n > 6 {
		t.Fatalf("%d entries left 250ms later, want about 5 at 20/s", n)
	}
	e.advance(time.Second, 50*time.Millisecond, g)
	if n := len(e.entryNames()); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}
