package scenarios

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
