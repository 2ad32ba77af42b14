package dataplane

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// closedAddr is a loopback address nothing listens on (a port bound, then released).
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// A name that is routed but reaches no endpoint is answered with a TLS internal_error alert
// that the client's TLS stack reports, not with a bare close; the result label stays.
func TestNoEndpointIsAnInternalErrorAlert(t *testing.T) {
	pki := newPKI(t)
	g := startGateway(t, "listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}\n")
	const empty = "outbound_.9080_.v3_.reviews.default.svc.cluster.local"
	if err := g.SetMeshClusters("mesh", []ClusterSpec{
		{Name: reviews, Endpoints: []EndpointSpec{{Address: closedAddr(t)}}},
		{Name: empty},
	}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ sni, result string }{{empty, "no_endpoint"}, {reviews, "connect_failed"}} {
		before := g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": tt.sni, "result": tt.result})
		c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(tt.sni, "istio"))
		if err == nil {
			c.Close()
			t.Fatalf("%s: handshake succeeded; want a refusal", tt.sni)
		}
		if !strings.Contains(err.Error(), "remote error: tls: internal error") {
			t.Fatalf("%s (%s): client error %q; want the TLS alert internal_error", tt.sni, tt.result, err)
		}
		testkit.Eventually(t, tt.result+" counted", func() bool {
			return g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": tt.sni, "result": tt.result}) == before+1
		})
	}
}

const exportYAML = `listeners:
  - name: mesh
    kind: mesh
    address: 127.0.0.1:0
    export:
      - {namespaces: [shop]}
      - {hosts: ["*.pay.svc.cluster.local", db.example.internal]}
      - {hosts: [api.vault.svc.cluster.local], from_cidrs: [CIDR]}
clusters:
`

// The export allow-list: a host no rule names is refused as not_exported with a TLS
// access_denied alert, whether a cluster for it exists or not; from_cidrs holds a rule to
// clients of its ranges.
func TestExportAllowList(t *testing.T) {
	pki := newPKI(t)
	names := map[string]string{ // SNI -> the host's part in the list
		"outbound_.80_._.cart.shop.svc.cluster.local":     "namespace shop",
		"outbound_.80_.v2_.cart.shop.svc.cluster.local":   "namespace shop, subset v2",
		"outbound_.80_._.card.pay.svc.cluster.local":      "*.pay.svc.cluster.local",
		"outbound_.5432_._.db.example.internal":           "db.example.internal",
		"outbound_.80_._.api.vault.svc.cluster.local":     "from_cidrs",
		"outbound_.80_._.cart.shopping.svc.cluster.local": "",
		"outbound_.80_._.shop.svc.cluster.local":          "",
		"outbound_.80_._.pay.svc.cluster.local":           "",
		"outbound_.5432_._.db2.example.internal":          "",
	}
	var clusters string
	for sni := range names {
		be := startBackend(t, pki, sni)
		clusters += cluster(sni, "mesh", "round_robin", be.addr())
	}
	for _, tt := range []struct {
		cidr      string
		vaultOpen bool
	}{{"10.8.0.0/16", false}, {"127.0.0.0/8", true}} {
		g := startGateway(t, strings.Replace(exportYAML, "CIDR", tt.cidr, 1)+clusters)
		refused := 0.0
		for sni, why := range names {
			want := why != "" && (why != "from_cidrs" || tt.vaultOpen)
			c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(sni, "istio"))
			if want {
				if err != nil {
					t.Fatalf("from_cidrs %s: %s (%s) refused: %v", tt.cidr, sni, why, err)
				}
				c.Close()
				continue
			}
			if err == nil {
				c.Close()
				t.Fatalf("from_cidrs %s: %s routed; want not_exported", tt.cidr, sni)
			}
			if !strings.Contains(err.Error(), "remote error: tls: access denied") {
				t.Fatalf("from_cidrs %s: %s: client error %q; want the TLS alert access_denied", tt.cidr, sni, err)
			}
			refused++
		}
		testkit.Eventually(t, "not_exported counted", func() bool {
			return g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": "", "result": "not_exported"}) == refused
		})
	}
}

// A reload changes the allow-list for new connections; a connection open across it goes on.
func TestExportFollowsReload(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	open, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	y := strings.Replace(meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())),
		"127.0.0.1:0}", "127.0.0.1:0, export: [{namespaces: [ratings]}]}", 1)
	f, err := parseConfig([]byte(y), "reload.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Relay.Engine = testRelay
	if err := g.Apply(f); err != nil {
		t.Fatal(err)
	}
	if err := dialMesh(t, g, pki, reviews, "istio"); !isAlert(err, "access denied") {
		t.Fatalf("after the reload that stopped exporting namespace default: %v; want access_denied", err)
	}
	if got, err := exchange(open, []byte("still here")); err != nil || string(got) != "still here" {
		t.Fatalf("the connection open across the reload: %q, %v", got, err)
	}
}

func TestNamespaceOf(t *testing.T) {
	for host, want := range map[string]string{
		"cart.shop.svc.cluster.local": "shop",
		"cart.shop.svc.example":       "shop",
		"a.b.shop.svc.cluster.local":  "", // <svc>.<ns>.svc: b.shop is not a namespace
		"cart.shop.svc":               "",
		"db.example.internal":         "",
		"shop.svc.cluster.local":      "",
	} {
		if got := namespaceOf(host); got != want {
			t.Errorf("namespaceOf(%q) = %q, want %q", host, got, want)
		}
	}
}
