package scenarios

import (
	"crypto/x509"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Scenario 3, VM onboarding through ewgate to a real istiod: a real pilot-agent pointed at
// ewgate's 15012 with a real token (the WorkloadGroup, its service account and a ServiceEntry live
// in the real apiserver, as in TestVMOnboardingDirectToIstiod without ewgate):
//
//   - gets its SPIFFE certificate from istiod (the CA call forwarded with the VM's own token,
//     identity forward): it chains to istiod's mesh root;
//   - its grpc-go xDS client makes the agent open ADS through ewgate to istiod, resolves the
//     ServiceEntry's host (istiod's grpc generator) and makes a working RPC to a loopback backend;
//     istiod holds the VM's ADS stream;
//   - ewgate, not istiod, registered the VM: the WorkloadEntry in the apiserver has Istio's name
//     and annotations with ewgate's replica as istio.io/workloadController, and istiod's own
//     auto-registration counted nothing (ewgate removes AUTO_REGISTER_GROUP before forwarding);
//   - the agent stops: istio.io/disconnectedAt, then the entry is deleted after ewgate's grace
//     period (2 s) and istiod no longer holds the stream.
//
// The agent trusts a bundle of ewgate's 15012 serving CA and the mesh root (XDS_ROOT_CA and
// CA_ROOT_CA): it verifies ewgate's certificate with the first; the second is the root istioctl
// gives VMs anyway, and the workload certificate from istiod chains to it. Having ewgate's
// serving certificate signed by the mesh CA would need istiod's CA key outside istiod.
func TestVMOnboardingThroughEwgateToIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns, root := vmSetup(t, "vmewgate")
	backend, host := echoService(t, ctx, ns, "")
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	front := startFrontOfIstiod(t, ns, "ewgate-e2e-onboard")
	istiodRegistered := istiodMetric(t, "auto_registration_success_total")

	vm := front.vm(t, harness.VMOptions{Name: "via1", Namespace: ns, ServiceAccount: "vm", Group: "web", IP: "127.0.9.70", Token: tok})
	leaf, err := vm.WaitCert(harness.Context(t, 60*time.Second))
	if err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s", err, front.Gw.Proc.Tail(40))
	}
	if want := vm.SPIFFEID("cluster.local"); len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("certificate URIs %v, want [%s]", leaf.URIs, want)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(t, root), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("workload certificate does not chain to istiod's mesh root: %v", err)
	}

	client := vm.StartXDSClient(t, ctx, host+":"+strconv.Itoa(backend.Port), "health")
	if err := client.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, client.Tail(30), front.Gw.Proc.Tail(40))
	}
	if n := istiodStreams(t, "via1."+ns+"-"); n != 1 {
		t.Errorf("istiod holds %d ADS streams of the VM, want 1 (through ewgate)", n)
	}

	name := vm.AutoRegisteredName()
	we, err := waitConnectedEntry(t, ns, name, front.Instance, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkWebEntry(t, ctx, ns, we, "127.0.9.70")
	if id := we.GetAnnotations()["ewgate.io/identity"]; id != vm.SPIFFEID("cluster.local") {
		t.Errorf("ewgate.io/identity %q", id)
	}
	if d := istiodMetric(t, "auto_registration_success_total") - istiodRegistered; d != 0 {
		t.Errorf("istiod auto-registered %v VMs itself while the VM came through ewgate", d)
	}

	// The VM goes: disconnectedAt, then deletion after ewgate's grace period.
	stopVMAndWaitEntryGone(t, vm, client, ns, name, 30*time.Second)
	if err := harness.Poll(harness.Context(t, 30*time.Second), 100*time.Millisecond, func() (bool, error) {
		n := istiodStreams(t, "via1."+ns+"-")
		return n == 0, fmt.Errorf("istiod still holds %d ADS streams of the stopped VM", n)
	}); err != nil {
		t.Error(err)
	}
}
