package controlplane

import (
	"context"
	"net"
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/registrar"
)

func dnsServices(t *testing.T, yaml string) []config.Service {
	t.Helper()
	f, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return f.Services
}

const dnsTestServices = `services:
  - name: web
    namespace: ns1
    hosts: [web.ns1.svc.cluster.local, web.example.org]
    ports: [{number: 80, name: http, protocol: HTTP}]
    endpoints: [{address: 10.0.0.1}]
  - name: db
    namespace: ns1
    hosts: [db.internal]
    addresses: [10.20.0.5, 10.20.0.6]
    ports: [{number: 5432, name: tcp, protocol: TCP}]
    endpoints: [{address: 10.0.0.2}]
`

func TestBuildNameTable(t *testing.T) {
	vips := netip.MustParsePrefix("240.240.0.0/16")
	svcs := dnsServices(t, dnsTestServices)
	got := buildNameTable(svcs, nil, vips)
	if len(got) != 3 {
		t.Fatalf("table %+v, want 3 hosts", got)
	}
	web := got["web.ns1.svc.cluster.local"]
	if web.Registry != registryKubernetes || web.Shortname != "web" || web.Namespace != "ns1" || len(web.IPs) != 1 {
		t.Errorf("web: %+v", web)
	}
	if ip := netip.MustParseAddr(web.IPs[0]); !vips.Contains(ip) {
		t.Errorf("web's VIP %s is not in %s", ip, vips)
	}
	if ext := got["web.example.org"]; ext.Registry != registryExternal || ext.Shortname != "" || len(ext.IPs) != 1 || ext.IPs[0] == web.IPs[0] {
		t.Errorf("web.example.org: %+v (web has %v)", ext, web.IPs)
	}
	if db := got["db.internal"]; !reflect.DeepEqual(db.IPs, []string{"10.20.0.5", "10.20.0.6"}) || db.Registry != registryExternal {
		t.Errorf("db: %+v", db)
	}
	// The same config gives the same table (a restart changes nothing).
	if again := buildNameTable(dnsServices(t, dnsTestServices), nil, vips); !reflect.DeepEqual(again, got) {
		t.Errorf("rebuilt table differs:\n%+v\n%+v", again, got)
	}
}

// Registered workloads behind a service get names of their own under its hosts; entries the
// selector does not select, of another namespace, or without an IP address get none.
func TestNameTableNamesRegisteredWorkloads(t *testing.T) {
	svcs := dnsServices(t, `services:
  - name: app
    namespace: vms
    hosts: [app.vms.svc.cluster.local]
    ports: [{number: 8080, name: http, protocol: HTTP}]
    workload_selector: {labels: {app: app}}
`)
	entry := func(ns, name, addr string, labels map[string]string) *registrar.WorkloadEntry {
		return &registrar.WorkloadEntry{ObjectMeta: registrar.ObjectMeta{Name: name, Namespace: ns},
			Spec: registrar.WorkloadEntrySpec{Address: addr, Labels: labels}}
	}
	app := map[string]string{"app": "app"}
	got := buildNameTable(svcs, []*registrar.WorkloadEntry{
		entry("vms", "app-10.1.2.3-vmnet", "10.1.2.3", app),
		entry("vms", "other-10.1.2.4", "10.1.2.4", map[string]string{"app": "other"}),
		entry("elsewhere", "app-10.1.2.5", "10.1.2.5", app),
		entry("vms", "app-by-name", "vm.example.org", app),
	}, netip.MustParsePrefix("240.240.0.0/16"))
	if w := got["app-10-1-2-3-vmnet.app.vms.svc.cluster.local"]; !reflect.DeepEqual(w.IPs, []string{"10.1.2.3"}) {
		t.Errorf("the registered workload's own name: %+v", w)
	}
	if len(got) != 2 {
		t.Errorf("table %+v; want the service and its one selected workload with an IP", got)
	}
}

// TestNameTableOverADS: a VM node (not router~) asks for the NameTable on a real ADS stream,
// gets the table of the services, ACKs it, and gets a new one when the services change.
func TestNameTableOverADS(t *testing.T) {
	svcs := dnsServices(t, dnsTestServices)
	s := New(Options{Services: svcs, Debounce: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, DNSVIPRange: "240.240.0.0/16"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runDone := make(chan error, 1)
	runCtx, stopRun := context.WithCancel(ctx)
	go func() { runDone <- s.Run(runCtx, ln) }()
	defer func() {
		stopRun()
		if err := <-runDone; err != nil {
			t.Error(err)
		}
	}()

	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	streamCtx, endStream := context.WithCancel(ctx)
	defer endStream()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(streamCtx)
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sidecar~127.0.0.5~vm1.ns1~ns1.svc.cluster.local"}
	// As pilot-agent sends it: no names (the whole table), no version.
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: NameTableType}); err != nil {
		t.Fatal(err)
	}
	recvTable := func() (*discoverygrpc.DiscoveryResponse, map[string]nameInfo) {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.TypeUrl != NameTableType || len(resp.Resources) != 1 || resp.Resources[0].TypeUrl != NameTableType {
			t.Fatalf("response type %s with %d resources", resp.TypeUrl, len(resp.Resources))
		}
		return resp, wireNameTable(t, resp.Resources[0].Value)
	}
	resp, table := recvTable()
	if want := buildNameTable(svcs, nil, netip.MustParsePrefix("240.240.0.0/16")); !reflect.DeepEqual(table, want) {
		t.Fatalf("served table %+v\nwant %+v", table, want)
	}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: NameTableType,
		VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}

	// A config reload adds a service: a new table is pushed on the same stream.
	more := dnsServices(t, dnsTestServices+`  - name: new
    namespace: ns2
    hosts: [new.ns2.svc.cluster.local]
    ports: [{number: 80, name: http, protocol: HTTP}]
    endpoints: [{address: 10.0.0.3}]
`)
	s.SetServices(more)
	resp2, table2 := recvTable()
	if resp2.VersionInfo == resp.VersionInfo {
		t.Errorf("new table with the same version %q", resp.VersionInfo)
	}
	ni, ok := table2["new.ns2.svc.cluster.local"]
	if !ok || ni.Shortname != "new" || ni.Namespace != "ns2" || len(ni.IPs) != 1 {
		t.Fatalf("new service not in the pushed table: %+v", table2)
	}
	for h, old := range table {
		if !reflect.DeepEqual(table2[h], old) {
			t.Errorf("%s changed from %+v to %+v", h, old, table2[h])
		}
	}
	endStream()
}
