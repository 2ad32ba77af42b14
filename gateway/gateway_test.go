package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	testIssuer = "https://issuer.ewgate.test"
	serverName = "istiod.istio-system.svc" // the name VMs dial for 15012
)

// vmSetup is what a gateway with a VM control endpoint needs from outside: a token issuer and
// a serving certificate for 15012, made here.
type vmSetup struct {
	dir    string
	issuer *testkit.Issuer
	roots  *x509.CertPool
	cfg    string
}

func newVMSetup(t *testing.T) *vmSetup {
	t.Helper()
	s := &vmSetup{dir: t.TempDir(), issuer: testkit.NewIssuer(t, testIssuer)}
	ca := testkit.NewCA(t, "15012 test CA")
	s.roots = ca.Pool()
	certFile, keyFile := ca.Server(t, serverName).WriteFiles(t, s.dir, "tls")
	s.cfg = fmt.Sprintf(`
drain_timeout: 60s
reload: {watch_interval: 20ms}
listeners:
  - {name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}
xds: {node: {network: vmnet}}
control_plane:
  address: 127.0.0.1:0
  debounce: 10ms
  workload_entries_dir: %[1]s/store
  ca: {data_dir: %[1]s/ca}
authn:
  issuers: [{issuer: %[2]s, cluster: cluster1, jwks: '%[3]s'}]
control:
  address: 127.0.0.1:0
  tls: {cert_file: %[4]s, key_file: %[5]s}
  upstreams: [{cluster: cluster1, builtin: true}]
  drain_timeout: 60s
registrar: {instance: ewgate-test, grace_period: 1s}
workload_groups:
  - metadata: {name: web, namespace: vms}
    spec: {metadata: {labels: {app: web}}, template: {serviceAccount: web}}
services:
  - {name: web, namespace: vms, hosts: [web.vms.svc.cluster.local], ports: [{number: 8080, name: http, protocol: TLS}], workload_selector: {labels: {app: web}}}
`, s.dir, testIssuer, s.issuer.JWKS(t), certFile, keyFile)
	return s
}

func (s *vmSetup) token(t *testing.T) string { return s.issuer.Token(t, "vms", "web") }

// start writes the setup's config to ewgate.yaml in its directory and starts a Gateway on it,
// logging at info to the returned observer; the caller shuts it down.
func (s *vmSetup) start(t *testing.T) (*Gateway, *observer.ObservedLogs) {
	t.Helper()
	path := filepath.Join(s.dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(s.cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(s.cfg), path)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	g, err := Start(cfg, Options{Path: path, Loaded: []byte(s.cfg), Logger: zap.New(core), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return g, logs
}

func get(h http.Handler, path string) int {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code
}

// listening returns the address the named listener logged.
func listening(t *testing.T, logs *observer.ObservedLogs, name string) string {
	t.Helper()
	var addr string
	testkit.Eventually(t, name+" listening", func() bool {
		for _, e := range logs.FilterMessage("listening").All() {
			if e.ContextMap()["listener"] == name {
				addr = fmt.Sprint(e.ContextMap()["address"])
				return true
			}
		}
		return false
	})
	return addr
}

// gatewayFrames lists the goroutines (other than the caller) with a frame in this package: after
// Shutdown there must be none, at once, without retries: every goroutine the gateway starts has
// an owner that waits for it (issue 18, bug 3: the built-in upstream's Stop ran on a goroutine
// nobody waited for).
func gatewayFrames() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for i, g := range bytes.Split(buf, []byte("\n\n")) {
		if i == 0 {
			continue // the caller
		}
		for _, line := range strings.Split(string(g), "\n") {
			if strings.HasPrefix(line, "github.com/ewgate/ewgate/gateway.") && !strings.Contains(line, ".Test") {
				out = append(out, string(g))
				break
			}
		}
	}
	return out
}

// TestShutdownContract: with a VM's ADS stream open through the VM control endpoint to the
// built-in control plane, Shutdown turns readiness to 503 and closes the mesh listener and
// 15012 before anything drains; the stream keeps working while the drain goes on (its upstream,
// the built-in control plane, stops only after the control endpoint has drained); when it ends
// Shutdown returns, and no goroutine of the gateway is left.
func TestShutdownContract(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) }) // runs last, once the test's gRPC client is closed
	s := newVMSetup(t)
	g, logs := s.start(t)
	h := g.handler()
	mesh, control := listening(t, logs, "mesh"), listening(t, logs, "control")
	testkit.Eventually(t, "ready", func() bool { return get(h, "/healthz/ready") == 200 && get(h, "/healthz/control") == 200 })
	if code := get(h, "/debug/registrations"); code != 200 {
		t.Fatalf("/debug/registrations: %d; the VM side registers its pages", code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ads, node := openADS(t, s, ctx, control)

	stopped := make(chan error, 1)
	go func() { stopped <- g.Shutdown(context.Background()) }()
	testkit.Eventually(t, "the drain to begin", func() bool { return len(logs.FilterMessage("shutting down: draining connections").All()) == 1 })
	if code := get(h, "/healthz/ready"); code != 503 {
		t.Errorf("/healthz/ready: %d during the drain; want 503", code)
	}
	if code := get(h, "/healthz/control"); code != 503 {
		t.Errorf("/healthz/control: %d during the drain; want 503", code)
	}
	for name, addr := range map[string]string{"mesh": mesh, "control": control} {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			t.Errorf("the %s listener accepts during the drain", name)
		}
	}
	// The open stream still reaches the built-in control plane.
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType}); err != nil {
		t.Fatalf("send on the open stream during the drain: %v", err)
	}
	if _, err := ads.Recv(); err != nil {
		t.Fatalf("the open stream during the drain: %v", err)
	}
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned (%v) with a VM stream open inside the drain period", err)
	default:
	}
	cancel()
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if left := gatewayFrames(); len(left) > 0 {
		t.Fatalf("%d goroutines of the gateway still run after Shutdown returned:\n%s", len(left), strings.Join(left, "\n\n"))
	}
}

