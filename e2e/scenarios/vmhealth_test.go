package scenarios

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/anypb"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// Health from real probes (issue 20, item 3). A WorkloadGroup with a readiness probe (httpGet on
// a port of the VM, period 1 s, thresholds 1); a real pilot-agent VM that runs the probe itself
// (the probe reaches it as the proxy config's readinessProbe, as istioctl's VM bundle and ewgate
// vm-config write it) and reports HealthInformation on its ADS stream through ewgate's 15012; the
// test stops and starts the probed HTTP server. The VM's service is a separate TLS echo on the
// VM's address that never stops: when it is not reached, it is because the endpoint was taken
// out of rotation, not because it was down.

// vmHealthProbe is the WorkloadGroup's spec.probe (and the VM's readinessProbe) for port.
func vmHealthProbe(port int) map[string]any {
	return map[string]any{
		"periodSeconds": int64(1), "timeoutSeconds": int64(1),
		"failureThreshold": int64(1), "successThreshold": int64(1),
		"httpGet": map[string]any{"path": "/ready", "port": int64(port)},
	}
}

// TestVMProbeHealthThroughEwgateToIstiod: under istiod (Kubernetes store). ewgate registers the VM
// with proxy.istio.io/health-checks-enabled and writes the Healthy condition from the agent's
// reports; istiod's EDS to a second ewgate, its east-west gateway, marks the endpoint unhealthy
// and healthy again, and that ewgate stops and resumes routing to it. A second entry of the
// same service without the annotation stays routed throughout.
func TestVMProbeHealthThroughEwgateToIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	const vmIP, otherIP = "127.0.9.80", "127.0.9.81"
	probed := startProbeServer(t, vmIP)
	svc := startCountingTLSEcho(t, vmIP, 0)
	port := svc.port()
	other := startCountingTLSEcho(t, otherIP, port)

	ns := cluster.Namespace(t, "vmhealth")
	if _, err := cluster.API.CreateServiceAccount(ctx, ns, "vm"); err != nil {
		t.Fatal(err)
	}
	mtlsLabels := map[string]string{"app": "web", "security.istio.io/tlsMode": "istio"}
	if _, err := cluster.API.CreateWorkloadGroup(ctx, ns, "web", harness.WorkloadGroupSpec{
		ServiceAccount: "vm", Network: "vmnet", Labels: mtlsLabels, Probe: vmHealthProbe(probed.port),
	}); err != nil {
		t.Fatal(err)
	}
	// The entry without health checks: same labels, same service, its own address.
	if _, err := cluster.API.CreateWorkloadEntry(ctx, ns, "static", nil, map[string]any{
		"address": otherIP, "network": "vmnet", "serviceAccount": "vm", "labels": toAny(mtlsLabels),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateGateway(ctx, ns, "eastwest", harness.EastWestGateway(15443)); err != nil {
		t.Fatal(err)
	}
	host := "web." + ns + ".svc.cluster.local"
	if _, err := cluster.API.CreateServiceEntry(ctx, ns, "web", map[string]any{
		"hosts": []any{host}, "location": "MESH_INTERNAL", "resolution": "STATIC",
		"ports":            []any{map[string]any{"number": int64(port), "name": "tls", "protocol": "TLS"}},
		"workloadSelector": map[string]any{"labels": map[string]any{"app": "web"}},
	}); err != nil {
		t.Fatal(err)
	}
	sni := fmt.Sprintf("outbound_.%d_._.%s", port, host)
	edsName := fmt.Sprintf("outbound|%d||%s", port, host) // the sidecar's name of the same endpoints

	// istiod's east-west gateway: an ewgate on istiod's xDS, in the VMs' network.
	admin, mesh := freeAddr(t), freeAddr(t)
	gw := harness.StartEwgate(t, admin, fmt.Sprintf(`
admin: {address: %s}
listeners:
  - {name: mesh, kind: mesh, address: %s, routes_from: xds}
xds:
  server: %s
  node: {ip: 127.0.0.1, name: ewgate-health, namespace: istio-system, cluster_id: %s, network: vmnet, labels: {istio: eastwestgateway}}
`, admin, mesh, cluster.Istiod.XDSAddr, cluster.Istiod.ClusterID))
	if err := gw.WaitRoutes(harness.Context(t, 30*time.Second), "the static entry", routed(sni, other.addr())); err != nil {
		t.Fatal(err)
	}

	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	front := startFrontOfIstiod(t, ns, "ewgate-e2e-health")
	vm := front.vm(t, harness.VMOptions{Name: "hp1", Namespace: ns, ServiceAccount: "vm", Group: "web",
		IP: vmIP, Token: tok, ReadinessProbe: vmHealthProbe(probed.port)})
	client := vm.StartXDSClient(t, ctx, host+":"+fmt.Sprint(port), "")
	name := vm.AutoRegisteredName()
	onFail := func() string {
		return fmt.Sprintf("\n---- agent ----\n%s\n---- front ----\n%s\n---- xds client ----\n%s",
			vm.Proc.Tail(30), front.Gw.Proc.Tail(30), client.Tail(10))
	}
	health := func(want string) { t.Helper(); waitKubeEntryHealth(t, cluster.API, ns, name, want, onFail) }

	health("True")
	istiodEDS(t, ns, tok, edsName, svc.addr(), true, other.addr())
	if err := gw.WaitRoutes(harness.Context(t, 30*time.Second), "the VM healthy", routed(sni, svc.addr(), other.addr())); err != nil {
		t.Fatalf("%v%s", err, onFail())
	}
	reachBoth(t, mesh, sni, svc, other)

	probed.stop(t)
	health("False")
	// istiod leaves the unhealthy entry out of EDS altogether (it is not sent as UNHEALTHY).
	istiodEDS(t, ns, tok, edsName, svc.addr(), false, other.addr())
	if err := gw.WaitRoutes(harness.Context(t, 30*time.Second), "the VM out of rotation", func(r string) bool {
		return routed(sni, other.addr())(r) && !strings.Contains(r, svc.addr())
	}); err != nil {
		t.Fatalf("%v%s", err, onFail())
	}
	onlyOther(t, mesh, sni, svc, other)

	probed.start(t)
	health("True")
	istiodEDS(t, ns, tok, edsName, svc.addr(), true, other.addr())
	if err := gw.WaitRoutes(harness.Context(t, 30*time.Second), "the VM back in rotation", routed(sni, svc.addr(), other.addr())); err != nil {
		t.Fatalf("%v%s", err, onFail())
	}
	reachBoth(t, mesh, sni, svc, other)
	if n := front.Metric(t, "ewgate_control_health_reports_total", `result="unhealthy"`); n < 1 {
		t.Errorf("ewgate_control_health_reports_total{result=\"unhealthy\"} = %v, want >= 1", n)
	}
}

// TestVMProbeHealthStandalone: the same probe with ewgate's built-in control plane (file store):
// the entry's Healthy condition follows the agent's reports and the built-in control plane takes
// the endpoint out of ewgate's mesh listener and puts it back.
func TestVMProbeHealthStandalone(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	const vmIP = "127.0.9.82"
	probed := startProbeServer(t, vmIP)
	svc := startCountingTLSEcho(t, vmIP, 0)
	probe := fmt.Sprintf("      probe: {periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 1, successThreshold: 1, httpGet: {path: /ready, port: %d}}\n", probed.port)
	s := startStandaloneEwgate(t, standaloneOptions{
		prefix: "vmhealthsa", clusterID: "standalone-health", instance: "ewgate-e2e-health-sa", webPort: svc.port(),
		registrar: "  grace_period: 2s\n", groupSpec: probe,
	})
	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{
		Name: "hs1", Namespace: s.ns, ServiceAccount: "vm", Group: "web", IP: vmIP, Network: "vmnet",
		ClusterID: s.clusterID, Token: s.token, RootPEM: s.roots, DiscoveryAddr: s.control, SAN: controlSAN,
		Env: agentUsesDiscoveryAddrForCA, ReadinessProbe: vmHealthProbe(probed.port),
	})
	client := vm.StartXDSClient(t, ctx, fmt.Sprintf("%s:%d", s.webHost, svc.port()), "")
	file := entryFile(s.store, s.ns, vm.AutoRegisteredName())
	sni := fmt.Sprintf("outbound_.%d_._.%s", svc.port(), s.webHost)
	onFail := func() string {
		b, _ := os.ReadFile(file)
		return fmt.Sprintf("\n---- entry ----\n%s\n---- agent ----\n%s\n---- ewgate ----\n%s\n---- xds client ----\n%s",
			b, vm.Proc.Tail(30), s.gw.Proc.Tail(30), client.Tail(10))
	}
	health := func(want string) {
		t.Helper()
		if err := harness.Poll(harness.Context(t, 30*time.Second), 100*time.Millisecond, func() (bool, error) {
			b, err := os.ReadFile(file)
			if err != nil {
				return false, err
			}
			var obj map[string]any
			if err := yaml.Unmarshal(b, &obj); err != nil {
				return false, err
			}
			if ann, _ := dig(obj, "metadata", "annotations").(map[string]any); ann["proxy.istio.io/health-checks-enabled"] != "true" {
				return false, fmt.Errorf("annotations %v lack proxy.istio.io/health-checks-enabled: \"true\"", ann)
			}
			c, err := wantHealthy(obj, want)
			if err == nil {
				t.Logf("entry in the file store: Healthy condition %v", c)
			}
			return err == nil, err
		}); err != nil {
			t.Fatalf("%v%s", err, onFail())
		}
	}

	health("True")
	if err := s.gw.WaitRoutes(harness.Context(t, 30*time.Second), "the VM healthy", routed(sni, svc.addr())); err != nil {
		t.Fatalf("%v%s", err, onFail())
	}
	reachVM(t, s.mesh, sni, svc)

	probed.stop(t)
	health("False")
	if err := s.gw.WaitRoutes(harness.Context(t, 30*time.Second), "the VM out of rotation", func(r string) bool { return !strings.Contains(r, svc.addr()) }); err != nil {
		t.Fatalf("%v%s", err, onFail())
	}
	before := svc.accepted.Load()
	if c, err := tlsDial(s.mesh, sni, "istio"); err == nil {
		c.Close()
		t.Errorf("a connection for %s was routed while its only endpoint is unhealthy", sni)
	}
	if n := svc.accepted.Load(); n != before {
		t.Errorf("the unhealthy VM's service accepted %d connections through ewgate", n-before)
	}

	probed.start(t)
	health("True")
	if err := s.gw.WaitRoutes(harness.Context(t, 30*time.Second), "the VM back in rotation", routed(sni, svc.addr())); err != nil {
		t.Fatalf("%v%s", err, onFail())
	}
	reachVM(t, s.mesh, sni, svc)
}

