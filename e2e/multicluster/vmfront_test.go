package multicluster

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ewgate/ewgate/e2e/harness"
)

// vmPort is the port of each cluster's VM service (vm-a, vm-b): nothing dials it, istiod-A/B
// only list the VM's address on it.
const vmPort = 8080

// Scenario 2, one VM front for two clusters. One ewgate (host network, loopback) with an issuer
// per cluster (apiserver-A and -B, cluster-a / cluster-b), an upstream per cluster (istiod-A and
// -B's 15012, TLS to the shared root, identity forward) and a registration store per cluster
// (kubernetes.clusters, each the cluster's apiserver). Each cluster has, in the same namespace,
// a service account vm, a WorkloadGroup of its own (vm-a in A only, vm-b in B only, created in
// that apiserver, not by ewgate) and a ServiceEntry selecting the group's labels.
//
//   - A VM of B (token of apiserver-B, CLUSTER_ID cluster-b, group vm-b) gets its certificate
//     from istiod-B (signed by B's intermediate, to the shared root), its ADS stream is held by
//     istiod-B and by no other, its WorkloadEntry is in apiserver-B and not in A, and an Envoy
//     sidecar of net-b asking istiod-B for the ServiceEntry gets the VM's address. A VM of A:
//     the same in A.
//   - Refused, and neither istiod sees the refused part: a B token claiming cluster-a, and a VM
//     of B naming a group that exists only in A. See the subtest.
func TestVMFrontTwoClusters(t *testing.T) {
	mc.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns := mc.Namespace(t, "vmfront")
	groups, tokens := vmClusters(t, ctx, ns)
	front := harness.StartVMFront(t, mc.A.Peers.PilotAgent(), harness.VMFrontOptions{
		Clusters: frontedClusters(), Instance: "ewgate-e2e-vmfront2",
		Config: func(v map[string]string) string { return harness.DocBlock(t, "multicluster.md", "vm-front", v) },
	})
	t.Logf("ewgate config:\n%s", front.Config)

	for i, m := range []*harness.Member{mc.B, mc.A} {
		t.Run("vm of "+m.ID, func(t *testing.T) {
			vm := front.StartVM(t, harness.VMOptions{Name: fmt.Sprintf("vm%d", i), Namespace: ns, ServiceAccount: "vm",
				Group: groups[m], IP: fmt.Sprintf("127.0.10.%d", 10+i), Network: m.Network, ClusterID: m.ID, Token: tokens[m]})
			onboardedIn(t, ctx, front, vm, m)
		})
	}

	t.Run("refused", func(t *testing.T) {
		refusedVMs(t, ctx, front, ns, tokens[mc.B])
	})
}

