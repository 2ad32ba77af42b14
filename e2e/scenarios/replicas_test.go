package scenarios

import (
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Scenario 7, two replicas: two ewgate processes in front of the same istiod share one apiserver
// (their registrars write WorkloadEntries and hold Leases there). A real pilot-agent VM connects
// through replica A; the same VM then connects through replica B (B's stream is the newer one)
// and its stream through A ends: there is one entry throughout (same UID, never deleted),
// ownership moves to B, and A, no longer the owner, neither disconnects nor deletes it. Then B is
// killed with SIGKILL, with the VM still pointed at it: nothing writes disconnectedAt for B, yet
// after B's Lease expires replica A treats the entry as disconnected and deletes it after the
// grace period; no entry leaks.
func TestTwoReplicasHandOverAndCleanUpAfterAKill(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns, _ := vmSetup(t, "replicas")
	backend, host := echoService(t, ctx, ns, "")
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	fast := []string{"lease_duration: 3s", "lease_renew: 1s", "sweep_interval: 1s"}
	a := startFrontOfIstiod(t, ns, "ewgate-a", fast...)
	b := startFrontOfIstiod(t, ns, "ewgate-b", fast...)
	target := host + ":" + strconv.Itoa(backend.Port)
	opts := harness.VMOptions{Name: "mover", Namespace: ns, ServiceAccount: "vm", Group: "web", IP: "127.0.9.90", Token: tok}

	// Through A.
	viaA := a.vm(t, opts)
	clientA := viaA.StartXDSClient(t, ctx, target, "health")
	if err := clientA.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- ewgate A ----\n%s", err, a.Gw.Proc.Tail(40))
	}
	name := viaA.AutoRegisteredName()
	first, err := waitConnectedEntry(t, ns, name, "ewgate-a", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	uid := first.GetUID()

	// The same VM through B; then its stream through A ends.
	viaB := b.vm(t, opts)
	clientB := viaB.StartXDSClient(t, ctx, target, "health")
	if err := clientB.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- ewgate B ----\n%s", err, b.Gw.Proc.Tail(40))
	}
	moved, err := waitConnectedEntry(t, ns, name, "ewgate-b", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if moved.GetUID() != uid {
		t.Fatal("the entry was re-created when the VM moved (new UID): want one entry throughout")
	}
	if err := clientA.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := viaA.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	// A's stream has ended. For longer than the grace period and several of A's sweeps, the entry
	// must stay as it is: B owns it, connected, same UID. (A check that nothing happens needs the
	// time to pass; it samples the entry every 250 ms.)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); <-tick.C {
		we, err := cluster.API.GetWorkloadEntry(ctx, ns, name)
		if err != nil {
			t.Fatalf("the entry went while the VM was connected through B: %v", err)
		}
		ann := we.GetAnnotations()
		if we.GetUID() != uid || ann["istio.io/workloadController"] != "ewgate-b" || ann["istio.io/disconnectedAt"] != "" {
			t.Fatalf("after A's stream ended: uid changed %v, controller %q, disconnectedAt %q",
				we.GetUID() != uid, ann["istio.io/workloadController"], ann["istio.io/disconnectedAt"])
		}
	}

	// B dies without a word; the VM keeps trying B. A collects the entry after B's Lease
	// expires and the grace period passes.
	killed := time.Now()
	if err := b.Gw.Proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cluster.API.WaitWorkloadEntryGone(harness.Context(t, 60*time.Second), ns, name); err != nil {
		t.Fatalf("the killed replica's entry leaked: %v\n---- ewgate A ----\n%s", err, a.Gw.Proc.Tail(40))
	}
	t.Logf("entry collected %s after replica B was killed (lease 3 s, grace 2 s)", time.Since(killed).Round(100*time.Millisecond))
	if l, err := cluster.API.ListWorkloadEntries(ctx, ns); err != nil || len(l) != 0 {
		t.Fatalf("%d entries left in %s (%v), want none", len(l), ns, err)
	}
}