// wantHealthy checks the object's Healthy condition status; it returns the condition.
func wantHealthy(obj map[string]any, want string) (map[string]any, error) {
	conds, _ := dig(obj, "status", "conditions").([]any)
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == "Healthy" {
			if m["status"] != want {
				return nil, fmt.Errorf("Healthy %v (%v), want %s", m["status"], m["message"], want)
			}
			return m, nil
		}
	}
	return nil, fmt.Errorf("no Healthy condition yet (want %s): %v", want, conds)
}

func dig(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, _ := v.(map[string]any)
		v = mm[k]
	}
	return v
}

func toAny(m map[string]string) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

// routed: /debug/routes has sni with every one of addrs.
func routed(sni string, addrs ...string) func(string) bool {
	return func(r string) bool {
		if !strings.Contains(r, sni) {
			return false
		}
		for _, a := range addrs {
			if !strings.Contains(r, a) {
				return false
			}
		}
		return true
	}
}

// reachBoth connects through ewgate's mesh listener until each backend has taken a connection
// (at most 40 connections: with two endpoints, missing one 40 times is a routing fault).
func reachBoth(t *testing.T, mesh, sni string, a, b *countingEcho) {
	t.Helper()
	a0, b0 := a.accepted.Load(), b.accepted.Load()
	for i := 0; i < 40 && (a.accepted.Load() == a0 || b.accepted.Load() == b0); i++ {
		c := dialMesh(t, mesh, sni, "istio")
		if got := echo(t, c, "hi"); got != "hi" {
			t.Fatalf("echo through ewgate: %q", got)
		}
		c.Close()
	}
	if a.accepted.Load() == a0 || b.accepted.Load() == b0 {
		t.Fatalf("40 connections through ewgate: %s took %d, %s took %d; want both",
			a.addr(), a.accepted.Load()-a0, b.addr(), b.accepted.Load()-b0)
	}
}

