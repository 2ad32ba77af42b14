package scenarios

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// standalone is a standalone ewgate for real pilot-agents, with no istiod: its built-in control
// plane and CA, the registrar on a file store, authn trusting the real apiserver's tokens (OIDC
// discovery), a WorkloadGroup web (service account vm, label app: web) and a service web that
// selects it, in a namespace of its own with the service account vm.
type standalone struct {
	gw      *harness.Ewgate
	ns      string
	webHost string
	control string // the 15012 address
	mesh    string // the mesh listener's address
	store   string // the registrar's file store
	// roots is what the agent trusts for xDS and the CA: the CA of ewgate's 15012 serving
	// certificate plus the built-in mesh root. The mesh root exists only once ewgate has started
	// (it is generated on first start), so agents start after ewgate.
	roots     []byte
	meshRoot  []byte
	token     string // a real istio-ca token of ns/vm
	clusterID string
	// config renders the config file with further services (YAML list items; {ns} stands for
	// the namespace), for reloads.
	config func(services string) string
}

type standaloneOptions struct {
	prefix    string // of the namespace
	clusterID string // ewgate's name for the apiserver's cluster; VMs must say the same
	instance  string // registrar.instance
	webPort   int    // the web service's port (the VM's gRPC health server)
	// Extra YAML lines, indented as they go: under registrar:, under control_plane:, inside the
	// web service, and further services; {ns} stands for the namespace.
	registrar, controlPlane, webService, services string
	groupSpec                                     string        // extra lines inside the web group's spec (6 spaces)
	reloadEvery                                   time.Duration // reload.watch_interval; zero: the default
}

func startStandaloneEwgate(t *testing.T, o standaloneOptions) *standalone {
	t.Helper()
	ctx := harness.Context(t, 2*time.Minute)
	s := &standalone{ns: cluster.Namespace(t, o.prefix), clusterID: o.clusterID}
	if _, err := cluster.API.CreateServiceAccount(ctx, s.ns, "vm"); err != nil {
		t.Fatal(err)
	}
	var err error
	if s.token, err = cluster.API.IstioToken(ctx, s.ns, "vm"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serving, err := harness.NewControlServingCert(dir, controlSAN)
	if err != nil {
		t.Fatal(err)
	}
	s.webHost = "web." + s.ns + ".svc.cluster.local"
	s.store = filepath.Join(dir, "store")
	caDir := filepath.Join(dir, "ca")
	admin, mesh, cp := freeAddr(t), freeAddr(t), freeAddr(t)
	s.mesh = mesh
	s.control = freeAddr(t)
	reload := ""
	if o.reloadEvery > 0 {
		reload = fmt.Sprintf("reload: {watch_interval: %s}\n", o.reloadEvery)
	}
	s.config = func(services string) string {
		return fmt.Sprintf(`
admin: {address: %[1]s}
%[2]slisteners:
  - {name: mesh, kind: mesh, address: %[3]s, routes_from: xds}
xds:
  node: {network: vmnet}
control_plane:
  address: %[4]s
  debounce: 20ms
  workload_entries_dir: %[5]s
  ca: {data_dir: %[6]s}
%[7]sauthn:
  issuers:
    - issuer: %[8]s
      cluster: %[9]s
      discovery_url: %[10]s
      ca_file: %[11]s
control:
  address: %[12]s
  tls: {cert_file: %[13]s, key_file: %[14]s}
  upstreams: [{cluster: %[9]s, builtin: true}]
registrar:
  instance: %[15]s
%[16]sworkload_groups:
  - metadata: {name: web, namespace: %[17]s}
    spec:
      metadata: {labels: {app: web}}
      template: {serviceAccount: vm, ports: {grpc: %[18]d}}
%[22]sservices:
  - name: web
    namespace: %[17]s
    hosts: [%[19]s]
    ports: [{number: %[18]d, name: grpc, protocol: GRPC}]
    workload_selector: {labels: {app: web}}
%[20]s%[21]s`, admin, reload, mesh, cp, yamlQuote(s.store), yamlQuote(caDir), o.controlPlane,
			yamlQuote(cluster.API.Issuer), o.clusterID, yamlQuote(cluster.API.URL), yamlQuote(cluster.API.CAFile),
			s.control, yamlQuote(serving.CertFile), yamlQuote(serving.KeyFile), o.instance, o.registrar,
			s.ns, o.webPort, s.webHost, o.webService, strings.ReplaceAll(services, "{ns}", s.ns), o.groupSpec)
	}
	s.gw = harness.StartEwgate(t, admin, s.config(o.services))
	// Ready once the mesh listener has its first table from the built-in control plane and the
	// issuer's keys were fetched by discovery from the apiserver.
	waitIssuer(t, ctx, s.gw, true)
	if s.meshRoot, err = harness.ReadFileWait(ctx, s.gw.Proc, filepath.Join(caDir, "root-cert.pem")); err != nil {
		t.Fatal(err)
	}
	s.roots = bundle(serving.CA.CertPEM, s.meshRoot)
	return s
}

// vm starts a real pilot-agent of group web (service account vm) pointed at this ewgate.
func (s *standalone) vm(t *testing.T, name, ip string, env ...string) *harness.VM {
	t.Helper()
	return harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{
		Name: name, Namespace: s.ns, ServiceAccount: "vm", Group: "web",
		IP: ip, Network: "vmnet", ClusterID: s.clusterID,
		Token: s.token, RootPEM: s.roots,
		DiscoveryAddr: s.control, SAN: controlSAN,
		Env: append(append([]string(nil), agentUsesDiscoveryAddrForCA...), env...),
	})
}
