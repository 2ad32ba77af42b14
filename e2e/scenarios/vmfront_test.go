package scenarios

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Helpers of the scenarios that put ewgate's VM control endpoint (15012) between a real
// pilot-agent and a control plane (standalone_test.go, badvms_test.go).

// controlSAN is the name ewgate's 15012 serving certificate carries and the agents check.
const controlSAN = harness.ControlSAN

// agentUsesDiscoveryAddrForCA: see harness.AgentUsesDiscoveryAddrForCA.
var agentUsesDiscoveryAddrForCA = harness.AgentUsesDiscoveryAddrForCA

// startHealthServer is a gRPC server on ip (a loopback address) with the standard health service
// (SERVING), the backend the VM's proxyless client must reach.
// echoService starts a gRPC health server on 127.0.0.1 and publishes it as the mesh service
// echo.<ns>.svc.cluster.local (a STATIC ServiceEntry; with the VIP vip when not ""). It returns
// the server's address and the service's host name.
func echoService(t *testing.T, ctx context.Context, ns, vip string) (*net.TCPAddr, string) {
	t.Helper()
	backend := startHealthServer(t, "127.0.0.1")
	host := "echo." + ns + ".svc.cluster.local"
	spec := map[string]any{
		"hosts": []any{host}, "location": "MESH_INTERNAL", "resolution": "STATIC",
		"ports":     []any{map[string]any{"number": int64(backend.Port), "name": "grpc", "protocol": "GRPC"}},
		"endpoints": []any{map[string]any{"address": "127.0.0.1"}},
	}
	if vip != "" {
		spec["addresses"] = []any{vip}
	}
	if _, err := cluster.API.CreateServiceEntry(ctx, ns, "echo", spec); err != nil {
		t.Fatal(err)
	}
	return backend, host
}

func startHealthServer(t *testing.T, ip string) *net.TCPAddr {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().(*net.TCPAddr)
}

// bundle concatenates PEM blocks into one root bundle (XDS_ROOT_CA / CA_ROOT_CA).
var bundle = harness.PEMBundle

// writeTemp writes b into a new file in dir and returns its path.
func writeTemp(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// entryFile is where ewgate's file store keeps a WorkloadEntry.
func entryFile(store, ns, name string) string {
	return filepath.Join(store, "workloadentries", ns, name+".yaml")
}

// readEntryFile reads an entry's file in the file store, waiting up to 10 s for it: a
// registration is durable in the store's journal when it is done, and its file follows shortly.
func readEntryFile(t *testing.T, path string) ([]byte, error) {
	t.Helper()
	var b []byte
	err := harness.Poll(harness.Context(t, 10*time.Second), 20*time.Millisecond, func() (bool, error) {
		var err error
		b, err = os.ReadFile(path)
		return err == nil, err
	})
	return b, err
}

// yamlQuote quotes s for a YAML flow scalar.
var yamlQuote = harness.YAMLQuote

// assertNoCert fails t if the agent wrote a workload certificate.
func assertNoCert(t *testing.T, vm *harness.VM) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(vm.CertsDir, "cert-chain.pem")); err == nil {
		t.Errorf("VM %s got a workload certificate", vm.Opts.Name)
	}
}

// frontOfIstiod is an ewgate whose VM control endpoint forwards the shared istiod's cluster to
// istiod (identity forward), with the registrar writing to the real apiserver (the Kubernetes
// store): harness.VMFront with one cluster, the mesh set-up of docs/vm-onboarding.md.
type frontOfIstiod struct{ *harness.VMFront }

// startFrontOfIstiod starts that ewgate and waits until it holds the apiserver issuer's keys.
// registrar adds lines to its registrar section (e.g. lease and sweep timings).
func startFrontOfIstiod(t *testing.T, rootNS, instance string, registrar ...string) *frontOfIstiod {
	t.Helper()
	return startFrontOfIstiodAt(t, freeAddr(t), rootNS, instance, registrar...)
}

// startFrontOfIstiodAt is startFrontOfIstiod with its VM control endpoint on control.
func startFrontOfIstiodAt(t *testing.T, control, rootNS, instance string, registrar ...string) *frontOfIstiod {
	t.Helper()
	meshRoot, err := cluster.Istiod.RootCert(harness.Context(t, 60*time.Second), cluster.API, rootNS)
	if err != nil {
		t.Fatal(err)
	}
	return &frontOfIstiod{harness.StartVMFront(t, cluster.Peers.PilotAgent(), harness.VMFrontOptions{
		Clusters: []harness.FrontedCluster{{ID: cluster.Istiod.ClusterID, API: cluster.API, Istiod: cluster.Istiod, IstiodRoot: meshRoot}},
		Control:  control, Instance: instance, Registrar: registrar,
	})}
}

// vm starts a pilot-agent pointed at this ewgate, of the shared cluster and network vmnet unless
// o says otherwise.
func (f *frontOfIstiod) vm(t *testing.T, o harness.VMOptions) *harness.VM {
	t.Helper()
	if o.ClusterID == "" {
		o.ClusterID = cluster.Istiod.ClusterID
	}
	if o.Network == "" {
		o.Network = "vmnet"
	}
	return f.StartVM(t, o)
}

// istiodMetric reads one sum of istiod's metrics.
func istiodMetric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m, err := cluster.Istiod.Metrics(harness.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return harness.MetricSum(m, name, labels...)
}

// waitIssuer waits until ewgate's VM-token issuer has its key set and, with ready, until ewgate
// reports ready too.
func waitIssuer(t *testing.T, ctx context.Context, gw *harness.Ewgate, ready bool) {
	t.Helper()
	if err := gw.WaitIssuers(ctx, 1, ready); err != nil {
		t.Fatal(err)
	}
}
