package multicluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// One VM front for two clusters, with apiserver-B out of reach when ewgate starts (its
// kubeconfig names a loopback address nothing listens on yet). ewgate starts anyway: it logs the
// store out of reach, /healthz/control says degraded, a VM of A is onboarded as usual, and a VM
// of B is refused with Unavailable naming its cluster's store. Once the address forwards to
// apiserver-B, ewgate reaches the store by itself (no restart), /healthz/control turns 200, and
// a VM of B is onboarded in B.
func TestVMFrontStoreReachedLate(t *testing.T) {
	mc.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns := mc.Namespace(t, "latestore")
	groups, tokens := vmClusters(t, ctx, ns)
	lateB, openB := mc.B.API.LateKubeconfig(t)
	front := harness.StartVMFront(t, mc.A.Peers.PilotAgent(), harness.VMFrontOptions{
		Clusters: frontedClusters(), Instance: "ewgate-e2e-latestore",
		Config: func(v map[string]string) string {
			v["B_KUBECONFIG"] = lateB
			return harness.DocBlock(t, "multicluster.md", "vm-front", v)
		},
	})
	if err := front.Gw.Proc.WaitLog(harness.Context(t, 30*time.Second), "registration store out of reach at start"); err != nil {
		t.Fatalf("%v\n%s", err, front.Gw.Proc.Tail(20))
	}
	if body, err := front.Gw.Get(ctx, "/healthz/control"); err == nil || !strings.Contains(body, "degraded") {
		t.Fatalf("/healthz/control with apiserver-B out of reach: %q, %v; want 503 degraded", body, err)
	}

	t.Run("vm of cluster-a", func(t *testing.T) {
		vm := front.StartVM(t, harness.VMOptions{Name: "vm0", Namespace: ns, ServiceAccount: "vm",
			Group: groups[mc.A], IP: "127.0.10.30", Network: mc.A.Network, ClusterID: mc.A.ID, Token: tokens[mc.A]})
		onboardedIn(t, ctx, front, vm, mc.A)
	})
	t.Run("vm of cluster-b refused", func(t *testing.T) {
		vm := front.StartVM(t, harness.VMOptions{Name: "early1", Namespace: ns, ServiceAccount: "vm",
			Group: groups[mc.B], IP: "127.0.10.31", Network: mc.B.Network, ClusterID: mc.B.ID, Token: tokens[mc.B]})
		vm.StartXDSClient(t, ctx, fmt.Sprintf("vm-b.%s.svc.cluster.local:%d", ns, vmPort), "")
		words := `the registration store of cluster "cluster-b" has not been reached yet`
		if err := vm.Proc.WaitLog(harness.Context(t, 60*time.Second), words); err != nil {
			t.Fatalf("%v\n---- agent ----\n%s\n---- ewgate ----\n%s", err, vm.Proc.Tail(20), front.Gw.Proc.Tail(20))
		}
		for _, l := range strings.Split(vm.Proc.Log(), "\n") {
			if strings.Contains(l, words) {
				t.Logf("early1's agent: %s", l)
				if !strings.Contains(l, "code = Unavailable") {
					t.Errorf("the refusal is not Unavailable: %s", l)
				}
				break
			}
		}
		if n := streams(t, mc.B, "early1."+ns+"-"); n != 0 {
			t.Errorf("istiod %s holds %d ADS streams of a VM ewgate could not register", mc.B.ID, n)
		}
	})

	openB()
	if err := front.Gw.Proc.WaitLog(harness.Context(t, 90*time.Second), "registration store reached"); err != nil {
		t.Fatalf("%v\n%s", err, front.Gw.Proc.Tail(20))
	}
	if err := harness.Poll(harness.Context(t, 30*time.Second), 100*time.Millisecond, func() (bool, error) {
		body, err := front.Gw.Get(ctx, "/healthz/control")
		return err == nil, fmt.Errorf("/healthz/control: %q, %v", body, err)
	}); err != nil {
		t.Fatal(err)
	}
	t.Run("vm of cluster-b once reached", func(t *testing.T) {
		vm := front.StartVM(t, harness.VMOptions{Name: "late1", Namespace: ns, ServiceAccount: "vm",
			Group: groups[mc.B], IP: "127.0.10.32", Network: mc.B.Network, ClusterID: mc.B.ID, Token: tokens[mc.B]})
		onboardedIn(t, ctx, front, vm, mc.B)
	})
}
