package controlplane

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ewgate/ewgate/registrar"
)

// TestIncrementalModelMatchesFull: after any sequence of creates, updates (labels, health,
// address) and deletes, the model the push loop updates incrementally is the one built from
// scratch from the same entries.
func TestIncrementalModelMatchesFull(t *testing.T) {
	svcs := dnsServices(t, pushServices+`  - name: multi
    namespace: ns
    hosts: [m.ns.svc.cluster.local, m.example.org]
    ports: [{number: 80, name: http}, {number: 81, name: admin, target_port: 9081}]
    workload_selector: {labels: {app: a, tier: web}}
  - name: other-ns
    namespace: other
    hosts: [a.other.svc.cluster.local]
    ports: [{number: 80, name: http}]
    workload_selector: {labels: {app: a}}
`)
	rng := rand.New(rand.NewPCG(1, 2))
	all := map[string]*registrar.WorkloadEntry{}
	var m modelCache
	m.rebuild(svcs, all)
	for step := range 2000 {
		changed := map[string]*registrar.WorkloadEntry{}
		n := 1 + rng.IntN(4) // edited into the sorted endpoints
		if step%50 == 0 {
			n = 10 * maxMoves // more than maxMoves in a service: it is built again
		}
		for range n {
			ns := []string{"ns", "other"}[rng.IntN(2)]
			name := fmt.Sprintf("vm-%d", rng.IntN(100))
			key := ns + "/" + name
			if rng.IntN(5) == 0 {
				delete(all, key)
				changed[key] = nil
				continue
			}
			e := &registrar.WorkloadEntry{ObjectMeta: registrar.ObjectMeta{Name: name, Namespace: ns},
				Spec: registrar.WorkloadEntrySpec{Address: fmt.Sprintf("10.0.0.%d", rng.IntN(8)),
					Labels: map[string]string{"app": []string{"a", "b", "c"}[rng.IntN(3)]}, ServiceAccount: "sa"}}
			if rng.IntN(2) == 0 {
				e.Spec.Labels["tier"] = "web"
			}
			if rng.IntN(3) == 0 {
				e.Annotations = map[string]string{annotationHealthOn: "true"}
				if rng.IntN(2) == 0 {
					e.Status.Conditions = []registrar.Condition{{Type: registrar.ConditionHealthy, Status: "True"}}
				}
			}
			all[key] = e
			changed[key] = e
		}
		got := m.update(changed)
		entries := make([]*registrar.WorkloadEntry, 0, len(all))
		for _, e := range all {
			entries = append(entries, e)
		}
		if want := buildModel(svcs, entries); !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: incremental model differs from the full one", step)
		}
	}
}

// TestBuilderReusesUnchanged: a change of one service's endpoints builds that port anew and
// keeps every other resource and every other type's version; the same input in a new builder
// (a restarted control plane) gives the same versions.
func TestBuilderReusesUnchanged(t *testing.T) {
	svcs := dnsServices(t, pushServices)
	e1, e2 := pushEntry("a-1", "10.0.0.1", "a"), pushEntry("b-1", "10.0.0.2", "b")
	bd := newBuilder("", "r1/z1", 15443)
	first := bd.build(buildModel(svcs, []*registrar.WorkloadEntry{e1, e2}))
	if first.rebuilt != 2 {
		t.Fatalf("first build rebuilt %d ports, want 2", first.rebuilt)
	}
	same := bd.build(buildModel(svcs, []*registrar.WorkloadEntry{e2, e1}))
	if same.rebuilt != 0 || same.digest != first.digest {
		t.Fatalf("unchanged input: %d ports rebuilt, digest changed %v", same.rebuilt, same.digest != first.digest)
	}
	next := bd.build(buildModel(svcs, []*registrar.WorkloadEntry{e1, e2, pushEntry("a-2", "10.0.0.3", "a")}))
	if next.rebuilt != 1 {
		t.Fatalf("one service changed: %d ports rebuilt, want 1", next.rebuilt)
	}
	for _, v := range []struct {
		name      string
		was, now  map[resource.Type]typed
		sameTypes []resource.Type
	}{
		{"gateway", first.gateway, next.gateway, []resource.Type{resource.ClusterType, resource.ListenerType}},
		{"grpc", first.grpc, next.grpc, []resource.Type{resource.ClusterType, resource.ListenerType, resource.RouteType}},
	} {
		for _, typ := range v.sameTypes {
			if v.was[typ].version != v.now[typ].version {
				t.Errorf("%s %s: version changed with only endpoints changed", v.name, typ)
			}
			for i := range v.now[typ].items {
				if v.now[typ].items[i] != v.was[typ].items[i] {
					t.Errorf("%s %s: resource %d built again", v.name, typ, i)
				}
			}
		}
		if v.was[resource.EndpointType].version == v.now[resource.EndpointType].version {
			t.Errorf("%s: endpoints changed, version did not", v.name)
		}
		if v.was[resource.EndpointType].items[1] != v.now[resource.EndpointType].items[1] {
			t.Errorf("%s: b's unchanged load assignment built again", v.name)
		}
	}
	restarted := buildResources(buildModel(svcs, []*registrar.WorkloadEntry{e1, e2, pushEntry("a-2", "10.0.0.3", "a")}), "", "r1/z1", 15443)
	if restarted.digest != next.digest {
		t.Fatal("the same input in a new builder gives other versions")
	}
}

// TestNameTableBuiltOnlyWhenWatched: pushes build no name table while nobody watches it; a
// watch gets the table of the last push (its workloads' names included), and while watched a
// registration's push sends a new table.
func TestNameTableBuiltOnlyWhenWatched(t *testing.T) {
	svcs := dnsServices(t, pushServices)
	g := startGatewayStream(t, svcs, pushEntry("vm-1", "10.0.0.1", "a"))
	builds := func() int {
		g.s.dns.mu.Lock()
		defer g.s.dns.mu.Unlock()
		return g.s.dns.builds
	}
	if n := builds(); n != 0 {
		t.Fatalf("%d name tables built with nobody watching", n)
	}
	cc, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sidecar~10.0.0.1~vm-1.ns~ns.svc.cluster.local"}
	if err := vm.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: NameTableType}); err != nil {
		t.Fatal(err)
	}
	table := func() (*discoverygrpc.DiscoveryResponse, map[string]nameInfo) {
		t.Helper()
		resp, err := vm.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Resources) != 1 {
			t.Fatalf("name table response with %d resources", len(resp.Resources))
		}
		return resp, wireNameTable(t, resp.Resources[0].Value)
	}
	resp, got := table()
	if _, ok := got["vm-1.a.ns.svc.cluster.local"]; !ok {
		t.Fatalf("table served to the first watch lacks the registered VM: %v", got)
	}
	// Each registration while the VM watches sends a new table (the watch is re-created on
	// every ACK: go-control-plane's own watch count goes wrong then, see dnsTable.watched).
	for i := range 3 {
		if err := vm.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: NameTableType, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("vm-r%d", i)
		addr := fmt.Sprintf("10.0.1.%d", i)
		if _, err := g.store.Create(ctx, pushEntry(name, addr, "b")); err != nil {
			t.Fatal(err)
		}
		resp, got = table()
		if ni := got[name+".b.ns.svc.cluster.local"]; !slices.Equal(ni.IPs, []string{addr}) {
			t.Fatalf("table after registration %d while watched: %v", i, got)
		}
	}
}
