package controlplane

import (
	"context"
	"net"
	"slices"
	"sort"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/registrar"
)

// pushServices are two MESH_INTERNAL services selecting WorkloadEntries by app label.
const pushServices = `services:
  - name: a
    namespace: ns
    hosts: [a.ns.svc.cluster.local]
    ports: [{number: 80, name: http}]
    workload_selector: {labels: {app: a}}
  - name: b
    namespace: ns
    hosts: [b.ns.svc.cluster.local]
    ports: [{number: 80, name: http}]
    workload_selector: {labels: {app: b}}
`

const (
	clusterA = "outbound_.80_._.a.ns.svc.cluster.local"
	clusterB = "outbound_.80_._.b.ns.svc.cluster.local"
)

func pushEntry(name, addr, app string) *registrar.WorkloadEntry {
	return &registrar.WorkloadEntry{ObjectMeta: registrar.ObjectMeta{Name: name, Namespace: "ns"},
		Spec: registrar.WorkloadEntrySpec{Address: addr, Labels: map[string]string{"app": app}, ServiceAccount: app}}
}

// gatewayStream is a real ADS stream to a real control plane on loopback, as a gateway node.
type gatewayStream struct {
	t      *testing.T
	s      *Server
	addr   string
	store  registrar.Resource[*registrar.WorkloadEntry]
	stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
}

