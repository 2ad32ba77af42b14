package scenarios

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Subsets as istiod publishes them to ewgate standing in for its east-west gateway: a mesh
// service (a ServiceEntry selecting four WorkloadEntries, two labelled version v1 and two v2,
// each an mTLS endpoint on a loopback TLS backend that says which version answered) and a
// DestinationRule with subsets v1, v2 and v3 (v3 selects no endpoint). istiod publishes
// outbound_.<port>_.<subset>_.<host> for each subset; through ewgate the v2 name reaches only
// v2 backends, the plain name reaches both versions, v3 is refused with the TLS alert
// internal_error (no endpoint), and an SNI istiod never published with unrecognized_name.
// Removing v2 from the DestinationRule removes its route for new connections while an open
// one goes on. The listener's export allow-list gives this client only this service: another
// service istiod publishes (exported only to 10.8.0.0/16) is refused as not_exported
// (access_denied) whatever istiod says.
func TestSubsetsThroughEwgate(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 2*time.Minute)
	ns := cluster.Namespace(t, "subsets")
	ca, err := harness.NewCA("subsets backends")
	if err != nil {
		t.Fatal(err)
	}
	const port = 9443
	host, other := "echo."+ns+".svc.cluster.local", "other."+ns+".svc.cluster.local"
	name := func(subset, h string) string { return fmt.Sprintf("outbound_.%d_.%s_.%s", port, subset, h) }
	plain, v1, v2, v3 := name("", host), name("v1", host), name("v2", host), name("v3", host)

	if _, err := cluster.API.CreateGateway(ctx, ns, "eastwest", harness.EastWestGateway(15443)); err != nil {
		t.Fatal(err)
	}
	// Two services of one port: echo's endpoints are the WorkloadEntries labelled app: echo.
	for _, svc := range []struct{ name, host string }{{"echo", host}, {"other", other}} {
		if _, err := cluster.API.CreateServiceEntry(ctx, ns, svc.name, map[string]any{
			"hosts":            []any{svc.host},
			"location":         "MESH_INTERNAL",
			"resolution":       "STATIC",
			"ports":            []any{map[string]any{"number": int64(port), "name": "tls", "protocol": "TLS"}},
			"workloadSelector": map[string]any{"labels": map[string]any{"app": svc.name}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	byVersion := map[string][]string{}
	for i, v := range []string{"v1", "v1", "v2", "v2", "other"} {
		app := "echo"
		if v == "other" {
			app = "other"
		}
		addr := netip.MustParseAddrPort(startNamedTLS(t, ca, "127.0.0.1:0", v, plain, v1, v2, name("", other)).addr)
		byVersion[v] = append(byVersion[v], addr.String())
		if _, err := cluster.API.CreateWorkloadEntry(ctx, ns, fmt.Sprintf("%s-%d", app, i), nil, map[string]any{
			"address": addr.Addr().String(),
			"ports":   map[string]any{"tls": int64(addr.Port())},
			"labels":  map[string]any{"app": app, "version": v, "security.istio.io/tlsMode": "istio"},
		}); err != nil {
			t.Fatal(err)
		}
	}
	subset := func(v string) any {
		return map[string]any{"name": v, "labels": map[string]any{"version": v}}
	}
	dr := harness.Istio(harness.DestinationRuleGVR, ns, "echo", nil, map[string]any{
		"host": host, "subsets": []any{subset("v1"), subset("v2"), subset("v3")},
	})
	if _, err := cluster.API.Create(ctx, harness.DestinationRuleGVR, dr); err != nil {
		t.Fatal(err)
	}

	admin, mesh := freeAddr(t), freeAddr(t)
	gw := harness.StartEwgate(t, admin, fmt.Sprintf(`
admin: {address: %s}
listeners:
  - name: mesh
    kind: mesh
    address: %s
    routes_from: xds
    export:
      - {hosts: [%s]}
      - {hosts: [%s], from_cidrs: [10.8.0.0/16]}   # other, but not to this loopback client
xds:
  server: %s
  node: {ip: 127.0.0.1, name: ewgate-subsets, namespace: istio-system, cluster_id: %s, labels: {istio: eastwestgateway}}
`, admin, mesh, host, other, cluster.Istiod.XDSAddr, cluster.Istiod.ClusterID))

	all := append(append([]string(nil), byVersion["v1"]...), byVersion["v2"]...)
	want := map[string][]string{plain: all, v1: byVersion["v1"], v2: byVersion["v2"], v3: nil, name("", other): byVersion["other"]}
	if err := gw.WaitRoutes(ctx, "every subset with its endpoints, and the export rules", func(r string) bool {
		if !strings.Contains(r, `"export": [`) {
			return false
		}
		for sni, eps := range want {
			got, ok := routeEndpoints(r, sni)
			if !ok || strings.Join(got, ",") != strings.Join(sorted(eps), ",") {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}

	open, ver := dialVersion(t, mesh, ca, v2)
	if ver != "v2" {
		t.Fatalf("%s answered by %s", v2, ver)
	}
	t.Cleanup(func() { open.Close() })
	for i := range 6 {
		c, ver := dialVersion(t, mesh, ca, v2)
		c.Close()
		if ver != "v2" {
			t.Fatalf("connection %d with SNI %s answered by %s; want only v2", i, v2, ver)
		}
	}
	seen := map[string]bool{}
	for i := 0; i < 16 && len(seen) < 2; i++ {
		c, ver := dialVersion(t, mesh, ca, plain)
		c.Close()
		seen[ver] = true
	}
	if !seen["v1"] || !seen["v2"] || len(seen) != 2 {
		t.Fatalf("the plain name %s reached %v; want v1 and v2", plain, seen)
	}

	// A subset with no endpoint, and a name istiod never published: the client reads why.
	if err := refusedWith(mesh, ca, v3, "internal error"); err != nil {
		t.Fatal(err)
	}
	if err := refusedWith(mesh, ca, name("v9", host), "unrecognized name"); err != nil {
		t.Fatal(err)
	}
	// istiod publishes other.<ns> (it is in the routes above), the listener does not export it.
	if err := refusedWith(mesh, ca, name("", other), "access denied"); err != nil {
		t.Fatal(err)
	}
	m, err := gw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, result := range []string{"no_endpoint", "unknown_sni", "not_exported"} {
		if harness.MetricSum(m, "ewgate_connections_total", `listener="mesh"`, `result="`+result+`"`) != 1 {
			t.Fatalf("ewgate_connections_total{result=%q} is not 1:\n%s", result, grepLines(m, "ewgate_connections_total"))
		}
	}

	// v2 leaves the DestinationRule: its route goes, the open v2 connection stays.
	cur, err := cluster.API.Dynamic.Resource(harness.DestinationRuleGVR).Namespace(ns).Get(ctx, "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Object["spec"].(map[string]any)["subsets"] = []any{subset("v1"), subset("v3")}
	if _, err := cluster.API.Dynamic.Resource(harness.DestinationRuleGVR).Namespace(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := gw.WaitRoutes(ctx, "v2 removed, v1 kept", func(r string) bool {
		_, has2 := routeEndpoints(r, v2)
		_, has1 := routeEndpoints(r, v1)
		return !has2 && has1
	}); err != nil {
		t.Fatal(err)
	}
	if got := echo(t, open, "still open"); got != "still open" {
		t.Fatalf("open v2 connection after the subset was removed: %q", got)
	}
	if err := refusedWith(mesh, ca, v2, "unrecognized name"); err != nil {
		t.Fatalf("after v2 left the DestinationRule: %v", err)
	}
}

// dialVersion makes an Istio-style TLS connection through ewgate that verifies the backend's
// certificate for sni, and returns it with the version the backend said.
func dialVersion(t *testing.T, mesh string, ca *harness.CA, sni string) (*tls.Conn, string) {
	t.Helper()
	c, err := dialVerified(context.Background(), mesh, ca, sni)
	if err != nil {
		t.Fatalf("TLS through ewgate with SNI %s: %v", sni, err)
	}
	line, err := bufio.NewReader(io.LimitReader(c, 16)).ReadString('\n')
	if err != nil {
		c.Close()
		t.Fatalf("reading the backend's version through ewgate (%s): %v", sni, err)
	}
	return c, strings.TrimSuffix(line, "\n")
}

// dialVerified makes an Istio-style TLS connection (SNI, ALPN istio) through the gateway at mesh,
// verifying the backend's certificate for sni against the test's CA.
func dialVerified(ctx context.Context, mesh string, ca *harness.CA, sni string) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{ServerName: sni, NextProtos: []string{"istio"}, RootCAs: ca.Pool()}}
	c, err := d.DialContext(ctx, "tcp", mesh)
	if err != nil {
		return nil, err
	}
	tc := c.(*tls.Conn)
	tc.SetDeadline(time.Now().Add(time.Minute))
	return tc, nil
}

// refusedWith checks that a handshake with sni through ewgate fails with the TLS alert named
// (as Go's crypto/tls prints it: "remote error: tls: <alert>").
func refusedWith(mesh string, ca *harness.CA, sni, alert string) error {
	c, err := dialVerified(context.Background(), mesh, ca, sni)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s was routed; want the TLS alert %q", sni, alert)
	}
	if !strings.Contains(err.Error(), "remote error: tls: "+alert) {
		return fmt.Errorf("%s: %v; want the TLS alert %q", sni, err, alert)
	}
	return nil
}

// routeEndpoints finds the mesh listener's route for sni in /debug/routes and returns its
// endpoint addresses, sorted.
func routeEndpoints(body, sni string) ([]string, bool) {
	var v struct {
		Listeners map[string]struct {
			Routes []struct {
				Match     string `json:"match"`
				Endpoints []struct {
					Address string `json:"address"`
				} `json:"endpoints"`
			} `json:"routes"`
		} `json:"listeners"`
	}
	if json.Unmarshal([]byte(body), &v) != nil {
		return nil, false
	}
	for _, r := range v.Listeners["mesh"].Routes {
		if r.Match == sni {
			var out []string
			for _, e := range r.Endpoints {
				out = append(out, e.Address)
			}
			return sorted(out), true
		}
	}
	return nil, false
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