// onlyOther: 10 connections through ewgate all reach b, none a (whose service is up).
func onlyOther(t *testing.T, mesh, sni string, a, b *countingEcho) {
	t.Helper()
	a0, b0 := a.accepted.Load(), b.accepted.Load()
	for range 10 {
		c := dialMesh(t, mesh, sni, "istio")
		if got := echo(t, c, "hi"); got != "hi" {
			t.Fatalf("echo through ewgate: %q", got)
		}
		c.Close()
	}
	if a.accepted.Load() != a0 || b.accepted.Load()-b0 != 10 {
		t.Fatalf("10 connections with %s out of rotation: it took %d, %s took %d",
			a.addr(), a.accepted.Load()-a0, b.addr(), b.accepted.Load()-b0)
	}
}

// reachVM: one connection through the standalone ewgate's mesh listener reaches the VM's echo.
func reachVM(t *testing.T, mesh, sni string, svc *countingEcho) {
	t.Helper()
	before := svc.accepted.Load()
	c := dialMesh(t, mesh, sni, "istio")
	if got := echo(t, c, "hi"); got != "hi" {
		t.Fatalf("echo through ewgate: %q", got)
	}
	c.Close()
	if svc.accepted.Load() == before {
		t.Fatalf("the connection through ewgate did not reach the VM's service %s", svc.addr())
	}
}

