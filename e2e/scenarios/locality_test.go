package scenarios

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Locality failover as istiod computes it for a gateway node and ewgate applies it: a mesh
// service with a WorkloadEntry in ewgate's own locality and one in another region, a
// DestinationRule with localityLbSetting and outlierDetection, ewgate with xds.node.locality.
// istiod's EDS gives the local endpoint priority 0 and the other priority 1 (read back from
// /debug/routes); connections go to priority 0; when its backend stops they fail over to
// priority 1 (the first connect failure ejects it, the connection is retried); when it is
// back and the ejection time is over they fail back.
func TestLocalityFailoverFromIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 2*time.Minute)
	ns := cluster.Namespace(t, "locality")
	host := "loc." + ns + ".svc.cluster.local"

	ca, err := harness.NewCA("locality backends CA")
	if err != nil {
		t.Fatal(err)
	}
	// Two backends on one port of two loopback addresses, each answering with its locality.
	port := freePortOn(t, "127.0.0.11", "127.0.0.12")
	sni := fmt.Sprintf("outbound_.%d_._.%s", port, host)
	localAddr := net.JoinHostPort("127.0.0.11", strconv.Itoa(port))
	local := startNamedTLS(t, ca, localAddr, "r1/z1/s1", sni)
	startNamedTLS(t, ca, net.JoinHostPort("127.0.0.12", strconv.Itoa(port)), "r2/z2/s2", sni)
	if _, err := cluster.API.CreateGateway(ctx, ns, "eastwest", harness.EastWestGateway(15443)); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateServiceEntry(ctx, ns, "loc", map[string]any{
		"hosts":            []any{host},
		"location":         "MESH_INTERNAL",
		"resolution":       "STATIC",
		"ports":            []any{map[string]any{"number": int64(port), "name": "tls", "protocol": "TLS"}},
		"workloadSelector": map[string]any{"labels": map[string]any{"app": "loc"}},
	}); err != nil {
		t.Fatal(err)
	}
	for name, e := range map[string]struct{ addr, locality string }{
		"loc-local": {"127.0.0.11", "r1/z1/s1"}, "loc-remote": {"127.0.0.12", "r2/z2/s2"},
	} {
		if _, err := cluster.API.CreateWorkloadEntry(ctx, ns, name, nil, map[string]any{
			"address":  e.addr,
			"locality": e.locality,
			"labels":   map[string]any{"app": "loc", "security.istio.io/tlsMode": "istio"},
		}); err != nil {
			t.Fatal(err)
		}
	}
	destinationRule := func(name string, localityLB map[string]any) {
		t.Helper()
		if _, err := cluster.API.Create(ctx, harness.DestinationRuleGVR, harness.Istio(harness.DestinationRuleGVR, ns, name, nil, map[string]any{
			"host": host,
			"trafficPolicy": map[string]any{
				"loadBalancer":     map[string]any{"localityLbSetting": localityLB},
				"outlierDetection": map[string]any{"consecutive5xxErrors": int64(1), "interval": "1s", "baseEjectionTime": "2s"},
			},
		})); err != nil {
			t.Fatal(err)
		}
	}
	destinationRule("loc", map[string]any{"enabled": true})

	admin, mesh := freeAddr(t), freeAddr(t)
	gw := harness.StartEwgate(t, admin, fmt.Sprintf(`
admin: {address: %s}
listeners:
  - {name: mesh, kind: mesh, address: %s, routes_from: xds}
xds:
  server: %s
  node:
    ip: 127.0.0.1
    name: ewgate-locality
    namespace: istio-system
    cluster_id: %s
    locality: r1/z1/s1
    labels: {istio: eastwestgateway}
`, admin, mesh, cluster.Istiod.XDSAddr, cluster.Istiod.ClusterID))

	// istiod's EDS to the gateway node carries the priorities (relative to ewgate's locality).
	if err := gw.WaitRoutes(ctx, "priorities from istiod", func(body string) bool {
		rv, ok := routeOf(body, sni)
		return ok && len(rv.Endpoints) == 2 && rv.priorityOf("127.0.0.11:"+strconv.Itoa(port)) == 0 &&
			rv.priorityOf("127.0.0.12:"+strconv.Itoa(port)) == 1 && rv.PriorityLoad["0"] == 100
	}); err != nil {
		t.Fatal(err)
	}
	answers := func(n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for range n {
			name, err := whoAnswers(ctx, mesh, sni, ca)
			if err != nil {
				t.Fatalf("connection through ewgate: %v", err)
			}
			got[name]++
		}
		return got
	}
	if got := answers(10); got["r1/z1/s1"] != 10 {
		t.Fatalf("all healthy: answers %v; want all 10 from the gateway's own locality", got)
	}

	// The local backend stops: no connection fails, every one goes to priority 1.
	local.stop()
	if got := answers(10); got["r2/z2/s2"] != 10 {
		t.Fatalf("priority 0 down: answers %v; want all 10 from priority 1", got)
	}
	if err := gw.WaitRoutes(ctx, "priority 1 takes the load", func(body string) bool {
		rv, ok := routeOf(body, sni)
		return ok && rv.PriorityLoad["1"] == 100
	}); err != nil {
		t.Fatal(err)
	}

	// It comes back: once its ejection (baseEjectionTime 2s) is over, traffic fails back.
	startNamedTLS(t, ca, localAddr, "r1/z1/s1", sni)
	if err := harness.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		name, err := whoAnswers(ctx, mesh, sni, ca)
		return name == "r1/z1/s1", err
	}); err != nil {
		t.Fatalf("no fail-back to priority 0: %v", err)
	}
	if got := answers(10); got["r1/z1/s1"] != 10 {
		t.Fatalf("after fail-back: answers %v; want all 10 from the gateway's own locality", got)
	}

	// A third region: without a failover list it shares priority 1 with r2 (both "another
	// region"); with failover from r1 to r3 istiod puts r3 before r2.
	if _, err := cluster.API.CreateWorkloadEntry(ctx, ns, "loc-third", nil, map[string]any{
		"address": "127.0.0.13", "locality": "r3/z3/s3",
		"labels": map[string]any{"app": "loc", "security.istio.io/tlsMode": "istio"},
	}); err != nil {
		t.Fatal(err)
	}
	third := "127.0.0.13:" + strconv.Itoa(port)
	remoteAddr := "127.0.0.12:" + strconv.Itoa(port)
	if err := gw.WaitRoutes(ctx, "third region at priority 1", func(body string) bool {
		rv, ok := routeOf(body, sni)
		return ok && rv.priorityOf(third) == 1 && rv.priorityOf(remoteAddr) == 1 && rv.priorityOf(localAddr) == 0
	}); err != nil {
		t.Fatal(err)
	}
	if err := cluster.API.Delete(ctx, harness.DestinationRuleGVR, ns, "loc"); err != nil {
		t.Fatal(err)
	}
	destinationRule("loc-failover", map[string]any{"enabled": true,
		"failover": []any{map[string]any{"from": "r1", "to": "r3"}}})
	if err := gw.WaitRoutes(ctx, "failover r1 -> r3 puts r3 first", func(body string) bool {
		rv, ok := routeOf(body, sni)
		return ok && rv.priorityOf(localAddr) == 0 && rv.priorityOf(third) == 1 && rv.priorityOf(remoteAddr) == 2
	}); err != nil {
		t.Fatal(err)
	}
}

