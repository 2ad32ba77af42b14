package xdsclient_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/controlplane"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/xdsclient"
)

func TestNodeCarriesTheGatewayLocality(t *testing.T) {
	f, err := config.Parse([]byte("xds: {node: {locality: us-east1/us-east1-b/rack7}}"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := xdsclient.NewNode(f.XDS.Node, "test").GetLocality()
	if l.GetRegion() != "us-east1" || l.GetZone() != "us-east1-b" || l.GetSubZone() != "rack7" {
		t.Fatalf("node locality = %v; want us-east1/us-east1-b/rack7", l)
	}
	if _, err := config.Parse([]byte("xds: {node: {locality: a/b/c/d}}"), "t.yaml"); err == nil {
		t.Fatal("a locality of four parts was accepted")
	}
}

// A control plane sends a cluster whose priority 0 holds a live endpoint and a dead port and
// whose priority 1 holds another live endpoint, with outlier detection (consecutive_5xx 1) and
// an overprovisioning factor of 100: the dead port is ejected after exactly one connect failure
// and priority 0, half healthy, keeps half of the connections (70% with Envoy's default 140).
func TestPrioritiesOverprovisioningAndOutlierDetectionFromEDS(t *testing.T) {
	p := testkit.NewCA(t, "test CA")
	a := startBackend(t, p, "a", reviewsSNI)
	b := startBackend(t, p, "b", reviewsSNI)
	dead := listen(t, "127.0.0.1:0")
	deadAddr := dead.Addr().(*net.TCPAddr).AddrPort()
	dead.Close()

	f, err := config.Parse([]byte("listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	greg := prometheus.NewRegistry()
	g := dataplane.New(dataplane.Options{Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)), Registerer: greg})
	if err := g.Apply(f.DataPlane()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})

	cl := &clusterv3.Cluster{Name: reviewsSNI, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		OutlierDetection: &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1),
			BaseEjectionTime: durationpb.New(time.Hour), MaxEjectionTime: durationpb.New(time.Hour)}}
	ep := func(port uint32) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock("127.0.0.1", port)}}}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: reviewsSNI,
		Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(100)},
		Endpoints: []*endpointv3.LocalityLbEndpoints{
			{Locality: &corev3.Locality{Region: "r1", Zone: "z1"}, LoadBalancingWeight: wrapperspb.UInt32(2),
				LbEndpoints: []*endpointv3.LbEndpoint{ep(a.port()), ep(uint32(deadAddr.Port()))}},
			{Locality: &corev3.Locality{Region: "r2", Zone: "z1"}, LoadBalancingWeight: wrapperspb.UInt32(1), Priority: 1,
				LbEndpoints: []*endpointv3.LbEndpoint{ep(b.port())}},
		}}
	l := &listenerv3.Listener{Name: "0.0.0.0_15443", Address: sock("0.0.0.0", 15443),
		FilterChains: []*listenerv3.FilterChain{chain(reviewsSNI, reviewsSNI)}}
	addr := serveSnapshot(t, map[resource.Type][]types.Resource{
		resource.ListenerType: {l}, resource.ClusterType: {cl}, resource.EndpointType: {cla},
	}, nil)

	c := runClient(t, addr, g, prometheus.NewRegistry())
	testkit.Eventually(t, "client ready", c.Ready)
	gw := g.Addr("mesh").String()
	got := map[string]int{}
	for range 200 {
		name, err := who(gw, p, reviewsSNI)
		if err != nil {
			t.Fatalf("connection through the gateway: %v", err)
		}
		got[name]++
	}
	if got["a"] < 90 || got["a"] > 110 || got["a"]+got["b"] != 200 {
		t.Fatalf("200 connections: %v; want about 100 each (priority 0 half healthy x overprovisioning 100%%)", got)
	}
	if n := testkit.Metric(t, greg, "ewgate_upstream_connect_failures_total", map[string]string{"cluster": reviewsSNI}); n != 1 {
		t.Fatalf("connect failures = %v; want 1 (consecutive_5xx 1 ejects at the first, for an hour)", n)
	}
}

// The built-in control plane gives the gateway's view priorities from xds.node.locality: the
// gateway's own sub-zone first, then its zone, then its region; the others only when those are
// all down. Through the real gateway and the real xDS client.
func TestBuiltinControlPlaneAssignsPriorities(t *testing.T) {
	p := testkit.NewCA(t, "test CA")
	local := startBackend(t, p, "local", reviewsSNI)
	zone := startBackend(t, p, "zone", reviewsSNI)
	far := startBackend(t, p, "far", reviewsSNI)
	f, err := config.Parse([]byte(`xds: {node: {locality: r1/z1/s1}}
services:
  - name: reviews
    hosts: [`+reviewsHost+`]
    ports: [{number: 9080, name: tls, protocol: TLS}]
    endpoints:
      - {address: 127.0.0.1, ports: {tls: `+strconv.Itoa(int(far.port()))+`}, locality: r2/z9, service_account: reviews}
      - {address: 127.0.0.1, ports: {tls: `+strconv.Itoa(int(zone.port()))+`}, locality: r1/z1/s2, service_account: reviews}
      - {address: 127.0.0.1, ports: {tls: `+strconv.Itoa(int(local.port()))+`}, locality: r1/z1/s1, service_account: reviews}
`), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t)
	ln := listen(t, "127.0.0.1:0")
	runCP(t, ln, controlplane.Options{Services: f.Services, Locality: f.XDS.Node.Locality})
	c := runClient(t, ln.Addr().String(), g, prometheus.NewRegistry())
	testkit.Eventually(t, "client ready", c.Ready)
	gw := g.Addr("mesh").String()
	if got := reached(gw, p, reviewsSNI, 12); !only(got, "local") {
		t.Fatalf("all healthy: reached %v; want only the gateway's own sub-zone", got)
	}
	// The local endpoint goes away: its connect failures eject it (the connections are
	// retried), and its zone's priority takes over; the other region is still not used.
	local.ln.Close()
	local.wg.Wait()
	if got := reached(gw, p, reviewsSNI, 12); !only(got, "zone") {
		t.Fatalf("sub-zone down: reached %v; want only the same zone", got)
	}
	zone.ln.Close()
	zone.wg.Wait()
	if got := reached(gw, p, reviewsSNI, 12); !only(got, "far") {
		t.Fatalf("zone down: reached %v; want the other region", got)
	}
}