func startGatewayStream(t *testing.T, svcs []config.Service, entries ...*registrar.WorkloadEntry) *gatewayStream {
	t.Helper()
	store := registrar.NewMemoryStore().WorkloadEntries()
	for _, e := range entries {
		if _, err := store.Create(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	s := New(Options{Services: svcs, Entries: store, Debounce: 5 * time.Millisecond, MaxDelay: 50 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	runDone := make(chan error, 1)
	go func() { runDone <- s.Run(ctx, ln) }()
	select { // subscribe once the first push is served, so that each type answers once
	case <-s.Synced():
	case <-ctx.Done():
		t.Fatal("no first push")
	}
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cc.Close()
		if err := <-runDone; err != nil {
			t.Error(err)
		}
	})
	return &gatewayStream{t: t, s: s, addr: ln.Addr().String(), store: store, stream: stream}
}

func (g *gatewayStream) send(typ, version, nonce string, names ...string) {
	g.t.Helper()
	req := &discoverygrpc.DiscoveryRequest{TypeUrl: typ, VersionInfo: version, ResponseNonce: nonce, ResourceNames: names,
		Node: &corev3.Node{Id: "router~127.0.0.1~ewgate.istio-system~istio-system.svc.cluster.local"}}
	if err := g.stream.Send(req); err != nil {
		g.t.Fatal(err)
	}
}

// recv reads the next response and ACKs it (EDS with the names given).
func (g *gatewayStream) recv(names ...string) *discoverygrpc.DiscoveryResponse {
	g.t.Helper()
	resp, err := g.stream.Recv()
	if err != nil {
		g.t.Fatal(err)
	}
	if resp.TypeUrl != resource.EndpointType {
		names = nil // clusters and listeners: all of them
	}
	g.send(resp.TypeUrl, resp.VersionInfo, resp.Nonce, names...)
	return resp
}

// endpoints decodes an EDS response: cluster name to its endpoint addresses, sorted.
func endpoints(t *testing.T, resp *discoverygrpc.DiscoveryResponse) map[string][]string {
	t.Helper()
	if resp.TypeUrl != resource.EndpointType {
		t.Fatalf("got a %s response, want endpoints", resp.TypeUrl)
	}
	out := map[string][]string{}
	for _, a := range resp.Resources {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		addrs := []string{}
		for _, l := range cla.Endpoints {
			for _, e := range l.LbEndpoints {
				addrs = append(addrs, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
		sort.Strings(addrs)
		out[cla.ClusterName] = addrs
	}
	return out
}

// subscribe asks for clusters, listeners and both services' endpoints and reads the three first
// responses, returning the endpoints.
func (g *gatewayStream) subscribe() map[string][]string {
	g.t.Helper()
	g.send(resource.ClusterType, "", "")
	g.send(resource.ListenerType, "", "")
	g.send(resource.EndpointType, "", "", clusterA, clusterB)
	var eds map[string][]string
	for range 3 {
		if resp := g.recv(clusterA, clusterB); resp.TypeUrl == resource.EndpointType {
			eds = endpoints(g.t, resp)
		}
	}
	if eds == nil {
		g.t.Fatal("no endpoints in the first three responses")
	}
	return eds
}

// TestPushSendsOnlyWhatChanged: after a VM registers for service a, the gateway is sent a's
// endpoints and nothing else: not b's unchanged endpoints, not the unchanged clusters and
// listener. (Before incremental pushes every type was sent again, with every load assignment.)
func TestPushSendsOnlyWhatChanged(t *testing.T) {
	svcs := dnsServices(t, pushServices)
	g := startGatewayStream(t, svcs, pushEntry("b-1", "10.0.0.2", "b"))
	if got := g.subscribe(); !slices.Equal(got[clusterA], []string{}) || !slices.Equal(got[clusterB], []string{"10.0.0.2"}) {
		t.Fatalf("initial endpoints %v", got)
	}
	if _, err := g.store.Create(context.Background(), pushEntry("a-1", "10.0.0.1", "a")); err != nil {
		t.Fatal(err)
	}
	got := endpoints(t, g.recv(clusterA, clusterB))
	if len(got) != 1 || !slices.Equal(got[clusterA], []string{"10.0.0.1"}) {
		t.Fatalf("push after a registration for a: %v, want a's endpoints only", got)
	}
	// A new service changes the clusters and the listener: the first of each the stream gets
	// now must have it (a stale one from the registration's push would not).
	more := dnsServices(t, pushServices+`  - name: c
    namespace: ns
    hosts: [c.ns.svc.cluster.local]
    ports: [{number: 80, name: http}]
    endpoints: [{address: 10.0.0.3, service_account: c}]
`)
	g.s.SetServices(more)
	const clusterC = "outbound_.80_._.c.ns.svc.cluster.local"
	seen := map[string]bool{}
	for !seen[resource.ClusterType] || !seen[resource.ListenerType] {
		resp := g.recv(clusterA, clusterB)
		switch resp.TypeUrl {
		case resource.ClusterType:
			var names []string
			for _, a := range resp.Resources {
				var c clusterv3.Cluster
				if err := a.UnmarshalTo(&c); err != nil {
					t.Fatal(err)
				}
				names = append(names, c.Name)
			}
			if !slices.Contains(names, clusterC) {
				t.Fatalf("clusters %v sent without the new service: an unchanged type was sent again", names)
			}
		case resource.ListenerType:
			var l listenerv3.Listener
			if err := resp.Resources[0].UnmarshalTo(&l); err != nil {
				t.Fatal(err)
			}
			if n := len(l.FilterChains); n != 3 {
				t.Fatalf("listener with %d chains, want 3: an unchanged type was sent again", n)
			}
		default:
			t.Fatalf("unexpected %s response after a services change", resp.TypeUrl)
		}
		seen[resp.TypeUrl] = true
	}
}

// TestPushLastEndpointRemoved: the removal of a service's last endpoint is pushed (an empty load
// assignment, not silence), and a VM moving from one service to the other leaves the first and
// joins the second in one push.
func TestPushLastEndpointRemoved(t *testing.T) {
	svcs := dnsServices(t, pushServices)
	g := startGatewayStream(t, svcs, pushEntry("vm-1", "10.0.0.1", "a"))
	if got := g.subscribe(); !slices.Equal(got[clusterA], []string{"10.0.0.1"}) || !slices.Equal(got[clusterB], []string{}) {
		t.Fatalf("initial endpoints %v", got)
	}
	ctx := context.Background()
	moved := pushEntry("vm-1", "10.0.0.1", "b")
	if _, err := g.store.Update(ctx, moved); err != nil {
		t.Fatal(err)
	}
	got := endpoints(t, g.recv(clusterA, clusterB))
	if !slices.Equal(got[clusterA], []string{}) || !slices.Equal(got[clusterB], []string{"10.0.0.1"}) {
		t.Fatalf("after the VM moved from a to b: %v", got)
	}
	if err := g.store.Delete(ctx, "ns", "vm-1", registrar.Preconditions{}); err != nil {
		t.Fatal(err)
	}
	got = endpoints(t, g.recv(clusterA, clusterB))
	if len(got) != 1 || !slices.Equal(got[clusterB], []string{}) {
		t.Fatalf("after b's last VM went away: %v, want b with no endpoints", got)
	}
}
