package vmcontrol_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
	_ "unsafe" // go:linkname, to lower grpc-go's floor on the client keepalive interval

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

// grpcMinPingTime is grpc-go's floor on keepalive.ClientParameters.Time (10s), which grpc-go's
// own keepalive tests lower the same way (through its internal package). Without it a client
// needs 40s to collect the three strikes that earn a GOAWAY.
//
//go:linkname grpcMinPingTime google.golang.org/grpc/internal.KeepaliveMinPingTime
var grpcMinPingTime time.Duration

func TestKeepaliveViolationsAreCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		Limits: vmcontrol.LimitsConfig{KeepaliveMinTime: time.Second}}, vmcontrol.Options{Registerer: reg})

	// A real grpc-go client that pings every 20ms, far more often than the front's 1s allows.
	saved := grpcMinPingTime
	grpcMinPingTime = time.Millisecond
	ka := grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Millisecond, Timeout: 5 * time.Second, PermitWithoutStream: true})
	grpcMinPingTime = saved
	tc := &tls.Config{RootCAs: p.serving.Pool(), ServerName: serverName}
	cc, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)), ka)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	cs, err := cc.NewStream(withToken(t.Context(), token(t, vmNS, vmSA)), bidi, "/test.Echo/Echo")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(wrapperspb.String("x")); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(&wrapperspb.StringValue{}); err != nil {
		t.Fatal(err)
	}
	// The stream now stays quiet; the client keeps pinging until gRPC's enforcement closes the
	// connection under it.
	if err := cs.RecvMsg(&wrapperspb.StringValue{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("held stream on a connection closed for too many pings: %v, want Unavailable", err)
	}
	testkit.Eventually(t, "the keepalive limit is counted", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_limits_total", map[string]string{"limit": "keepalive"}) == 1
	})
	// A well-behaved client on the same front is not counted.
	if _, _, _, err := echo(t, withToken(t.Context(), token(t, vmNS, vmSA)), g.dial(t, p), "y"); err != nil {
		t.Fatal(err)
	}
	if v := testkit.Metric(t, reg, "ewgate_control_limits_total", map[string]string{"limit": "keepalive"}); v != 1 {
		t.Fatalf("keepalive hits = %v, want 1", v)
	}
}

// handshakeError completes a TLS handshake with the front as a client with the given
// certificates would, and returns what the server said (TLS 1.3 reports a refused client
// certificate after the client's side of the handshake, on the first read).
func handshakeError(t *testing.T, g *gateway, p *pki, certs ...tls.Certificate) error {
	t.Helper()
	d := &tls.Dialer{Config: &tls.Config{RootCAs: p.serving.Pool(), ServerName: serverName, NextProtos: []string{"h2"}, Certificates: certs}}
	conn, err := d.DialContext(t.Context(), "tcp", g.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = conn.Read(make([]byte, 1)) // the server's SETTINGS frame, or the alert
	return err
}

func TestRequiredClientCertificates(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityXFCC, func(c *vmcontrol.Config) { c.TLS.ClientCerts = vmcontrol.ClientCertRequire })
	good := p.mesh.Client(t, []string{"spiffe://cluster.local/ns/vm-ns/sa/cert-sa"}).TLS()

	if err := handshakeError(t, g, p); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("no client certificate: %v, want the handshake refused (certificate required)", err)
	}
	stranger := testkit.NewCA(t, "stranger").Client(t, []string{"spiffe://cluster.local/ns/vm-ns/sa/web"}).TLS()
	if err := handshakeError(t, g, p, stranger); err == nil || !strings.Contains(err.Error(), "tls:") {
		t.Fatalf("certificate of another root: %v, want the handshake refused", err)
	}
	if err := handshakeError(t, g, p, good); err != nil {
		t.Fatalf("mesh certificate: handshake %v", err)
	}
	// A grpc-go VM with a token but no certificate gets no further than the handshake.
	_, _, _, err := echo(t, withToken(t.Context(), token(t, vmNS, vmSA)), g.dial(t, p), "x")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("token without certificate: %v, want Unavailable (no connection)", err)
	}
	if n := u.accepted.Load(); n != 0 {
		t.Fatalf("the upstream got %d connections from refused handshakes", n)
	}
	// With the verified SPIFFE certificate the VM is served, as that identity.
	if _, _, _, err := echo(t, t.Context(), g.dial(t, p, good), "x"); err != nil {
		t.Fatal(err)
	}
	if x := u.seen()[0].md.Get("x-forwarded-client-cert"); len(x) != 1 || x[0] != "URI=spiffe://cluster.local/ns/vm-ns/sa/cert-sa" {
		t.Fatalf("xfcc %v", x)
	}
}