// vmClusters makes, in namespace ns of each cluster, the service accounts vm and observer, the
// cluster's WorkloadGroup (vm-a in A, vm-b in B: groups[m], created in that apiserver, not by
// ewgate) and a ServiceEntry selecting the group's labels; it returns the groups and each
// cluster's token of vm.
func vmClusters(t *testing.T, ctx context.Context, ns string) (groups, tokens map[*harness.Member]string) {
	t.Helper()
	groups = map[*harness.Member]string{mc.A: "vm-a", mc.B: "vm-b"}
	tokens = map[*harness.Member]string{}
	for _, m := range mc.Members() {
		for _, sa := range []string{"vm", "observer"} {
			if _, err := m.API.CreateServiceAccount(ctx, ns, sa); err != nil {
				t.Fatal(err)
			}
		}
		g := groups[m]
		if _, err := m.API.CreateWorkloadGroup(ctx, ns, g, harness.WorkloadGroupSpec{
			ServiceAccount: "vm", Network: m.Network, Labels: map[string]string{"app": g},
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := m.API.CreateServiceEntry(ctx, ns, g, map[string]any{
			"hosts": []any{g + "." + ns + ".svc.cluster.local"}, "location": "MESH_INTERNAL", "resolution": "STATIC",
			"ports":            []any{map[string]any{"number": int64(vmPort), "name": "tcp", "protocol": "TCP"}},
			"workloadSelector": map[string]any{"labels": map[string]any{"app": g}},
		}); err != nil {
			t.Fatal(err)
		}
		tok, err := m.API.IstioToken(ctx, ns, "vm")
		if err != nil {
			t.Fatal(err)
		}
		tokens[m] = tok
	}
	return groups, tokens
}

// frontedClusters are both clusters as a VM front sees them, each with its istiod under the
// shared root.
func frontedClusters() []harness.FrontedCluster {
	var out []harness.FrontedCluster
	for _, m := range mc.Members() {
		out = append(out, harness.FrontedCluster{ID: m.ID, API: m.API, Istiod: m.Istiod, IstiodRoot: mc.RootPEM})
	}
	return out
}

// onboardedIn checks that vm, of cluster m, went only to m: its certificate from m's istiod,
// its ADS stream and WorkloadEntry in m alone, and m's mesh listing it.
func onboardedIn(t *testing.T, ctx context.Context, front *harness.VMFront, vm *harness.VM, m *harness.Member) {
	t.Helper()
	other := mc.Other(m)
	leaf, err := vm.WaitCert(harness.Context(t, 60*time.Second))
	if err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s", err, front.Gw.Proc.Tail(40))
	}
	if want := vm.SPIFFEID(harness.TrustDomain); len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("certificate URIs %v, want [%s]", leaf.URIs, want)
	}
	// Issued by m's intermediate (istiod-m's plug-in CA), which chains to the shared root; not
	// by the other cluster's.
	inter := x509.NewCertPool()
	inter.AddCert(m.CA.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: mc.RootPool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the VM's certificate does not chain through %s's intermediate to the shared root: %v", m.ID, err)
	}
	if leaf.CheckSignatureFrom(other.CA.Cert) == nil {
		t.Fatalf("the VM's certificate is signed by %s's intermediate", other.ID)
	}

	// The agent opens ADS once a local xDS client connects.
	host := vm.Opts.Group + "." + vm.Opts.Namespace + ".svc.cluster.local"
	client := vm.StartXDSClient(t, ctx, fmt.Sprintf("%s:%d", host, vmPort), "")
	name := vm.AutoRegisteredName()
	if _, err := m.API.WaitWorkloadEntry(harness.Context(t, 60*time.Second), vm.Opts.Namespace, name, func(u *unstructured.Unstructured) error {
		ann := u.GetAnnotations()
		if ann["istio.io/connectedAt"] == "" || ann["istio.io/workloadController"] != front.Instance {
			return fmt.Errorf("controller %q, connectedAt %q", ann["istio.io/workloadController"], ann["istio.io/connectedAt"])
		}
		if spec, _ := u.Object["spec"].(map[string]any); spec["address"] != vm.Opts.IP || spec["network"] != m.Network {
			return fmt.Errorf("spec %v", spec)
		}
		return nil
	}); err != nil {
		t.Fatalf("WorkloadEntry %s/%s in %s: %v\n---- xds client ----\n%s\n---- ewgate ----\n%s", vm.Opts.Namespace, name, m.ID, err, client.Tail(20), front.Gw.Proc.Tail(40))
	}
	if _, err := other.API.GetWorkloadEntry(ctx, vm.Opts.Namespace, name); !apierrors.IsNotFound(err) {
		t.Errorf("WorkloadEntry %s/%s in %s: %v, want not found", vm.Opts.Namespace, name, other.ID, err)
	}
	prefix := vm.Opts.Name + "." + vm.Opts.Namespace + "-"
	if err := harness.Poll(harness.Context(t, 30*time.Second), 100*time.Millisecond, func() (bool, error) {
		n := streams(t, m, prefix)
		return n == 1, fmt.Errorf("istiod %s holds %d ADS streams of the VM, want 1", m.ID, n)
	}); err != nil {
		t.Fatal(err)
	}
	if n := streams(t, other, prefix); n != 0 {
		t.Errorf("istiod %s holds %d ADS streams of a VM of %s", other.ID, n, m.ID)
	}

	// m's mesh reaches the VM: a sidecar of m's network asking m's istiod for the service that
	// selects the group's labels gets the VM's address.
	obsTok, err := m.API.IstioToken(ctx, vm.Opts.Namespace, "observer")
	if err != nil {
		t.Fatal(err)
	}
	want := net.JoinHostPort(vm.Opts.IP, fmt.Sprint(vmPort))
	_, eps := sidecarView(t, ctx, m.IstiodConn(obsTok, mc.RootPool()), m, vm.Opts.Namespace, host, vmPort, func(eps []string) error {
		if !slices.Contains(eps, want) {
			return fmt.Errorf("no endpoint %s yet: %v", want, eps)
		}
		return nil
	})
	t.Logf("istiod %s to a %s sidecar: %s endpoints %v", m.ID, m.Network, host, eps)
}

