package scenarios

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ewgate/ewgate/e2e/harness"
	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/kube"
	"github.com/ewgate/ewgate/registrar/registrartest"
)

// twoStores gives a scenario a fresh namespace and two kube stores on the real apiserver, one
// per replica, as two gateway processes would have.
func twoStores(t *testing.T, prefix string) registrartest.Options {
	ns := cluster.Namespace(t, prefix)
	return registrartest.Options{
		Namespace: ns, Timeout: 90 * time.Second, Logf: t.Logf,
		Stores: [2]registrar.Store{cluster.API.NewKubeStore(t, kube.Options{}), cluster.API.NewKubeStore(t, kube.Options{})},
	}
}

// TestKubeStoreHandover: a VM's entry moves from one replica to the other through the real
// apiserver: one object throughout (same UID), never deleted during the move.
func TestKubeStoreHandover(t *testing.T) {
	cluster.LogOnFailure(t)
	registrartest.Handover(t, twoStores(t, "handover"))
}

// TestKubeStoreKilledReplica: a replica dies without disconnecting; once its Lease in the
// apiserver has expired, the survivor takes over the VM it holds a stream of and deletes the
// rest after the grace period.
func TestKubeStoreKilledReplica(t *testing.T) {
	cluster.LogOnFailure(t)
	o := twoStores(t, "killed")
	registrartest.KilledReplica(t, o)
	ctx := harness.Context(t, 30*time.Second)
	l, err := cluster.API.Kube.CoordinationV1().Leases(o.Namespace).Get(ctx, "gw-a", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the dead replica's Lease: %v", err)
	}
	if l.Spec.RenewTime == nil || time.Since(l.Spec.RenewTime.Time) < registrartest.LeaseDuration {
		t.Fatalf("the dead replica's Lease was renewed after its death: %v", l.Spec.RenewTime)
	}
}

// TestKubeStoreChurn: 200 VMs connect and disconnect at random on two replicas (each with its
// own client and cache) for a bounded time; the apiserver ends with exactly the entries of the
// VMs still connected.
func TestKubeStoreChurn(t *testing.T) {
	cluster.LogOnFailure(t)
	o := twoStores(t, "churn")
	res := registrartest.Churn(t, o, registrartest.ChurnOptions{VMs: 200, Ops: 2000, Budget: 60 * time.Second, Rate: 100, Seed: 2026})
	if res.Ops < 500 {
		t.Fatalf("only %d operations within the budget", res.Ops)
	}
	// The caches agreed with the fleet; so does the apiserver itself.
	list, err := cluster.API.ListWorkloadEntries(harness.Context(t, 30*time.Second), o.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range list {
		names = append(names, e.GetName())
	}
	slices.Sort(names)
	if !slices.Equal(names, res.Connected) {
		t.Fatalf("apiserver holds %d entries, %d VMs connected", len(names), len(res.Connected))
	}
	t.Logf("churn on the kube store: %d operations in %s, %d entries for %d connected VMs, converged %s after the last operation",
		res.Ops, res.Random.Round(time.Millisecond), len(names), len(res.Connected), res.Converged.Round(time.Millisecond))
}

// TestKubeStoreRegistrationRate measures registrations per second (connect until the entry is
// written to the apiserver and seen by the replica's cache) with the kube store.
func TestKubeStoreRegistrationRate(t *testing.T) {
	cluster.LogOnFailure(t)
	o := twoStores(t, "rate")
	registrartest.PutGroup(t, o)
	const n = 300
	seq := registrartest.RegisterRate(t, o, o.Stores[0], "gw-seq", 0, n, 1)
	par := registrartest.RegisterRate(t, o, o.Stores[1], "gw-par", n, n, 64)
	list, err := cluster.API.ListWorkloadEntries(harness.Context(t, 30*time.Second), o.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2*n {
		t.Fatalf("%d entries in the apiserver, want %d", len(list), 2*n)
	}
	t.Logf("kube store registrations: %.0f/s one at a time, %.0f/s with 64 VMs connecting at once (%d each)", seq, par, n)
}