// freePortOn is a TCP port free on each of the loopback addresses (tried a few times).
func freePortOn(t *testing.T, addrs ...string) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(addrs[0], "0"))
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ok := true
		for _, a := range addrs[1:] {
			l2, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			l2.Close()
		}
		ln.Close()
		if ok {
			return port
		}
	}
	t.Fatalf("no port free on all of %v", addrs)
	return 0
}

// routeView is the part of ewgate's /debug/routes this test reads.
type routeView struct {
	Match        string            `json:"match"`
	PriorityLoad map[string]uint32 `json:"priority_load"`
	Endpoints    []struct {
		Address  string `json:"address"`
		Priority uint32 `json:"priority"`
	} `json:"endpoints"`
}

func (r routeView) priorityOf(addr string) int {
	for _, e := range r.Endpoints {
		if e.Address == addr {
			return int(e.Priority)
		}
	}
	return -1
}

func routeOf(body, match string) (routeView, bool) {
	var v struct {
		Listeners map[string]struct {
			Routes []routeView `json:"routes"`
		} `json:"listeners"`
	}
	if json.Unmarshal([]byte(body), &v) != nil {
		return routeView{}, false
	}
	for _, r := range v.Listeners["mesh"].Routes {
		if r.Match == match {
			return r, true
		}
	}
	return routeView{}, false
}

// namedTLS is a TLS backend on addr whose certificate (from the test's CA) names the given SNIs:
// after each handshake it writes its name and a newline, then echoes until the client closes.
type namedTLS struct {
	addr string
	ln   net.Listener
	wg   sync.WaitGroup
}

func startNamedTLS(t *testing.T, ca *harness.CA, addr, name string, snis ...string) *namedTLS {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(harness.LeafOptions{CommonName: name, DNSNames: snis})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"istio"}})
	if err != nil {
		t.Fatal(err)
	}
	b := &namedTLS{addr: ln.Addr().String(), ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				if _, err := io.WriteString(c, name+"\n"); err != nil {
					return
				}
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(b.stop)
	return b
}

func (b *namedTLS) stop() {
	b.ln.Close()
	b.wg.Wait()
}

// whoAnswers connects through the gateway with an Istio SNI and ALPN, verifies the backend's
// certificate against the test's CA, and returns the name the backend wrote.
func whoAnswers(ctx context.Context, gw, sni string, ca *harness.CA) (string, error) {
	c, err := dialVerified(ctx, gw, ca, sni)
	if err != nil {
		return "", err
	}
	defer c.Close()
	line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no answer from the backend: %w", err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}
