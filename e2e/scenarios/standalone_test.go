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
	ns := cluster.Namespace(t, "standalone")
	if _, err := cluster.API.CreateServiceAccount(ctx, ns, "vm"); err != nil {
		t.Fatal(err)
	}
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	serving, err := harness.NewControlServingCert(dir, controlSAN)
	if err != nil {
		t.Fatal(err)
	}
	// The VM's own service: a gRPC health server on the VM's address (a loopback address here).
	const vmIP = "127.0.9.60"
	backend := startHealthServer(t, vmIP)
	const clusterID = "standalone1" // ewgate's name for the apiserver's cluster; the VM must say the same
	webHost := "web." + ns + ".svc.cluster.local"
	store, caDir := filepath.Join(dir, "store"), filepath.Join(dir, "ca")
	admin, mesh, cp, control := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	gw := harness.StartEwgate(t, admin, fmt.Sprintf(`
admin: {address: %[1]s}
listeners:
  - {name: mesh, kind: mesh, address: %[2]s, routes_from: xds}
xds:
  node: {network: vmnet}
control_plane:
  address: %[3]s
  debounce: 20ms
  workload_entries_dir: %[4]s
  ca: {data_dir: %[5]s}
authn:
  issuers:
    - issuer: %[6]s
      cluster: %[7]s
      discovery_url: %[8]s
      ca_file: %[9]s
control:
  address: %[10]s
  tls: {cert_file: %[11]s, key_file: %[12]s}
  upstreams: [{cluster: %[7]s, builtin: true}]
registrar:
  instance: ewgate-e2e-standalone
  grace_period: 2s
workload_groups:
  - metadata: {name: web, namespace: %[13]s}
    spec:
      metadata: {labels: {app: web}}
      template: {serviceAccount: vm, ports: {grpc: %[15]d}}
services:
  - name: web
    namespace: %[13]s
    hosts: [%[14]s]
    ports: [{number: %[15]d, name: grpc, protocol: GRPC}]
    workload_selector: {labels: {app: web}}
  - name: other
    namespace: %[13]s
    hosts: [other.%[13]s.svc.cluster.local]
    ports: [{number: 7071, name: grpc, protocol: GRPC}]
    endpoints: [{address: 127.0.0.1, ports: {grpc: 1}, service_account: other}]
`, admin, mesh, cp, yamlQuote(store), yamlQuote(caDir),
		yamlQuote(cluster.API.Issuer), clusterID, yamlQuote(cluster.API.URL), yamlQuote(cluster.API.CAFile),
		control, yamlQuote(serving.CertFile), yamlQuote(serving.KeyFile),
		ns, webHost, backend.Port))

	// ewgate is ready once its mesh listener has its first snapshot from the built-in control
	// plane and the issuer's keys were fetched by discovery from the apiserver.
	if err := gw.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		_, err := gw.Get(ctx, "/healthz/ready")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := gw.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		m, err := gw.Metrics(ctx)
		if err != nil {
			return err
		}
		if harness.MetricSum(m, "ewgate_authn_issuer_ready") != 1 {
			return errors.New("the apiserver's issuer has no key set yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	meshRoot, err := harness.ReadFileWait(ctx, gw.Proc, filepath.Join(caDir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}

	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{
		Name: "sa1", Namespace: ns, ServiceAccount: "vm", Group: "web",
		IP: vmIP, Network: "vmnet", ClusterID: clusterID,
		Token: tok, RootPEM: bundle(serving.CA.CertPEM, meshRoot),
		DiscoveryAddr: control, SAN: controlSAN,
		Env: agentUsesDiscoveryAddrForCA,
	})
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
	b, err := os.ReadFile(entryFile(store, ns, name))
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

	// The agent goes: the entry stays for the grace period, then goes, with its endpoint.
	if err := client.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
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
