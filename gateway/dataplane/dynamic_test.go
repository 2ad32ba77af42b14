package dataplane

import (
	"bytes"
	"crypto/tls"
	"errors"
	"testing"

	"go.uber.org/zap"
)

const xdsYAML = "listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}\n  - {name: static, kind: mesh, address: 127.0.0.1:0}\n"

func dialMesh(t *testing.T, g *testGateway, p *testPKI, name string, alpn ...string) error {
	t.Helper()
	c, err := tls.Dial("tcp", g.addr("mesh"), p.clientConfig(name, alpn...))
	if err != nil {
		return err
	}
	defer c.Close()
	got, err := exchange(c, []byte("ping"))
	if err == nil && !bytes.Equal(got, []byte("ping")) {
		t.Fatalf("echo = %q", got)
	}
	return err
}

func TestDynamicClustersAppearChangeAndDisappear(t *testing.T) {
	pki := newPKI(t)
	a := startBackend(t, pki, reviews)
	b := startBackend(t, pki, reviews)
	g := startGateway(t, xdsYAML)
	if g.Ready() {
		t.Fatal("ready before the xds listener had its first table")
	}
	if err := dialMesh(t, g, pki, reviews, "istio"); !isAlert(err, "unrecognized name") {
		t.Fatalf("before any table: %v; want unrecognized_name", err)
	}
	if err := g.SetMeshClusters("mesh", []ClusterSpec{{Name: reviews, Endpoints: []EndpointSpec{{Address: a.addr(), Locality: "r/z/s", Network: "n1"}}}}); err != nil {
		t.Fatal(err)
	}
	if !g.Ready() {
		t.Fatal("not ready after the first table")
	}
	if err := dialMesh(t, g, pki, reviews, "istio"); err != nil {
		t.Fatalf("after the first table: %v", err)
	}
	// A connection open across the next swaps keeps its endpoint.
	open, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := g.SetMeshClusters("mesh", []ClusterSpec{{Name: reviews, Endpoints: []EndpointSpec{{Address: b.addr()}}}}); err != nil {
		t.Fatal(err)
	}
	if err := dialMesh(t, g, pki, reviews, "istio"); err != nil {
		t.Fatalf("after the change: %v", err)
	}
	if len(a.hellos()) != 2 || len(b.hellos()) != 1 {
		t.Fatalf("hellos: a=%d b=%d; want 2 and 1", len(a.hellos()), len(b.hellos()))
	}
	if err := g.SetMeshClusters("mesh", nil); err != nil {
		t.Fatal(err)
	}
	if err := dialMesh(t, g, pki, reviews, "istio"); !isAlert(err, "unrecognized name") {
		t.Fatalf("after removal: %v; want unrecognized_name", err)
	}
	if got, err := exchange(open, []byte("still here")); err != nil || string(got) != "still here" {
		t.Fatalf("connection open across the swaps: %q, %v", got, err)
	}
	if !g.Ready() {
		t.Fatal("an empty table is still a table: want ready")
	}
}

func TestDynamicProblemsAreReportedNotFatal(t *testing.T) {
	pki := newPKI(t)
	other := "outbound_.9080_.v2_.reviews.default.svc.cluster.local"
	a := startBackend(t, pki, reviews, other)
	g := startGateway(t, xdsYAML)
	err := g.SetMeshClusters("mesh", []ClusterSpec{
		{Name: "reviews", Endpoints: []EndpointSpec{{Address: a.addr()}}},
		{Name: reviews, Endpoints: []EndpointSpec{{Address: a.addr()}, {Address: "nowhere"}, {Address: a.addr(), Weight: 2}}},
		{Name: reviews, Endpoints: []EndpointSpec{{Address: "127.0.0.1:1"}}},
		{Name: other, LBPolicy: "random", ALPN: []string{"istio-peer-exchange"}, Endpoints: []EndpointSpec{{Address: a.addr()}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for reason, want := range map[string]float64{"invalid_name": 1, "duplicate_cluster": 1, "invalid_endpoint": 1, "duplicate_endpoint": 1, "invalid_lb_policy": 1} {
		if v := g.counter("ewgate_dynamic_route_problems_total", map[string]string{"listener": "mesh", "reason": reason}); v != want {
			t.Errorf("problems{reason=%s} = %v, want %v", reason, v, want)
		}
	}
	if err := dialMesh(t, g, pki, reviews, "istio"); err != nil {
		t.Fatalf("the first listing of a duplicate must serve: %v", err)
	}
	c := g.Snapshot().Table("mesh").exact[reviews]
	if len(c.Endpoints) != 1 || c.Endpoints[0].Weight != 3 {
		t.Fatalf("merged endpoints = %+v; want one with weight 3", c.Endpoints)
	}
	// The chain's ALPN list is enforced per cluster.
	if err := dialMesh(t, g, pki, other, "istio"); !isAlert(err, "unrecognized name") {
		t.Fatalf("ALPN outside the chain's list: %v; want refused", err)
	}
	if err := dialMesh(t, g, pki, other, "istio-peer-exchange"); err != nil {
		t.Fatalf("ALPN in the chain's list: %v", err)
	}
	if g.logs.FilterField(zap.String("reason", "duplicate_cluster")).Len() != 1 {
		t.Fatal("duplicate not logged")
	}
}

func TestSetMeshClustersRefusals(t *testing.T) {
	g := startGateway(t, xdsYAML)
	if err := g.SetMeshClusters("static", nil); !errors.Is(err, ErrNotXDSListener) {
		t.Fatalf("static listener: %v", err)
	}
	if err := g.SetMeshClusters("nope", nil); !errors.Is(err, ErrUnknownListener) {
		t.Fatalf("unknown listener: %v", err)
	}
	fresh := New(Options{})
	if err := fresh.SetMeshClusters("mesh", nil); !errors.Is(err, ErrUnknownListener) {
		t.Fatalf("before Apply: %v", err)
	}
}

func TestEndpointHealthSurvivesPushes(t *testing.T) {
	g := startGateway(t, xdsYAML)
	spec := []ClusterSpec{{Name: reviews, LBPolicy: Maglev, Endpoints: []EndpointSpec{{Address: "127.0.0.1:1"}, {Address: "127.0.0.1:2"}}}}
	if err := g.SetMeshClusters("mesh", spec); err != nil {
		t.Fatal(err)
	}
	c1 := g.Snapshot().Table("mesh").exact[reviews]
	c1.Endpoints[0].state.ejectedUntil.Store(1 << 62)
	spec2 := append(spec, ClusterSpec{Name: "outbound_.1_._.x.ns.svc.cluster.local", Endpoints: []EndpointSpec{{Address: "127.0.0.1:3"}}})
	if err := g.SetMeshClusters("mesh", spec2); err != nil {
		t.Fatal(err)
	}
	c2 := g.Snapshot().Table("mesh").exact[reviews]
	if c2 != c1 {
		t.Fatal("an unchanged cluster was rebuilt (its maglev table too)")
	}
	spec2[0].Endpoints = spec2[0].Endpoints[:1]
	if err := g.SetMeshClusters("mesh", spec2); err != nil {
		t.Fatal(err)
	}
	c3 := g.Snapshot().Table("mesh").exact[reviews]
	if c3 == c1 || len(c3.Endpoints) != 1 || c3.Endpoints[0].state.ejectedUntil.Load() != 1<<62 {
		t.Fatal("the ejection of an endpoint that stayed was forgotten by a push")
	}
}