// refusedVMs: two VMs of B with valid tokens of apiserver-B, refused by ewgate.
//
//  1. claim1 says CLUSTER_ID cluster-a: ewgate refuses its CSR and its ADS stream
//     (PermissionDenied "ClusterID ... does not match"), before choosing an upstream. Neither
//     istiod's CA receives a request from it, no certificate is written, no ADS stream, no entry.
//  2. elsewhere1 says CLUSTER_ID cluster-b, as it should, but names group vm-a, which exists only
//     in A. Its identity is valid, so its CSR does reach istiod-B and it gets a certificate (an
//     identity may have one); istiod-A receives nothing. Its ADS stream is refused by ewgate
//     (FailedPrecondition "no WorkloadGroup ..."), looked up in B's store alone: no ADS stream in
//     either istiod, no WorkloadEntry in either cluster.
func refusedVMs(t *testing.T, ctx context.Context, front *harness.VMFront, ns, tokB string) {
	a, b := mc.A, mc.B
	csr0 := map[*harness.Member]float64{a: istiodMetric(t, a, "citadel_server_csr_count"), b: istiodMetric(t, b, "citadel_server_csr_count")}
	authFail0 := map[*harness.Member]float64{a: istiodMetric(t, a, "citadel_server_authentication_failure_count"), b: istiodMetric(t, b, "citadel_server_authentication_failure_count")}

	claim := front.StartVM(t, harness.VMOptions{Name: "claim1", Namespace: ns, ServiceAccount: "vm", Group: "vm-a",
		IP: "127.0.10.20", Network: a.Network, ClusterID: a.ID, Token: tokB})
	elsewhere := front.StartVM(t, harness.VMOptions{Name: "elsewhere1", Namespace: ns, ServiceAccount: "vm", Group: "vm-a",
		IP: "127.0.10.21", Network: b.Network, ClusterID: b.ID, Token: tokB})
	if _, err := elsewhere.WaitCert(harness.Context(t, 60*time.Second)); err != nil {
		t.Fatalf("elsewhere1 (a valid identity of %s) got no certificate: %v", b.ID, err)
	}
	for _, vm := range []*harness.VM{claim, elsewhere} {
		// The agent writes its gRPC bootstrap with or without a certificate; its xDS client
		// makes it try ADS.
		vm.StartXDSClient(t, ctx, "vm-a."+ns+".svc.cluster.local:8080", "")
	}
	for _, c := range []struct {
		vm          *harness.VM
		code, words string
	}{
		{claim, "PermissionDenied", `ClusterID "cluster-a" does not match the cluster "cluster-b"`},
		{elsewhere, "FailedPrecondition", `no WorkloadGroup "vm-a" in namespace "` + ns + `" of cluster "cluster-b"`},
	} {
		if err := c.vm.Proc.WaitLog(harness.Context(t, 60*time.Second), c.words); err != nil {
			t.Fatalf("%s: %v\n---- agent ----\n%s\n---- ewgate ----\n%s", c.vm.Opts.Name, err, c.vm.Proc.Tail(20), front.Gw.Proc.Tail(30))
		}
		for _, l := range strings.Split(c.vm.Proc.Log(), "\n") {
			if strings.Contains(l, c.words) {
				t.Logf("%s's agent: %s", c.vm.Opts.Name, l)
				if !strings.Contains(l, c.code) {
					t.Errorf("%s: the refusal is not %s: %s", c.vm.Opts.Name, c.code, l)
				}
				break
			}
		}
	}
	// claim1's CSR and ADS attempts were both refused at authentication.
	if err := front.Gw.Proc.WaitFor(harness.Context(t, 30*time.Second), 100*time.Millisecond, func() error {
		if n := front.Metric(t, "ewgate_control_auth_total", `result="cluster_mismatch"`); n < 2 {
			return fmt.Errorf("ewgate refused %v calls as cluster_mismatch, want claim1's CSR and ADS", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := front.Metric(t, "ewgate_control_streams_total", `method="ads"`, `result="FailedPrecondition"`); n < 1 {
		t.Errorf("ewgate counted %v ADS streams refused as FailedPrecondition, want elsewhere1's", n)
	}
	if _, err := os.Stat(filepath.Join(claim.CertsDir, "cert-chain.pem")); err == nil {
		t.Errorf("claim1 got a workload certificate")
	}
	for _, m := range mc.Members() {
		for _, vm := range []*harness.VM{claim, elsewhere} {
			if n := streams(t, m, vm.Opts.Name+"."+ns+"-"); n != 0 {
				t.Errorf("istiod %s holds %d ADS streams of %s", m.ID, n, vm.Opts.Name)
			}
		}
		l, err := m.API.ListWorkloadEntries(ctx, ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, we := range l {
			if spec, _ := we.Object["spec"].(map[string]any); spec["address"] == claim.Opts.IP || spec["address"] == elsewhere.Opts.IP {
				t.Errorf("WorkloadEntry %s/%s in %s for a refused VM", ns, we.GetName(), m.ID)
			}
		}
		if d := istiodMetric(t, m, "citadel_server_authentication_failure_count") - authFail0[m]; d != 0 {
			t.Errorf("istiod %s counted %v authentication failures", m.ID, d)
		}
	}
	// Only elsewhere1's one CSR reached a CA, istiod-B's; claim1 kept retrying all along.
	if d := istiodMetric(t, a, "citadel_server_csr_count") - csr0[a]; d != 0 {
		t.Errorf("istiod %s's CA received %v requests, want 0", a.ID, d)
	}
	if d := istiodMetric(t, b, "citadel_server_csr_count") - csr0[b]; d != 1 {
		t.Errorf("istiod %s's CA received %v requests, want 1 (elsewhere1's)", b.ID, d)
	}
}

// streams counts m's istiod's ADS streams whose connection id starts with prefix
// (<POD_NAME>.<namespace>-).
func streams(t *testing.T, m *harness.Member, prefix string) int {
	t.Helper()
	conns, err := m.Istiod.Connections(harness.Context(t, 10*time.Second))
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

// istiodMetric reads one sum of m's istiod's metrics.
func istiodMetric(t *testing.T, m *harness.Member, name string, labels ...string) float64 {
	t.Helper()
	text, err := m.Istiod.Metrics(harness.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return harness.MetricSum(text, name, labels...)
}
