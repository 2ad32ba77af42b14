package scenarios

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Scenario 6, standalone, no istiod at all: ewgate runs its built-in control plane and CA, trusts
// the real apiserver's service-account tokens (OIDC discovery against the apiserver), and a real
// pilot-agent with a real istio-ca token onboards through ewgate's 15012:
//
//   - its SPIFFE certificate comes from ewgate's built-in CA (chains to <ca data_dir>/root-cert.pem,
//     which is also the workload trust root the agent writes);
//   - its ADS stream registers it: the WorkloadEntry is in the file store (Istio's name and
//     annotations) and in /debug/registrations;
//   - its proxyless grpc-go client resolves the mesh service web (LDS, RDS, CDS, EDS from the
//     built-in control plane, through the agent and 15012) and makes a working RPC: the service
//     selects the VM's group and its only endpoint is the VM's own entry (the health server
//     listens on the VM's address), so the RPC works only if the registration reached the
//     control plane; the same entry is an endpoint of the service on ewgate's mesh listener;
//   - when the agent stops, the entry is deleted after the (2 s) grace period, not before, and
//     its endpoint goes.
//
// A second service with a static endpoint sits beside the VM's: grpc-go subscribes to exactly
// the listener, route, cluster and endpoints it dials, so the built-in control plane must answer
// a request naming a subset of what it has (it did not, until this scenario found it).
//
// The root bundle given to the agent (XDS_ROOT_CA = CA_ROOT_CA) is the CA of ewgate's 15012
// serving certificate plus the built-in mesh root, which exists only once ewgate has started (it
// generates it on first start), so the agent is started after ewgate. The agent uses that bundle
// only to verify the server it dials for xDS and the CA; the serving CA is what that check needs,
// and the mesh root is there as istioctl would put it (root-cert.pem), so the same bundle keeps
// working if the serving certificate is later issued by the mesh CA instead. The workload trust
// root the agent writes comes from the CA's answer (the last certificate of the chain).
func TestStandaloneVMOnboardsWithoutIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	// The VM's own service: a gRPC health server on the VM's address (a loopback address here).
	const vmIP = "127.0.9.60"
	backend := startHealthServer(t, vmIP)
	s := startStandaloneEwgate(t, standaloneOptions{
		prefix: "standalone", clusterID: "standalone1", instance: "ewgate-e2e-standalone", webPort: backend.Port,
		registrar: "  grace_period: 2s\n",
		services: `  - name: other
    namespace: {ns}
    hosts: [other.{ns}.svc.cluster.local]
    ports: [{number: 7071, name: grpc, protocol: GRPC}]
    endpoints: [{address: 127.0.0.1, ports: {grpc: 1}, service_account: other}]
`,
	})
	ns, gw, store, webHost, meshRoot := s.ns, s.gw, s.store, s.webHost, s.meshRoot

	vm := s.vm(t, "sa1", vmIP)
	leaf, err := vm.WaitCert(harness.Context(t, 60*time.Second))
	if err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s", err, gw.Proc.Tail(40))
	}
	if want := vm.SPIFFEID("cluster.local"); len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("certificate URIs %v, want [%s]", leaf.URIs, want)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(t, meshRoot), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("workload certificate does not chain to ewgate's built-in CA root: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(vm.CertsDir, "root-cert.pem")); err != nil {
		t.Errorf("agent's root-cert.pem: %v", err)
	} else if !poolOf(t, b).Equal(poolOf(t, meshRoot)) {
		t.Errorf("the agent's workload trust root is not (only) ewgate's built-in root:\n%s", b)
	}
	// No ADS before a local xDS client connects, so nothing is registered yet.
	name := vm.AutoRegisteredName()
	if _, err := os.Stat(entryFile(store, ns, name)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("entry before any xDS client: %v", err)
	}

	// The VM's proxyless gRPC client: xds:///web...:<port> through the agent and ewgate. Its only
	// endpoint is the WorkloadEntry ewgate registers for this VM, so a working RPC needs the
	// registration too.
	target := fmt.Sprintf("%s:%d", webHost, backend.Port)
	client := vm.StartXDSClient(t, ctx, target, "health")
	if err := client.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, client.Tail(30), gw.Proc.Tail(40))
	}

	// Its ADS stream registered it (before its first response, so it is there by now).
	b, err := readEntryFile(t, entryFile(store, ns, name))
	if err != nil {
		t.Fatalf("no WorkloadEntry %s in the file store: %v", name, err)
	}
	for _, want := range []string{
		"istio.io/autoRegistrationGroup: web", "istio.io/workloadController: ewgate-e2e-standalone",
		"istio.io/connectedAt:", "address: " + vmIP, "network: vmnet", "serviceAccount: vm",
		"ewgate.io/identity: spiffe://cluster.local/ns/" + ns + "/sa/vm",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("entry %s lacks %q:\n%s", name, want, b)
		}
	}
	if regs, err := gw.Get(ctx, "/debug/registrations"); err != nil || !strings.Contains(regs, name) {
		t.Errorf("/debug/registrations does not list %s: %v\n%s", name, err, regs)
	}
	// The built-in control plane made the VM an endpoint of the service selecting its group, on
	// ewgate's own mesh listener (the gateway view, network vmnet).
	sni := fmt.Sprintf("outbound_.%d_._.%s", backend.Port, webHost)
	if err := gw.WaitRoutes(ctx, "the VM as an endpoint of "+sni, func(r string) bool {
		return strings.Contains(r, sni) && strings.Contains(r, backend.String())
	}); err != nil {
		t.Fatal(err)
	}

	// The agent goes: the entry stays for the grace period, then goes, with its endpoint. The
	// clock starts before the local client stops: the agent may end its ADS stream as soon as
	// its last local client has gone.
	stopped := time.Now()
	if err := client.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := vm.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	sawDisconnected := false
	if err := harness.Poll(harness.Context(t, 30*time.Second), 20*time.Millisecond, func() (bool, error) {
		b, err := os.ReadFile(entryFile(store, ns, name))
		if errors.Is(err, fs.ErrNotExist) {
			return true, nil
		}
		if strings.Contains(string(b), "istio.io/disconnectedAt:") {
			sawDisconnected = true
		}
		return false, errors.New("entry still there")
	}); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(stopped)
	t.Logf("entry deleted %s after the agent was told to stop (grace period 2s); disconnectedAt seen: %v", gone.Round(time.Millisecond), sawDisconnected)
	if gone < 2*time.Second {
		t.Errorf("entry deleted %s after the agent stopped, before the 2s grace period", gone)
	}
	if err := gw.WaitRoutes(ctx, "the VM's endpoint removed", func(r string) bool {
		return !strings.Contains(r, backend.String())
	}); err != nil {
		t.Fatal(err)
	}
	if regs, err := gw.Get(ctx, "/debug/registrations"); err != nil || strings.Contains(regs, name) {
		t.Errorf("/debug/registrations still lists %s: %v\n%s", name, err, regs)
	}
}