// probeServer is the HTTP server the VM's readiness probe checks (GET /ready: 200); the test
// stops it and starts it again on the same address.
type probeServer struct {
	ip   string
	port int
	mu   sync.Mutex
	srv  *http.Server
}

func startProbeServer(t *testing.T, ip string) *probeServer {
	t.Helper()
	p := &probeServer{ip: ip}
	p.start(t)
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *probeServer) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(p.ip, fmt.Sprint(p.port)))
	if err != nil {
		t.Fatal(err)
	}
	p.port = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.NotFound(w, r)
		}
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
}

func (p *probeServer) stop(t *testing.T) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		p.srv.Close()
		p.srv = nil
	}
}

// countingEcho is a TLS echo (certificate made by startEchoTLS's recipe) counting the
// connections it accepts.
type countingEcho struct {
	ln       net.Listener
	accepted atomic.Int64
}

func (e *countingEcho) addr() string { return e.ln.Addr().String() }
func (e *countingEcho) port() int    { return e.ln.Addr().(*net.TCPAddr).Port }

func startCountingTLSEcho(t *testing.T, ip string, port int) *countingEcho {
	t.Helper()
	ln, err := tls.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)), echoTLSConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	e := &countingEcho{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				e.accepted.Add(1)
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						c.Write(buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return e
}

// istiodEDS waits until istiod's EDS for clusterName has other and, as present says, vm; it
// logs the health statuses istiod sends.
func istiodEDS(t *testing.T, ns, token, clusterName, vm string, present bool, other string) {
	t.Helper()
	got := istiodEndpointHealth(t, ns, token, clusterName, func(m map[string]string) error {
		if _, ok := m[other]; !ok {
			return fmt.Errorf("istiod's EDS lacks the entry without health checks %s: %v", other, m)
		}
		if _, ok := m[vm]; ok != present {
			return fmt.Errorf("istiod's EDS has the VM %s: %v, want %v (%v)", vm, ok, present, m)
		}
		return nil
	})
	t.Logf("istiod's EDS for %s: %v", clusterName, got)
}

// istiodEndpointHealth waits until istiod's EDS for clusterName, as a sidecar of ns on network
// vmnet receives it, satisfies cond, given each endpoint's health status by address (an
// endpoint istiod leaves out is absent from the map).
func istiodEndpointHealth(t *testing.T, ns, token, clusterName string, cond func(map[string]string) error) map[string]string {
	t.Helper()
	ctx := harness.Context(t, 30*time.Second)
	root, err := cluster.Istiod.RootCert(ctx, cluster.API, ns)
	if err != nil {
		t.Fatal(err)
	}
	node, err := harness.SidecarNode("127.0.9.99", "eds-watch", ns, "vmnet", cluster.Istiod.ClusterID)
	if err != nil {
		t.Fatal(err)
	}
	x, err := harness.DialSidecarXDS(ctx, harness.IstiodConn{Addr: cluster.Istiod.SecureAddr, ServerName: cluster.Istiod.SAN,
		Roots: poolOf(t, root), Token: token, ClusterID: cluster.Istiod.ClusterID}, node)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	var got map[string]string
	if _, err := x.Watch(ctx, harness.EndpointType, []string{clusterName}, func(rs []*anypb.Any) error {
		clas, err := harness.LoadAssignments(rs)
		if err != nil {
			return err
		}
		got = map[string]string{}
		for _, cla := range clas {
			for _, l := range cla.GetEndpoints() {
				for _, e := range l.GetLbEndpoints() {
					sa := e.GetEndpoint().GetAddress().GetSocketAddress()
					got[net.JoinHostPort(sa.GetAddress(), fmt.Sprint(sa.GetPortValue()))] = e.GetHealthStatus().String()
				}
			}
		}
		return cond(got)
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestVMGRPCProbeFromBundle: the probe as operators deliver it. The WorkloadGroup in the
// apiserver has a grpc probe of a named service; `ewgate vm-config --kubeconfig` reads the group
// and writes the bundle; the agent started from the bundle alone runs the probe against a gRPC
// health server on the VM's address, and ewgate's entry follows: False while the server does not
// know the named service (so the name reached the agent: the server's "" is SERVING), True once
// it serves it, False when the server stops, True when it is back.
//
// Never NOT_SERVING: the agent's gRPC prober returns "unhealthy" with a nil error for it, and the
// agent's health checker then panics on err.Error() (health_check.go:176, Istio master of
// 2026-08-27), ending the agent.
func TestVMGRPCProbeFromBundle(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	const vmIP, service = "127.0.9.83", "web.v1.Web"
	probed := startGRPCHealth(t, vmIP, 0)
	port := probed.port

	ns := cluster.Namespace(t, "vmgrpcprobe")
	if _, err := cluster.API.CreateServiceAccount(ctx, ns, "vm"); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateWorkloadGroup(ctx, ns, "web", harness.WorkloadGroupSpec{
		ServiceAccount: "vm", Network: "vmnet", Labels: map[string]string{"app": "web"},
		Probe: map[string]any{"periodSeconds": int64(1), "failureThreshold": int64(1),
			"grpc": map[string]any{"port": int64(port), "service": service}},
	}); err != nil {
		t.Fatal(err)
	}
	backend, host := echoService(t, ctx, ns, "")
	control := loopbackWithPort(t, 15012)
	front := startFrontOfIstiodAt(t, control, ns, "ewgate-e2e-grpcprobe")
	ewgateIP, _, _ := net.SplitHostPort(control)
	bundleDir := vmConfig(t, ctx, "--kubeconfig", cluster.API.Kubeconfig, "--group", ns+"/web",
		"--ewgate-address", ewgateIP, "--serving-ca", writeTemp(t, t.TempDir(), "serving-ca.pem", front.ServingCA),
		"--internal-ip", vmIP, "--cluster-id", cluster.Istiod.ClusterID)
	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{Name: "grpcprobe1", Bundle: bundleDir})
	client := vm.StartXDSClient(t, ctx, host+":"+fmt.Sprint(backend.Port), "")
	name := vm.AutoRegisteredName()
	health := func(want string) {
		t.Helper()
		waitKubeEntryHealth(t, cluster.API, ns, name, want, func() string {
			return fmt.Sprintf("\n---- agent ----\n%s\n---- front ----\n%s\n---- xds client ----\n%s",
				vm.Proc.Tail(30), front.Gw.Proc.Tail(20), client.Tail(10))
		})
	}
	health("False") // NotFound: the server has no status for the named service yet
	probed.hs.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	health("True")
	probed.srv.Stop()
	health("False")
	back := startGRPCHealth(t, vmIP, port)
	back.hs.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	health("True")
}

// grpcHealth is a gRPC server with the standard health service on ip:port (0: any port).
type grpcHealth struct {
	srv  *grpc.Server
	hs   *health.Server
	port int
}

func startGRPCHealth(t *testing.T, ip string, port int) *grpcHealth {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	g := &grpcHealth{srv: grpc.NewServer(), hs: health.NewServer(), port: lis.Addr().(*net.TCPAddr).Port}
	healthpb.RegisterHealthServer(g.srv, g.hs)
	go g.srv.Serve(lis)
	t.Cleanup(g.srv.Stop)
	return g
}

// waitKubeEntryHealth waits until the WorkloadEntry ns/name in api has health checks enabled
// and a Healthy condition of want ("True" or "False"); on failure onFail adds the peers' logs.
func waitKubeEntryHealth(t *testing.T, api *harness.APIServer, ns, name, want string, onFail func() string) {
	t.Helper()
	if _, err := api.WaitWorkloadEntry(harness.Context(t, 30*time.Second), ns, name, func(u *unstructured.Unstructured) error {
		if u.GetAnnotations()["proxy.istio.io/health-checks-enabled"] != "true" {
			return fmt.Errorf("annotations %v lack proxy.istio.io/health-checks-enabled: \"true\"", u.GetAnnotations())
		}
		c, err := wantHealthy(u.Object, want)
		if err == nil {
			t.Logf("entry %s: Healthy condition %v", name, c)
		}
		return err
	}); err != nil {
		t.Fatalf("%v%s", err, onFail())
	}
}
