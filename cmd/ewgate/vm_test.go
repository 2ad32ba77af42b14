package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/ewgate/ewgate/gateway/testkit"
)

const (
	testIssuer = "https://issuer.ewgate.test"
	vmCA       = "istiod.istio-system.svc" // the name VMs dial for 15012
)

// vmTestEnv is what a standalone ewgate with VM onboarding needs from the outside: a token
// issuer's key and a serving certificate for 15012, both made here.
type vmTestEnv struct {
	dir      string
	issuer   *testkit.Issuer
	jwks     string
	roots    *x509.CertPool
	certFile string
	keyFile  string
}

func newVMTestEnv(t *testing.T) *vmTestEnv {
	t.Helper()
	e := &vmTestEnv{dir: t.TempDir(), issuer: testkit.NewIssuer(t, testIssuer)}
	e.jwks = e.issuer.JWKS(t)
	ca := testkit.NewCA(t, "15012 test CA")
	e.roots = ca.Pool()
	e.certFile, e.keyFile = ca.Server(t, vmCA).WriteFiles(t, e.dir, "tls")
	return e
}

// token is a Kubernetes-shaped service-account token for ns/sa, audience istio-ca.
func (e *vmTestEnv) token(t *testing.T, ns, sa string) string {
	t.Helper()
	return e.issuer.Token(t, ns, sa)
}

// vmClient is a VM's gRPC connection to the control endpoint at addr (closed when the test
// ends), a context for its calls (a minute at most) and that context with the VM's token and
// cluster, as pilot-agent sends them.
func (e *vmTestEnv) vmClient(t *testing.T, addr string) (*grpc.ClientConn, context.Context, context.Context) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: e.roots, ServerName: vmCA})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return cc, ctx, metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+e.token(t, "vms", "web"), "ClusterID", "cluster1")
}

// registerWebVM opens the ADS stream of VM 10.1.2.3 (network vmnet) of group vms/web on cc, as
// pilot-agent does (asVM carries its token), with labels (nil: none), and waits for the first
// response: the VM is registered by then.
func registerWebVM(t *testing.T, cc *grpc.ClientConn, asVM context.Context, labels map[string]any) {
	t.Helper()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(asVM)
	if err != nil {
		t.Fatal(err)
	}
	meta := map[string]any{"AUTO_REGISTER_GROUP": "web", "INSTANCE_IPS": "10.1.2.3", "NETWORK": "vmnet",
		"CLUSTER_ID": "cluster1", "NAMESPACE": "vms"}
	if labels != nil {
		meta["LABELS"] = labels
	}
	md, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sidecar~10.1.2.3~web-1.vms~vms.svc.cluster.local", Metadata: md}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := ads.Recv(); err != nil {
		t.Fatalf("the VM's first ADS response: %v", err)
	}
}

func (e *vmTestEnv) config() string {
	return fmt.Sprintf(`
admin: {address: 127.0.0.1:0}
listeners:
  - {name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}
xds:
  node: {network: vmnet}
control_plane:
  address: 127.0.0.1:0
  debounce: 20ms
  workload_entries_dir: %[1]s/store
  ca: {data_dir: %[1]s/ca}
authn:
  issuers:
    - issuer: %[2]s
      cluster: cluster1
      jwks: '%[3]s'
control:
  address: 127.0.0.1:0
  tls: {cert_file: %[4]s, key_file: %[5]s}
  upstreams: [{cluster: cluster1, builtin: true}]
registrar:
  instance: ewgate-test
  grace_period: 1s
workload_groups:
  - metadata: {name: web, namespace: vms}
    spec:
      metadata: {labels: {app: web}}
      template: {serviceAccount: web, ports: {http: 8080}}
services:
  - name: web
    namespace: vms
    hosts: [web.vms.svc.cluster.local]
    ports: [{number: 8080, name: http, protocol: TLS}]
    workload_selector: {labels: {app: web}}
`, e.dir, testIssuer, e.jwks, e.certFile, e.keyFile)
}

// TestStandaloneVMOnboarding runs the binary in standalone mode with VM onboarding on and plays a
// VM as pilot-agent does: the CA signs its certificate for its verified identity, its ADS stream
// registers it as a WorkloadEntry from its group, the built-in control plane turns the entry into
// an endpoint of the service that selects it (the mesh listener's route, over xDS), and when the
// VM goes the entry goes after the grace period. A VM without a valid token gets nothing.
func TestStandaloneVMOnboarding(t *testing.T) {
	env := newVMTestEnv(t)
	path := filepath.Join(env.dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(env.config()), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, path)
	admin := "http://" + p.addr(t, "admin")
	control := p.addr(t, "control")
	testkit.Eventually(t, "ready", func() bool { code, _ := httpGet(t, admin+"/healthz/ready"); return code == 200 })

	cc, ctx, asVM := env.vmClient(t, control)

	// No token: refused before anything reaches the control plane.
	webCSR, _ := testkit.CSR(t, "spiffe://cluster.local/ns/vms/sa/web")
	otherCSR, _ := testkit.CSR(t, "spiffe://cluster.local/ns/istio-system/sa/istiod")
	_, err := securityv1alpha1.NewIstioCertificateServiceClient(cc).CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: webCSR})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("CreateCertificate without a token: %v; want Unauthenticated", err)
	}
	// With the token: a certificate for the verified identity, whatever the CSR asks for.
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(cc).CreateCertificate(asVM, &securityv1alpha1.IstioCertificateRequest{
		Csr: otherCSR, ValidityDuration: 3600})
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	if id := spiffeOf(t, resp.CertChain[0]); id != "spiffe://cluster.local/ns/vms/sa/web" {
		t.Fatalf("certificate for %q; want the caller's identity", id)
	}

	registerWebVM(t, cc, asVM, map[string]any{"version": "v1"})
	const entry = "web-10.1.2.3-vmnet"
	// Registered (durable in the store's journal) before the first ADS response; its YAML file
	// is written shortly after.
	testkit.Eventually(t, "the WorkloadEntry's file in the store", func() bool {
		_, err := os.Stat(filepath.Join(env.dir, "store", "workloadentries", "vms", entry+".yaml"))
		return err == nil
	})
	if _, body := httpGet(t, admin+"/debug/registrations"); !strings.Contains(body, entry) {
		t.Fatalf("/debug/registrations does not list %s:\n%s", entry, body)
	}
	sni := "outbound_.8080_._.web.vms.svc.cluster.local"
	testkit.Eventually(t, "the VM as an endpoint of the mesh route", func() bool {
		_, body := httpGet(t, admin+"/debug/routes")
		return strings.Contains(body, sni) && strings.Contains(body, "10.1.2.3:8080")
	})

	// The VM goes (closing its connection ends its stream): after the grace period its entry
	// and its endpoint go.
	cc.Close()
	testkit.Eventually(t, "entry deleted after the grace period", func() bool {
		_, err := os.Stat(filepath.Join(env.dir, "store", "workloadentries", "vms", entry+".yaml"))
		return os.IsNotExist(err)
	})
	testkit.Eventually(t, "endpoint removed from the mesh route", func() bool {
		_, body := httpGet(t, admin+"/debug/routes")
		return !strings.Contains(body, "10.1.2.3:8080")
	})
}

func spiffeOf(t *testing.T, certPEM string) string {
	t.Helper()
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil {
		t.Fatal("no PEM in the certificate chain")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil || len(c.URIs) != 1 {
		t.Fatalf("leaf: %v, URIs %v", err, c.URIs)
	}
	return c.URIs[0].String()
}
