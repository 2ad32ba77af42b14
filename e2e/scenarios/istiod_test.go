package scenarios

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// istiod is ready and has created its CA root, in istio-system and in every new namespace.
func TestIstiodReadyAndRootCert(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 60*time.Second)
	root, err := cluster.Istiod.RootCert(ctx, cluster.API, harness.IstioNamespace)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(root)
	if blk == nil {
		t.Fatalf("istio-ca-root-cert holds no PEM")
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || !ca.IsCA {
		t.Fatalf("istio-ca-root-cert: CA %v, %v", ca != nil && ca.IsCA, err)
	}
	ns := cluster.Namespace(t, "rootcert")
	again, err := cluster.Istiod.RootCert(ctx, cluster.API, ns)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(root) {
		t.Fatalf("root cert in %s differs from istio-system's", ns)
	}
}

// vmSetup makes a namespace with a service account and a WorkloadGroup, and returns the mesh root.
func vmSetup(t *testing.T, prefix string) (ns string, root []byte) {
	t.Helper()
	ctx := harness.Context(t, 60*time.Second)
	ns = cluster.Namespace(t, prefix)
	if _, err := cluster.API.CreateServiceAccount(ctx, ns, "vm"); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateWorkloadGroup(ctx, ns, "web", harness.WorkloadGroupSpec{
		ServiceAccount: "vm", Network: "vmnet", Labels: map[string]string{"app": "web"},
	}); err != nil {
		t.Fatal(err)
	}
	root, err := cluster.Istiod.RootCert(ctx, cluster.API, ns)
	if err != nil {
		t.Fatal(err)
	}
	return ns, root
}

// The baseline of the VM onboarding scenario, with no ewgate in the middle: a real pilot-agent
// with a real token gets its SPIFFE certificate from istiod, a grpc-go xDS client next to it makes
// it open ADS, and istiod auto-registers the VM as <group>-<ip>-<network>; when the VM goes away,
// istiod marks the entry disconnected and deletes it after its grace period.
func TestVMOnboardingDirectToIstiod(t *testing.T) {
	t.Parallel() // waits out a 10 s timer of a peer; independent of the other tests
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns, root := vmSetup(t, "vmdirect")
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{
		Name: "web1", Namespace: ns, ServiceAccount: "vm", Group: "web",
		IP: "127.0.9.10", Network: "vmnet", ClusterID: cluster.Istiod.ClusterID,
		Token: tok, RootPEM: root,
		DiscoveryAddr: cluster.Istiod.SecureAddr, SAN: cluster.Istiod.SAN,
	})
	leaf, err := vm.WaitCert(harness.Context(t, 60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := vm.SPIFFEID("cluster.local")
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("certificate URIs %v, want [%s]", leaf.URIs, want)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(t, root), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("workload certificate does not chain to the mesh root: %v", err)
	}
	// The agent's status server binds all interfaces; the harness makes that bind fail (see
	// harness.VMOptions), so the agent listens on nothing beyond loopback.
	if err := vm.Proc.WaitLog(harness.Context(t, 30*time.Second), "Error listening on status port"); err != nil {
		t.Fatal(err)
	}
	assertLoopbackOnly(t, vm.Proc)
	// No ADS before a local xDS client connects: nothing is registered yet.
	if l, err := cluster.API.ListWorkloadEntries(ctx, ns); err != nil || len(l) != 0 {
		t.Fatalf("entries before any xDS client: %d %v", len(l), err)
	}

	client := vm.StartXDSClient(t, ctx, "web."+ns+".svc.cluster.local:8080", "")
	name := vm.AutoRegisteredName()
	if name != "web-127.0.9.10-vmnet" {
		t.Fatalf("name %s", name)
	}
	we, err := waitConnectedEntry(t, ns, name, "", 60*time.Second)
	if err != nil {
		t.Fatalf("%v\n---- xds client ----\n%s", err, client.Tail(30))
	}
	checkWebEntry(t, ctx, ns, we, "127.0.9.10")
	if n := istiodStreams(t, "web1."+ns+"-"); n != 1 {
		t.Errorf("istiod holds %d ADS streams of the VM, want 1", n)
	}

	// The VM goes away: disconnectedAt, then deletion after the grace period (10 s by default).
	stopVMAndWaitEntryGone(t, vm, client, ns, name, 60*time.Second)
	if n := istiodStreams(t, "web1."+ns+"-"); n != 0 {
		t.Errorf("istiod still holds %d ADS streams of the stopped VM", n)
	}
}

// istiodStreams counts istiod's ADS streams whose connection id starts with prefix
// (<POD_NAME>.<namespace>-).
func istiodStreams(t *testing.T, prefix string) int {
	t.Helper()
	conns, err := cluster.Istiod.Connections(harness.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range conns {
		if strings.HasPrefix(c.ConnectionID, prefix) {
			n++
		}
	}
	return n
}

// A token for another audience gets no certificate: istiod's TokenReview refuses it.
func TestVMWrongAudienceRefused(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 2*time.Minute)
	ns, root := vmSetup(t, "vmaud")
	tok, err := cluster.API.Token(ctx, ns, "vm", time.Hour, "not-istio-ca")
	if err != nil {
		t.Fatal(err)
	}
	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{
		Name: "bad1", Namespace: ns, ServiceAccount: "vm", Group: "web",
		IP: "127.0.9.11", Network: "vmnet", ClusterID: cluster.Istiod.ClusterID,
		Token: tok, RootPEM: root,
		DiscoveryAddr: cluster.Istiod.SecureAddr, SAN: cluster.Istiod.SAN,
	})
	if err := vm.Proc.WaitLog(harness.Context(t, 60*time.Second), "failed to sign CSR"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(vm.Proc.Log(), "Unauthenticated") {
		t.Errorf("agent log has no Unauthenticated:\n%s", vm.Proc.Tail(20))
	}
	if _, err := os.Stat(filepath.Join(vm.CertsDir, "cert-chain.pem")); err == nil {
		t.Fatal("the agent got a certificate with a token for another audience")
	}
	if l, err := cluster.API.ListWorkloadEntries(ctx, ns); err != nil || len(l) != 0 {
		t.Fatalf("entries: %d %v", len(l), err)
	}
	if n := istiodStreams(t, "bad1."+ns+"-"); n != 0 {
		t.Fatalf("istiod holds %d ADS streams of the refused VM", n)
	}
}

func poolOf(t *testing.T, pemBytes []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pemBytes) {
		t.Fatal("no certificate in PEM")
	}
	return p
}
