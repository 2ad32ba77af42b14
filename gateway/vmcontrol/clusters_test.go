package vmcontrol_test

import (
	"context"
	"io"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

// clusterSide is one cluster behind the front: its token issuer, its istiod (a test upstream)
// and, when it has one, its registrar writing to its own store.
type clusterSide struct {
	name, issuer string
	up           *testUpstream
	store        *registrar.MemoryStore
	reg          *registrar.Registrar
}

// TestRegistrationInTheVMsCluster: one front for clusters a, b and c, with a registrar (and a
// store) for a and for b only. A VM of b is written into b's store only and its ADS stream goes
// to b's upstream only; a VM of a likewise into a's; a VM of c is refused, with what to fix,
// before any upstream is dialed. Before registrars per cluster, one registrar (one store) took
// every cluster's VMs. A VM of b naming a group that only a's store holds is refused with a
// message naming the cluster looked in (the namespace alone is the same in every cluster).
func TestRegistrationInTheVMsCluster(t *testing.T) {
	p := newPKI(t)
	sides := map[string]*clusterSide{}
	var issuers []authn.IssuerConfig
	var ups []vmcontrol.UpstreamConfig
	regs := map[string]vmcontrol.Registrar{}
	for _, name := range []string{"cluster-a", "cluster-b", "cluster-c"} {
		s := &clusterSide{name: name, issuer: "https://" + name + ".test", up: startUpstream(t, p, "")}
		sides[name] = s
		issuers = append(issuers, authn.IssuerConfig{Issuer: s.issuer, Cluster: name, JWKS: testkit.NewIssuer(t, s.issuer).JWKS(t)})
		uc := p.upstreamConfig(s.up, vmcontrol.IdentityForward)
		uc.Cluster = name
		ups = append(ups, uc)
		if name == "cluster-c" {
			continue // no store: its VMs must be refused
		}
		s.store = registrar.NewMemoryStore()
		groups := []string{"web"}
		if name == "cluster-a" {
			groups = append(groups, "api") // in a's store only
		}
		for _, g := range groups {
			if _, err := s.store.WorkloadGroups().Create(t.Context(), &registrar.WorkloadGroup{
				ObjectMeta: registrar.ObjectMeta{Name: g, Namespace: vmNS},
				Spec:       registrar.WorkloadGroupSpec{Template: registrar.WorkloadEntrySpec{ServiceAccount: vmSA}},
			}); err != nil {
				t.Fatal(err)
			}
		}
		var err error
		if s.reg, err = registrar.New(registrar.Config{Instance: "gw-1"}, registrar.Options{Store: s.store}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { s.reg.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		regs[name] = s.reg
	}
	v, err := authn.New(context.Background(), authn.Config{Issuers: issuers}, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	p.verifier = v
	g := startFront(t, p, vmcontrol.Config{Upstreams: ups}, vmcontrol.Options{Registrars: regs})
	// connectTo opens the ADS stream of a VM of cluster (its issuer's token, its CLUSTER_ID) at
	// ip, joining group, and returns the status of its first answer. Each VM has a connection of
	// its own, as VMs do: one connection shared by every VM of the test once collected gRPC's
	// ping strikes (the client's BDP pings) and was closed with too_many_pings under -race.
	connectTo := func(cluster, group, ip string) error {
		ads := discoveryv3.NewAggregatedDiscoveryServiceClient(g.dial(t, p))
		s, err := ads.StreamAggregatedResources(withToken(t.Context(), testkit.NewIssuer(t, sides[cluster].issuer).Token(t, vmNS, vmSA)))
		if err != nil {
			return err
		}
		// Send says io.EOF when the front has already ended the stream (a refusal that came
		// before the request was sent); Recv then returns the stream's status.
		if err := s.Send(&discoveryv3.DiscoveryRequest{Node: vmNode(group, ip, cluster), TypeUrl: resourcev3.ClusterType}); err != nil && err != io.EOF {
			return err
		}
		_, err = s.Recv() // the test upstream echoes the request once the entry is written
		return err
	}
	connect := func(cluster, ip string) error { return connectTo(cluster, "web", ip) }
	entries := func(s *clusterSide) []string {
		list, _, err := s.store.WorkloadEntries().List(t.Context(), vmNS, registrar.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range list {
			out = append(out, e.Spec.Address)
		}
		return out
	}

	if err := connect("cluster-b", "10.0.0.2"); err != nil {
		t.Fatalf("VM of cluster-b: %v", err)
	}
	if a, b := entries(sides["cluster-a"]), entries(sides["cluster-b"]); len(a) != 0 || len(b) != 1 || b[0] != "10.0.0.2" {
		t.Fatalf("after the VM of cluster-b: entries of a %v, of b %v; want none in a, 10.0.0.2 in b", a, b)
	}
	if err := connect("cluster-a", "10.0.0.1"); err != nil {
		t.Fatalf("VM of cluster-a: %v", err)
	}
	if a, b := entries(sides["cluster-a"]), entries(sides["cluster-b"]); len(a) != 1 || a[0] != "10.0.0.1" || len(b) != 1 || b[0] != "10.0.0.2" {
		t.Fatalf("after the VM of cluster-a: entries of a %v, of b %v; want 10.0.0.1 in a, 10.0.0.2 in b", a, b)
	}
	for _, name := range []string{"cluster-a", "cluster-b"} {
		s := sides[name]
		if calls := s.up.seen(); len(calls) != 1 || calls[0].method != vmcontrol.MethodADS {
			t.Errorf("upstream of %s saw %d calls, want its own VM's ADS stream only", name, len(calls))
		}
		if regs := s.reg.Registrations(); len(regs) != 1 || regs[0].Cluster != name {
			t.Errorf("registrations of %s's registrar: %+v; want its own VM, with its cluster", name, regs)
		}
	}

	err = connect("cluster-c", "10.0.0.3")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `no registration store is configured for cluster "cluster-c"`) ||
		!strings.Contains(err.Error(), "kubernetes.clusters") {
		t.Fatalf("VM of cluster-c (no store): %v; want FailedPrecondition saying to give cluster-c a store", err)
	}
	if n := sides["cluster-c"].up.accepted.Load(); n != 0 {
		t.Fatalf("cluster-c's upstream accepted %d connections; want none: the refusal comes first", n)
	}
	if a, b := entries(sides["cluster-a"]), entries(sides["cluster-b"]); len(a) != 1 || len(b) != 1 {
		t.Fatalf("after the VM of cluster-c: entries of a %v, of b %v; want it in neither", a, b)
	}

	err = connectTo("cluster-b", "api", "10.0.0.4")
	if want := `no WorkloadGroup "api" in namespace "` + vmNS + `" of cluster "cluster-b"`; status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), want) {
		t.Fatalf("VM of cluster-b joining a group of cluster-a only: %v; want FailedPrecondition %s", err, want)
	}
	if a, b := entries(sides["cluster-a"]), entries(sides["cluster-b"]); len(a) != 1 || len(b) != 1 {
		t.Fatalf("after the VM of cluster-b joining api: entries of a %v, of b %v; want it in neither", a, b)
	}
	if calls := sides["cluster-b"].up.seen(); len(calls) != 1 {
		t.Fatalf("upstream of cluster-b saw %d calls, want only the first VM's", len(calls))
	}
}

// A front takes one registrar for every cluster or one per cluster, not both.
func TestRegistrarOrRegistrars(t *testing.T) {
	p := newPKI(t)
	r, err := registrar.New(registrar.Config{Instance: "gw-1"}, registrar.Options{Store: registrar.NewMemoryStore()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{{Cluster: "c1", Builtin: true}}}
	cfg.TLS.CertFile, cfg.TLS.KeyFile = p.certFile, p.keyFile
	_, err = vmcontrol.New(cfg, vmcontrol.Options{Verifier: p.verifier, Registrar: r, Registrars: map[string]vmcontrol.Registrar{"c1": r}})
	if err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("New with Registrar and Registrars: %v; want refused", err)
	}
}