// TestBuiltinUpstreamStopIsOwned is issue 18's third bug: the in-process upstream's Stop ran on
// a goroutine nobody waited for, so Shutdown could return while it still ran (and the tests'
// leak checks passed only because it was quick). Here the end of that goroutine's work waits
// for Shutdown to return (bounded): an owned goroutine holds Shutdown until it is done, an
// unowned one lets Shutdown return first.
func TestBuiltinUpstreamStopIsOwned(t *testing.T) {
	s := newVMSetup(t)
	path := filepath.Join(s.dir, "ewgate.yaml")
	cfg, err := config.Parse([]byte(s.cfg), path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(cfg, Options{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{})
	var finished atomic.Bool
	g.components.afterBuiltinStop = func() {
		select {
		case <-returned: // Shutdown returned first: this goroutine was not waited for
		case <-time.After(500 * time.Millisecond):
		}
		finished.Store(true)
	}
	err = g.Shutdown(context.Background())
	done := finished.Load()
	close(returned)
	if err != nil {
		t.Fatal(err)
	}
	if !done {
		t.Fatal("Shutdown returned before the built-in upstream's stop goroutine ended: nobody waits for it")
	}
}

// openADS opens a VM's ADS stream through the control endpoint and reads its first response.
func openADS(t *testing.T, s *vmSetup, ctx context.Context, control string) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *corev3.Node) {
	t.Helper()
	cc, err := grpc.NewClient(control, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: s.roots, ServerName: serverName})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	asVM := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.token(t), "ClusterID", "cluster1")
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(asVM)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": "cluster1", "NAMESPACE": "vms"})
	node := &corev3.Node{Id: "sidecar~10.1.2.4~web-2.vms~vms.svc.cluster.local", Metadata: md}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := ads.Recv(); err != nil {
		t.Fatalf("first ADS response: %v", err)
	}
	return ads, node
}

// TestShutdownDeadlineCutsTheControlEndpoint: the drain has one deadline. When Shutdown's
// context ends (a second signal; or drain_timeout) before control.drain_timeout (60s here), the
// VM streams still open are cut and Shutdown returns.
func TestShutdownDeadlineCutsTheControlEndpoint(t *testing.T) {
	s := newVMSetup(t)
	cfg, err := config.Parse([]byte(s.cfg), filepath.Join(s.dir, "ewgate.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	g, err := Start(cfg, Options{Logger: zap.New(core), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	vmCtx, vmCancel := context.WithTimeout(context.Background(), time.Minute)
	defer vmCancel()
	ads, _ := openADS(t, s, vmCtx, listening(t, logs, "control"))

	ctx, cut := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- g.Shutdown(ctx) }()
	testkit.Eventually(t, "the drain to begin", func() bool { return len(logs.FilterMessage("shutting down: draining connections").All()) == 1 })
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned (%v) with a VM stream open before its deadline", err)
	default:
	}
	cut()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(30 * time.Second): // control.drain_timeout is 60s
		t.Fatal("Shutdown did not return after its context ended: the control endpoint's drain ignored the common deadline")
	}
	for range 100 { // the stream ends: no more responses, an error
		if _, err := ads.Recv(); err != nil {
			return
		}
	}
	t.Fatal("the VM stream still delivers responses after Shutdown returned")
}
