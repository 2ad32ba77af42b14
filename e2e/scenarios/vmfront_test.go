package scenarios

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Helpers of the scenarios that put ewgate's VM control endpoint (15012) between a real
// pilot-agent and a control plane (standalone_test.go, badvms_test.go).

// controlSAN is the name ewgate's 15012 serving certificate carries and the agents check
// (ISTIOD_SAN): the name a VM dials for istiod, as istioctl's hosts file maps it to the gateway.
const controlSAN = "istiod.istio-system.svc"

// agentUsesDiscoveryAddrForCA unsets CA_ADDR (the harness sets it; the last value of a variable
// wins): pilot-agent checks ISTIOD_SAN in the CA's certificate only when CA_ADDR is unset and the
// CA is reached at the discovery address. With CA_ADDR set it checks the host of CA_ADDR, here an
// IP, which a serving certificate made for istiod.istio-system.svc does not name ("cannot validate
// certificate for 127.0.0.1 because it doesn't contain any IP SANs"). istioctl's cluster.env
// names the host (istiod.istio-system.svc:15012, mapped to the gateway by /etc/hosts), so real
// VMs do not meet this; VMs given an IP address for CA_ADDR do.
var agentUsesDiscoveryAddrForCA = []string{"CA_ADDR="}

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
func bundle(pems ...[]byte) []byte {
	var b []byte
	for _, p := range pems {
		b = append(b, p...)
		if len(p) > 0 && p[len(p)-1] != '\n' {
			b = append(b, '\n')
		}
	}
	return b
}

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

// yamlQuote quotes s for a YAML flow scalar.
func yamlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// assertNoCert fails t if the agent wrote a workload certificate.
func assertNoCert(t *testing.T, vm *harness.VM) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(vm.CertsDir, "cert-chain.pem")); err == nil {
		t.Errorf("VM %s got a workload certificate", vm.Opts.Name)
	}
}

// frontOfIstiod is an ewgate whose VM control endpoint forwards the shared istiod's cluster to
// istiod (identity forward), with the registrar writing to the real apiserver (the Kubernetes
// store): the mesh set-up of docs/vm-onboarding.md.
type frontOfIstiod struct {
	gw        *harness.Ewgate
	control   string // ewgate's 15012 (host:port)
	roots     []byte // what the VMs trust: ewgate's serving CA + the mesh root
	servingCA []byte // the CA of ewgate's 15012 serving certificate
	meshRoot  []byte
	instance  string // registrar.instance: the workloadController of ewgate's entries
}

// startFrontOfIstiod starts that ewgate and waits until it holds the apiserver issuer's keys.
// registrar adds lines to its registrar section (e.g. lease and sweep timings).
func startFrontOfIstiod(t *testing.T, rootNS, instance string, registrar ...string) *frontOfIstiod {
	t.Helper()
	return startFrontOfIstiodAt(t, freeAddr(t), rootNS, instance, registrar...)
}

// startFrontOfIstiodAt is startFrontOfIstiod with its VM control endpoint on control.
func startFrontOfIstiodAt(t *testing.T, control, rootNS, instance string, registrar ...string) *frontOfIstiod {
	t.Helper()
	ctx := harness.Context(t, 60*time.Second)
	meshRoot, err := cluster.Istiod.RootCert(ctx, cluster.API, rootNS)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serving, err := harness.NewControlServingCert(dir, controlSAN)
	if err != nil {
		t.Fatal(err)
	}
	rootFile := writeTemp(t, dir, "istiod-root.pem", meshRoot)
	admin, mesh := freeAddr(t), freeAddr(t)
	gw := harness.StartEwgate(t, admin, fmt.Sprintf(`
admin: {address: %[1]s}
listeners:
  - {name: mesh, kind: mesh, address: %[2]s}
kubernetes: {kubeconfig: %[3]s}
authn:
  issuers:
    - issuer: %[4]s
      cluster: %[5]s
      discovery_url: %[6]s
      ca_file: %[7]s
control:
  address: %[8]s
  tls: {cert_file: %[9]s, key_file: %[10]s}
  upstreams:
    - cluster: %[5]s
      address: %[11]s
      ca_file: %[12]s
      server_name: %[13]s
      identity: forward
registrar:
  instance: %[14]s
  grace_period: 2s
%[15]s`, admin, mesh, yamlQuote(cluster.API.Kubeconfig),
		yamlQuote(cluster.API.Issuer), cluster.Istiod.ClusterID, yamlQuote(cluster.API.URL), yamlQuote(cluster.API.CAFile),
		control, yamlQuote(serving.CertFile), yamlQuote(serving.KeyFile),
		cluster.Istiod.SecureAddr, yamlQuote(rootFile), cluster.Istiod.SAN, instance, registrarLines(registrar)))
	waitIssuer(t, ctx, gw, false)
	return &frontOfIstiod{gw: gw, control: control, roots: bundle(serving.CA.CertPEM, meshRoot),
		servingCA: serving.CA.CertPEM, meshRoot: meshRoot, instance: instance}
}

// vm starts a pilot-agent pointed at this ewgate, trusting ewgate's serving CA and the mesh root.
func (f *frontOfIstiod) vm(t *testing.T, o harness.VMOptions) *harness.VM {
	t.Helper()
	o.RootPEM, o.DiscoveryAddr, o.SAN = f.roots, f.control, controlSAN
	if o.ClusterID == "" {
		o.ClusterID = cluster.Istiod.ClusterID
	}
	if o.Network == "" {
		o.Network = "vmnet"
	}
	o.Env = append(o.Env, agentUsesDiscoveryAddrForCA...)
	return harness.StartVM(t, cluster.Peers.PilotAgent(), o)
}

// metric reads one sum of ewgate's metrics.
func (f *frontOfIstiod) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m, err := f.gw.Metrics(harness.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return harness.MetricSum(m, name, labels...)
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

func registrarLines(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

// waitIssuer waits until ewgate's VM-token issuer has its key set (ewgate_authn_issuer_ready)
// and, with ready, until ewgate reports ready too.
func waitIssuer(t *testing.T, ctx context.Context, gw *harness.Ewgate, ready bool) {
	t.Helper()
	if err := gw.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		if ready {
			if _, err := gw.Get(ctx, "/healthz/ready"); err != nil {
				return err
			}
		}
		m, err := gw.Metrics(ctx)
		if err != nil {
			return err
		}
		if harness.MetricSum(m, "ewgate_authn_issuer_ready") != 1 {
			return errors.New("the VM-token issuer has no key set yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
