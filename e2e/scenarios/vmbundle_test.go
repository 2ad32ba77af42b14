package scenarios

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// The scenarios of this file start a real pilot-agent from nothing but the bundle `ewgate
// vm-config` wrote, set up as Istio's VM packaging sets up istioctl's bundle (harness.VMOptions
// Bundle, harness/vmbundle.go): cluster.env parsed as istio-start.sh sources it, with the
// variables the script adds (PROV_CERT, OUTPUT_CERTS, INSTANCE_IP=ISTIO_SVC_IP, POD_NAME,
// POD_NAMESPACE=ISTIO_NAMESPACE, its default PROXY_CONFIG); mesh.yaml at etc/istio/config/mesh
// (pilot-agent's --meshConfig default); root-cert.pem at etc/certs/root-cert.pem; istio-token at
// var/run/secrets/tokens/istio-token; hosts appended to a copy of the machine's /etc/hosts that is
// bind-mounted over /etc/hosts in the agent's private mount namespace, so the discovery address
// of mesh.yaml and the CA_ADDR of cluster.env (istiod.istio-system.svc:15012) reach ewgate on a
// loopback address of its own, port 15012. The agent's working directory plays the VM's "/"
// (Istio's packaging names all these paths relative, ./etc/certs, and systemd starts it in /).
//
// What differs from a VM of its own, all for running several agents on one machine without
// Envoy: DISABLE_ENVOY=true (the workload is a proxyless gRPC client on the agent's xDS socket),
// statusPort in PROXY_CONFIG (a loopback port the harness holds, see harness.StartVM), and
// DNS_PROXY_ADDR on a free loopback port (the bundle turns DNS capture on; the agent's default
// localhost:15053 would be shared).

// loopbackWithPort returns "127.a.b.c:port" for a loopback address on which port is free now: a
// bundle names ewgate's address (its hosts file) with the default control port 15012, so each
// test's ewgate needs an address of its own rather than a free port.
func loopbackWithPort(t *testing.T, port int) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		ip := net.IPv4(127, byte(100+rand.IntN(100)), byte(rand.IntN(256)), byte(1+rand.IntN(254)))
		addr := net.JoinHostPort(ip.String(), strconv.Itoa(port))
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatalf("no loopback address with port %d free", port)
	return ""
}

// vmConfig runs `ewgate vm-config` with args and returns the bundle directory it wrote.
func vmConfig(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "bundle")
	cmd := exec.CommandContext(ctx, harness.EwgateBinary(t), append([]string{"vm-config", "--out", out}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ewgate vm-config: %v\n%s", err, stderr.String())
	}
	return out
}