var errStoreDown = errors.New("test store: writes refused")

// refusingStore is a memory store whose WorkloadEntry writes all fail, as a store that is down
// or forbids ewgate to write.
type refusingStore struct{ *registrar.MemoryStore }

type refusingEntries struct {
	registrar.Resource[*registrar.WorkloadEntry]
}

func (s refusingStore) WorkloadEntries() registrar.Resource[*registrar.WorkloadEntry] {
	return refusingEntries{s.MemoryStore.WorkloadEntries()}
}

func (refusingEntries) Create(context.Context, *registrar.WorkloadEntry) (*registrar.WorkloadEntry, error) {
	return nil, errStoreDown
}

func (refusingEntries) Update(context.Context, *registrar.WorkloadEntry) (*registrar.WorkloadEntry, error) {
	return nil, errStoreDown
}

func (refusingEntries) UpdateStatus(context.Context, *registrar.WorkloadEntry) (*registrar.WorkloadEntry, error) {
	return nil, errStoreDown
}

func TestRegistrationTimeout(t *testing.T) {
	mem := registrar.NewMemoryStore()
	if _, err := mem.WorkloadGroups().Create(t.Context(), &registrar.WorkloadGroup{
		ObjectMeta: registrar.ObjectMeta{Name: "web", Namespace: vmNS},
		Spec:       registrar.WorkloadGroupSpec{Template: registrar.WorkloadEntrySpec{ServiceAccount: vmSA}},
	}); err != nil {
		t.Fatal(err)
	}
	r, err := registrar.New(registrar.Config{Instance: "gw-1", GracePeriod: registrar.Duration(grace)},
		registrar.Options{Store: refusingStore{mem}, Clock: &fakeClock{testkit.NewClock(t0)}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { r.Run(ctx); close(runDone) }()
	t.Cleanup(func() { cancel(); <-runDone }) // after the front's cleanup (registered later, run first)

	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		RegisterTimeout: 300 * time.Millisecond}, vmcontrol.Options{Registrar: r, Registerer: reg})

	start := time.Now()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(g.dial(t, p)).StreamAggregatedResources(withToken(t.Context(), token(t, vmNS, vmSA)))
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: vmNode("web", "10.0.0.5", "c1"), TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	_, err = ads.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "could not be written in time") {
		t.Fatalf("ADS with an unwritable entry: %v, want Unavailable after the register timeout", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("refused after %s, before the 300ms register timeout", d)
	}
	if n := u.accepted.Load(); n != 0 || len(u.seen()) != 0 {
		t.Fatalf("the upstream got %d connections and %d calls for an unregistered VM", n, len(u.seen()))
	}
	if v := testkit.Metric(t, reg, "ewgate_control_registrations_total", map[string]string{"result": "timeout"}); v != 1 {
		t.Fatalf("registration timeouts = %v, want 1", v)
	}
	if v := testkit.Metric(t, reg, "ewgate_control_streams_total", map[string]string{"method": "ads", "result": "Unavailable"}); v != 1 {
		t.Fatalf("ADS streams ended Unavailable = %v, want 1", v)
	}
}

func TestUpstreamDialFailureIsCounted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String() // a loopback port nobody listens on any more
	ln.Close()
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{
		{Cluster: "c1", Address: dead, CAFile: p.servingFile, ServerName: upstreamName}}}, vmcontrol.Options{Registerer: reg})

	_, _, _, err = echo(t, withToken(t.Context(), token(t, vmNS, vmSA)), g.dial(t, p), "x")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("VM behind an unreachable upstream: %v, want Unavailable", err)
	}
	testkit.Eventually(t, "the dial failure is counted", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_upstream_dial_failures_total", map[string]string{"cluster": "c1"}) >= 1
	})
	if v := testkit.Metric(t, reg, "ewgate_control_streams_total", map[string]string{"cluster": "c1", "result": "Unavailable"}); v != 1 {
		t.Fatalf("streams ended Unavailable = %v, want 1", v)
	}
}
