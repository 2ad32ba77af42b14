package registrartest_test

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewgate/ewgate/registrar"
	"github.com/ewgate/ewgate/registrar/registrartest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The scenarios against the memory store (one store shared by both replicas) and two file
// stores would need two processes; the memory store shows the scenarios themselves are sound.
func memOptions(t *testing.T) registrartest.Options {
	return registrartest.Options{Namespace: "vm-ns", Stores: [2]registrar.Store{registrar.NewMemoryStore()}, Timeout: 20 * time.Second, Logf: t.Logf}
}

func TestHandoverMemory(t *testing.T) {
	t.Parallel()
	registrartest.Handover(t, memOptions(t))
}

func TestKilledReplicaMemory(t *testing.T) {
	t.Parallel()
	if took := registrartest.KilledReplica(t, memOptions(t)); took > 20*time.Second {
		t.Fatalf("collection took %s", took)
	}
}

func TestChurnMemory(t *testing.T) {
	t.Parallel()
	res := registrartest.Churn(t, memOptions(t), registrartest.ChurnOptions{VMs: 100, Ops: 1000, Budget: 20 * time.Second, Rate: 200, Seed: 1})
	if res.Ops < 100 {
		t.Fatalf("only %d operations", res.Ops)
	}
}

func TestRegisterRateMemory(t *testing.T) {
	t.Parallel()
	o := memOptions(t)
	registrartest.PutGroup(t, o)
	if rate := registrartest.RegisterRate(t, o, o.Stores[0], "gw-bench", 0, 200, 16); rate <= 0 {
		t.Fatalf("rate %f", rate)
	}
}