// checkBundleVM checks what the agent made of the bundle: its identity and address came from
// cluster.env, its workload certificate (in OUTPUT_CERTS) is for the group's service account and
// chains to meshRoot, the trust root it wrote is meshRoot, the bundle's root-cert.pem (ewgate's
// serving CA and the mesh root, where cluster.env's XDS_ROOT_CA names it) is as vm-config wrote
// it, and the machine's
// own /etc/hosts does not map the istiod name (only the agent's mount namespace did).
func checkBundleVM(t *testing.T, vm *harness.VM, bundleDir, ns, vmIP string, meshRoot, etcHosts []byte) {
	t.Helper()
	o := vm.Opts
	if o.Namespace != ns || o.ServiceAccount != "vm" || o.Group != "web" || o.IP != vmIP || o.Network != "vmnet" {
		t.Errorf("the VM from cluster.env: %+v", o)
	}
	leaf, err := vm.WaitCert(harness.Context(t, 60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if want := vm.SPIFFEID("cluster.local"); len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("certificate URIs %v, want [%s]", leaf.URIs, want)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(t, meshRoot), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("workload certificate does not chain to the mesh root: %v", err)
	}
	// The agent writes key.pem, cert-chain.pem, then root-cert.pem.
	if b, err := harness.ReadFileWait(harness.Context(t, 10*time.Second), vm.Proc, filepath.Join(vm.CertsDir, "root-cert.pem")); err != nil || !poolOf(t, b).Equal(poolOf(t, meshRoot)) {
		t.Errorf("the workload trust root the agent wrote is not the mesh root (%v):\n%s", err, b)
	}
	want, _ := os.ReadFile(filepath.Join(bundleDir, "root-cert.pem"))
	if b, err := os.ReadFile(vm.RootFile); err != nil || !bytes.Equal(b, want) {
		t.Errorf("the bundle's root-cert.pem at %s changed (%v): the agent verifies ewgate with it", vm.RootFile, err)
	}
	if now, err := os.ReadFile("/etc/hosts"); err != nil || !bytes.Equal(now, etcHosts) || bytes.Contains(now, []byte(controlSAN)) {
		t.Errorf("the machine's /etc/hosts changed or maps %s (%v)", controlSAN, err)
	}
}

// Scenario (a), under istiod: the WorkloadGroup, its service account and a ServiceEntry in the
// real apiserver, ewgate in front of istiod (startFrontOfIstiodAt) on 127.x.y.z:15012, and a
// bundle from `ewgate vm-config --kubeconfig ... --group ns/web` (a TokenRequest token, the mesh
// root from istiod's istio-ca-root-cert plus ewgate's serving CA). The agent started from the
// bundle alone gets its certificate from istiod through ewgate, its grpc-go client resolves the
// ServiceEntry through the agent's ADS stream to istiod (one stream at istiod) and makes an RPC,
// ewgate writes the WorkloadEntry, and when the VM stops the entry is deleted after ewgate's
// grace period.
func TestVMConfigBundleThroughEwgateToIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	etcHosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	ns, root := vmSetup(t, "vmbundle")
	backend, host := echoService(t, ctx, ns, "")
	control := loopbackWithPort(t, 15012)
	front := startFrontOfIstiodAt(t, control, ns, "ewgate-e2e-bundle")
	ewgateIP, _, _ := net.SplitHostPort(control)
	const vmIP = "127.0.9.80"
	bundleDir := vmConfig(t, ctx, "--kubeconfig", cluster.API.Kubeconfig, "--group", ns+"/web",
		"--ewgate-address", ewgateIP, "--serving-ca", writeTemp(t, t.TempDir(), "serving-ca.pem", front.ServingCA),
		"--internal-ip", vmIP, "--cluster-id", cluster.Istiod.ClusterID)

	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{Name: "bundle1", Bundle: bundleDir})
	checkBundleVM(t, vm, bundleDir, ns, vmIP, root, etcHosts)
	// No ADS before a local xDS client connects, so nothing is registered yet.
	if l, err := cluster.API.ListWorkloadEntries(ctx, ns); err != nil || len(l) != 0 {
		t.Fatalf("entries before any xDS client: %d %v", len(l), err)
	}

	client := vm.StartXDSClient(t, ctx, host+":"+strconv.Itoa(backend.Port), "health")
	if err := client.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, client.Tail(30), front.Gw.Proc.Tail(40))
	}
	if n := istiodStreams(t, "bundle1."+ns+"-"); n != 1 {
		t.Errorf("istiod holds %d ADS streams of the VM, want 1 (through ewgate)", n)
	}
	name := vm.AutoRegisteredName()
	we, err := waitConnectedEntry(t, ns, name, front.Instance, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	checkWebEntry(t, ctx, ns, we, vmIP)
	if id := we.GetAnnotations()["ewgate.io/identity"]; id != vm.SPIFFEID("cluster.local") {
		t.Errorf("ewgate.io/identity %q", id)
	}

	stopVMAndWaitEntryGone(t, vm, client, ns, name, 30*time.Second)
}

// Scenario (b), standalone, no Kubernetes: ewgate's config names the WorkloadGroup, its built-in
// CA (data_dir) and control plane, and an authn issuer for the tokens `ewgate vm-config` signs
// (jwks_file in --token-key-dir). The operator writes that config, runs `ewgate vm-config
// --config` (which signs the token and takes the mesh root from the built-in CA) and starts
// `ewgate serve` on the same config. The agent started from the bundle alone gets its
// certificate from ewgate's CA, registers (the entry in the file store), its grpc-go client
// resolves the service that selects the group, whose only endpoint is the VM's own entry, and
// makes an RPC to the VM's health server; when the VM stops, the entry is deleted after the
// grace period.
func TestVMConfigBundleStandalone(t *testing.T) {
	ctx := harness.Context(t, 3*time.Minute)
	etcHosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	const ns, vmIP = bundleNS, "127.0.9.90"
	bs := prepareBundleStandalone(t, ctx, vmIP, bundleStandaloneOptions{instance: "ewgate-e2e-bundle-standalone", gracePeriod: "2s"})
	store, caDir, bundleDir, webHost, backend := bs.store, bs.caDir, bs.bundleDir, bs.webHost, bs.backend

	gw := harness.StartEwgate(t, bs.admin, bs.config)
	waitIssuer(t, ctx, gw, true)
	meshRoot, err := os.ReadFile(filepath.Join(caDir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}

	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{Name: "bundle2", Bundle: bundleDir})
	checkBundleVM(t, vm, bundleDir, ns, vmIP, meshRoot, etcHosts)
	if vm.Opts.ClusterID != "standalone1" {
		t.Errorf("ISTIO_META_CLUSTER_ID %q, want the builtin upstream's cluster", vm.Opts.ClusterID)
	}
	name := vm.AutoRegisteredName()
	if _, err := os.Stat(entryFile(store, ns, name)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("entry before any xDS client: %v", err)
	}

	client := vm.StartXDSClient(t, ctx, fmt.Sprintf("%s:%d", webHost, backend.Port), "health")
	if err := client.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, client.Tail(30), gw.Proc.Tail(40))
	}
	b, err := readEntryFile(t, entryFile(store, ns, name))
	if err != nil {
		t.Fatalf("no WorkloadEntry %s in the file store: %v", name, err)
	}
	if err := harness.ContainsAll(string(b), "istio.io/autoRegistrationGroup: web",
		"istio.io/workloadController: ewgate-e2e-bundle-standalone", "istio.io/connectedAt:", "address: "+vmIP,
		"network: vmnet", "serviceAccount: vm", "ewgate.io/identity: "+vm.SPIFFEID("cluster.local")); err != nil {
		t.Errorf("entry %s: %v\n%s", name, err, b)
	}

	if err := client.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := vm.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(harness.Context(t, 30*time.Second), 50*time.Millisecond, func() (bool, error) {
		_, err := os.Stat(entryFile(store, ns, name))
		return errors.Is(err, fs.ErrNotExist), fmt.Errorf("entry %s still in the store (%v)", name, err)
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(gw.Proc.Log(), "authentication failed") {
		t.Errorf("ewgate refused a call of the VM:\n%s", gw.Proc.Tail(40))
	}
}

// bundleTokenIssuer is the issuer of the tokens `ewgate vm-config` signs for a standalone ewgate.
const bundleTokenIssuer = "https://ewgate.local/vm-tokens"

// bundleStandalone is a standalone ewgate (built-in control plane and CA, file store, VM tokens it
// signs itself) with a VM bundle written by `ewgate vm-config` before its first start, for the
// service web.vms backed by a gRPC health server on the VM's address.
type bundleStandalone struct {
	config, admin   string
	store, caDir    string
	keyDir, webHost string
	bundleDir       string
	backend         *net.TCPAddr
}

// bundleStandaloneOptions: the registrar's instance and grace period, and extra lines in the
// top level, under authn: and under control: (indented as they go).
type bundleStandaloneOptions struct {
	instance, gracePeriod   string
	top, authn, controlKeys string
}

const bundleNS = "vms"

func prepareBundleStandalone(t *testing.T, ctx context.Context, vmIP string, o bundleStandaloneOptions) *bundleStandalone {
	t.Helper()
	backend := startHealthServer(t, vmIP)
	dir := t.TempDir()
	serving, err := harness.NewControlServingCert(dir, controlSAN)
	if err != nil {
		t.Fatal(err)
	}
	control := loopbackWithPort(t, 15012)
	ewgateIP, _, _ := net.SplitHostPort(control)
	s := &bundleStandalone{admin: freeAddr(t), store: filepath.Join(dir, "store"), caDir: filepath.Join(dir, "ca"),
		keyDir: filepath.Join(dir, "vm-tokens"), webHost: "web." + bundleNS + ".svc.cluster.local", backend: backend}
	s.config = fmt.Sprintf(`
admin: {address: %[1]s}
%[14]slisteners:
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
    - issuer: %[13]s
      cluster: standalone1
      jwks_file: %[6]s
%[15]scontrol:
  address: %[7]s
  tls: {cert_file: %[8]s, key_file: %[9]s}
%[16]s  upstreams: [{cluster: standalone1, builtin: true}]
registrar:
  instance: %[17]s
  grace_period: %[18]s
workload_groups:
  - metadata: {name: web, namespace: %[10]s}
    spec:
      metadata: {labels: {app: web}}
      template: {serviceAccount: vm, ports: {grpc: %[11]d}}
services:
  - name: web
    namespace: %[10]s
    hosts: [%[12]s]
    ports: [{number: %[11]d, name: grpc, protocol: GRPC}]
    workload_selector: {labels: {app: web}}
`, s.admin, freeAddr(t), freeAddr(t), yamlQuote(s.store), yamlQuote(s.caDir), yamlQuote(filepath.Join(s.keyDir, "vm-token-jwks.json")),
		control, yamlQuote(serving.CertFile), yamlQuote(serving.KeyFile), bundleNS, backend.Port, s.webHost, bundleTokenIssuer,
		o.top, o.authn, o.controlKeys, o.instance, o.gracePeriod)
	configFile := writeTemp(t, dir, "ewgate.yaml", []byte(s.config))
	s.bundleDir = vmConfig(t, ctx, "--config", configFile, "--group", bundleNS+"/web", "--ewgate-address", ewgateIP,
		"--serving-ca", writeTemp(t, dir, "serving-ca.pem", serving.CA.CertPEM), "--internal-ip", vmIP,
		"--token-key-dir", s.keyDir)
	return s
}
