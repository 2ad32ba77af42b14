package multicluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Addresses of scenario 1 (the networks exist only in this test binary).
var (
	gatewayPodIP = net.IPv4(10, 2, 0, 2)  // ewgate-B's pod address in net-b
	gatewayLBIP  = net.IPv4(10, 1, 0, 15) // the load balancer that publishes ewgate-B to net-a
	netAEchoIP   = "10.1.0.20"            // an endpoint of the same service in net-a (never dialled)
)

const echoPort = 8443

// Scenario 1, the cross-network hop. A mesh service lives in cluster B, backed by a TLS server
// in net-b holding a workload certificate from istiod-B; ewgate-B stands in net-b as its
// east-west gateway, learning its routes from istiod-B over 15012 (TLS to the shared root, a
// token of apiserver-B, network net-b, view net-b), published to net-a by a load balancer whose
// address cluster B's gateway Service carries. A client in net-a acts as an Envoy sidecar: it
// asks istiod-A for the service (CDS, EDS), gets the load balancer's address and the outbound_
// SNI, and opens mTLS through ewgate-B to the backend with its own certificate from istiod-A;
// both ends check the other's SPIFFE ID against the shared root. ewgate-B never learns the
// service's net-a endpoint, which istiod-B knows.
func TestCrossNetworkHop(t *testing.T) {
	mc.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	a, b := mc.A, mc.B
	ns := mc.Namespace(t, "xnet")
	host := "echo." + ns + ".svc.cluster.local"
	roots := mc.RootPool()
	echoID := fmt.Sprintf("spiffe://%s/ns/%s/sa/echo", harness.TrustDomain, ns)
	clientID := fmt.Sprintf("spiffe://%s/ns/%s/sa/client", harness.TrustDomain, ns)
	for _, m := range mc.Members() {
		for _, sa := range []string{"echo", "client"} {
			if _, err := m.API.CreateServiceAccount(ctx, ns, sa); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := b.API.CreateServiceAccount(ctx, harness.IstioNamespace, "istio-eastwestgateway"); err != nil {
		t.Fatal(err)
	}

	// Each network reaches its own istiod's 15012 (the cluster's service), nothing else.
	a.Net.Forward(t, a.Istiod.SecureAddr)
	b.Net.Forward(t, b.Istiod.SecureAddr)

	// The backend in net-b, with its certificate from istiod-B.
	echoTok, err := b.API.IstioToken(ctx, ns, "echo")
	if err != nil {
		t.Fatal(err)
	}
	bConn := b.IstiodConn(echoTok, roots)
	bConn.Dial = b.Net.DialContext
	echoCert, err := harness.RequestWorkloadCert(ctx, bConn, echoID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	backendAddr := net.JoinHostPort(b.Addr.String(), fmt.Sprint(echoPort))
	startIdentityEcho(t, b.Net.NetNS, backendAddr, harness.IstioServerTLS(echoCert.TLS, roots, []string{"istio"}, clientID))

	// Istio config. Config is read only from an istiod's own cluster, so both have the
	// ServiceEntry; its WorkloadEntries are read across clusters (one per network).
	se := map[string]any{
		"hosts":            []any{host},
		"location":         "MESH_INTERNAL",
		"resolution":       "STATIC",
		"ports":            []any{map[string]any{"number": int64(echoPort), "name": "tls", "protocol": "TLS"}},
		"workloadSelector": map[string]any{"labels": map[string]any{"app": "echo"}},
	}
	weLabels := map[string]string{"app": "echo", "security.istio.io/tlsMode": "istio"}
	for _, m := range mc.Members() {
		if _, err := m.API.CreateServiceEntry(ctx, ns, "echo", se); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.API.CreateWorkloadEntry(ctx, ns, "echo-b", weLabels, map[string]any{
		"address": b.Addr.String(), "network": b.Network, "serviceAccount": "echo", "labels": toAny(weLabels),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.API.CreateWorkloadEntry(ctx, ns, "echo-a", weLabels, map[string]any{
		"address": netAEchoIP, "network": a.Network, "serviceAccount": "echo", "labels": toAny(weLabels),
	}); err != nil {
		t.Fatal(err)
	}
	applyDoc(t, ctx, b, "cross-network-gateway", nil)

	// ewgate-B in net-b, on the production xDS path to istiod-B.
	gw := startEastWestGateway(t, ctx, b)
	sni := fmt.Sprintf("outbound_.%d_._.%s", echoPort, host)
	if err := gw.WaitRoutes(ctx, "the net-b endpoint of "+sni, func(r string) bool {
		return strings.Contains(r, sni) && strings.Contains(r, backendAddr)
	}); err != nil {
		t.Fatal(err)
	}
	if body, err := gw.Get(ctx, "/healthz/ready"); err != nil {
		t.Fatalf("ewgate-B not ready after istiod-B's push: %v %s", err, body)
	}

	// The load balancer: an address in net-a, forwarding into net-b to ewgate-B's 15443; cluster
	// B's gateway Service carries it as an external IP.
	if err := a.Net.AddAddr(gatewayLBIP); err != nil {
		t.Fatal(err)
	}
	lbAddr := net.JoinHostPort(gatewayLBIP.String(), "15443")
	harness.Bridge(t, a.Net.NetNS, lbAddr, b.Net.NetNS, net.JoinHostPort(gatewayPodIP.String(), "15443"))
	applyDoc(t, ctx, b, "gateway-service", map[string]string{"NETWORK": b.Network, "LB_IP": gatewayLBIP.String()})

	// The client in net-a, with its certificate from istiod-A, asks istiod-A as a sidecar of net-a.
	clientTok, err := a.API.IstioToken(ctx, ns, "client")
	if err != nil {
		t.Fatal(err)
	}
	aConn := a.IstiodConn(clientTok, roots)
	aConn.Dial = a.Net.DialContext
	clientCert, err := harness.RequestWorkloadCert(ctx, aConn, clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mtls, eps := sidecarView(t, ctx, aConn, a, ns, host, echoPort, func(eps []string) error {
		if !slices.Contains(eps, lbAddr) {
			return fmt.Errorf("no endpoint at the net-b gateway %s yet: %v", lbAddr, eps)
		}
		return nil
	})
	t.Logf("istiod-A to a net-a sidecar: SNI %s, ALPN %v, SANs %v, endpoints %v", mtls.SNI, mtls.ALPN, mtls.SANs, eps)
	if mtls.SNI != sni {
		t.Fatalf("istiod-A's SNI for %s is %q, want %q", host, mtls.SNI, sni)
	}
	if !slices.Contains(eps, net.JoinHostPort(netAEchoIP, fmt.Sprint(echoPort))) || slices.Contains(eps, backendAddr) {
		t.Fatalf("istiod-A's endpoints for a net-a sidecar: %v, want the net-a entry as is and net-b's behind %s", eps, lbAddr)
	}
	if len(mtls.SANs) > 0 && !slices.Contains(mtls.SANs, echoID) {
		t.Fatalf("istiod-A's cluster checks SANs %v, not %s", mtls.SANs, echoID)
	}

	// From net-a the backend itself is out of reach: the only way is the gateway.
	if c, err := a.Net.DialContext(ctx, "tcp", backendAddr); err == nil {
		c.Close()
		t.Fatalf("net-a dialled net-b's backend %s directly", backendAddr)
	} else if !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatalf("net-a dialling %s: %v, want network unreachable", backendAddr, err)
	}

	// The hop: mTLS from net-a to the address and SNI istiod-A gave, ALPN istio.
	raw, err := a.Net.DialContext(ctx, "tcp", lbAddr)
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, harness.IstioClientTLS(clientCert.TLS, roots, mtls.SNI, []string{"istio"}, echoID))
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("mTLS through ewgate-B with SNI %s: %v", mtls.SNI, err)
	}
	if _, err := fmt.Fprintf(conn, "hello from net-a\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if want := "echo " + clientID + ": hello from net-a\n"; line != want {
		t.Fatalf("backend answered %q, want %q", line, want)
	}
	if st := conn.ConnectionState(); st.NegotiatedProtocol != "istio" || st.PeerCertificates[0].URIs[0].String() != echoID {
		t.Fatalf("connection state: ALPN %q, peer %v", st.NegotiatedProtocol, st.PeerCertificates[0].URIs)
	}
	conn.Close()

	// ewgate-B's access log has the hop: one "connection" line for the SNI, to the backend.
	if err := gw.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		for _, l := range strings.Split(gw.Proc.Log(), "\n") {
			if strings.Contains(l, `"msg":"connection"`) && strings.Contains(l, sni) &&
				strings.Contains(l, `"endpoint":"`+backendAddr+`"`) && strings.Contains(l, `"result":"ok"`) {
				t.Logf("ewgate-B access log: %s", l)
				return nil
			}
		}
		return fmt.Errorf("no access log line for %s to %s yet", sni, backendAddr)
	}); err != nil {
		t.Fatal(err)
	}

	// ewgate-B was never given the net-a endpoint, although istiod-B knows it: a net-b sidecar
	// (no requested network view) is sent it as is (net-a has no gateway).
	bClientTok, err := b.API.IstioToken(ctx, ns, "client")
	if err != nil {
		t.Fatal(err)
	}
	bView := b.IstiodConn(bClientTok, roots)
	bView.Dial = b.Net.DialContext
	sidecarView(t, ctx, bView, b, ns, host, echoPort, func(eps []string) error {
		if !slices.Contains(eps, net.JoinHostPort(netAEchoIP, fmt.Sprint(echoPort))) {
			return fmt.Errorf("istiod-B does not list the net-a entry yet: %v", eps)
		}
		return nil
	})
	routes, err := gw.Get(ctx, "/debug/routes")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(routes, netAEchoIP) || strings.Contains(routes, "10.1.") {
		t.Fatalf("ewgate-B holds a net-a address:\n%s", routes)
	}
	if log := gw.Proc.Log(); strings.Contains(log, netAEchoIP) {
		t.Fatalf("ewgate-B's log mentions the net-a endpoint %s", netAEchoIP)
	}
}

// startEastWestGateway starts ewgate in m's network as its east-west gateway: mesh listener on
// the gateway pod's address, routes from m's istiod over 15012 with TLS to the shared root, a
// token of m's apiserver for istio-system/istio-eastwestgateway, network and view m.Network.
func startEastWestGateway(t *testing.T, ctx context.Context, m *harness.Member) *harness.Ewgate {
	t.Helper()
	if err := m.Net.AddAddr(gatewayPodIP); err != nil {
		t.Fatal(err)
	}
	tok, err := m.API.IstioToken(ctx, harness.IstioNamespace, "istio-eastwestgateway")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile, rootFile := filepath.Join(dir, "istio-token"), filepath.Join(dir, "root-cert.pem")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootFile, mc.RootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	admin := "127.0.0.1:15000"
	cfg := harness.DocBlock(t, "multicluster.md", "eastwest-gateway", map[string]string{
		"ADMIN": admin, "MESH": net.JoinHostPort(gatewayPodIP.String(), "15443"),
		"ISTIOD": m.Istiod.SecureAddr, "ROOT_CERT": rootFile, "TOKEN_FILE": tokenFile,
		"POD_IP": gatewayPodIP.String(), "POD_NAME": "ewgate-" + m.ID, "CLUSTER_ID": m.ID, "NETWORK": m.Network,
	})
	return harness.StartEwgateIn(t, m.Net.NetNS, "ewgate-"+m.ID, cfg, admin)
}

// applyDoc applies a Kubernetes manifest of docs/multicluster.md to m's cluster with the real
// kubectl, as the runbook tells the operator to.
func applyDoc(t *testing.T, ctx context.Context, m *harness.Member, block string, vars map[string]string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), block+".yaml")
	if err := os.WriteFile(file, []byte(harness.DocBlock(t, "multicluster.md", block, vars)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := m.API.Kubectl(ctx, "apply", "-f", file); err != nil {
		t.Fatalf("kubectl apply of docs/multicluster.md %s in %s: %v\n%s", block, m.ID, err, out)
	}
}

// sidecarView asks m's istiod, as a sidecar of m's network in ns, for the CDS and EDS of host's
// port until the endpoints satisfy cond; it returns the cluster's mTLS settings and the
// endpoints.
func sidecarView(t *testing.T, ctx context.Context, c harness.IstiodConn, m *harness.Member, ns, host string, port int, cond func([]string) error) (*harness.MTLSSettings, []string) {
	t.Helper()
	node, err := harness.SidecarNode(m.Addr.String(), "observer", ns, m.Network, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	x, err := harness.DialSidecarXDS(ctx, c, node)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	name := fmt.Sprintf("outbound|%d||%s", port, host)
	var mtls *harness.MTLSSettings
	if _, err := x.Watch(ctx, harness.ClusterType, nil, func(rs []*anypb.Any) error {
		cs, err := harness.Clusters(rs)
		if err != nil {
			return err
		}
		for _, cl := range cs {
			if cl.GetName() == name {
				mtls, err = harness.ClusterMTLS(cl)
				return err
			}
		}
		return fmt.Errorf("no cluster %s among %d", name, len(cs))
	}); err != nil {
		t.Fatalf("CDS from istiod %s: %v", m.ID, err)
	}
	var eps []string
	if _, err := x.Watch(ctx, harness.EndpointType, []string{name}, func(rs []*anypb.Any) error {
		clas, err := harness.LoadAssignments(rs)
		if err != nil {
			return err
		}
		for _, cla := range clas {
			if cla.GetClusterName() == name {
				eps = harness.EndpointAddrs(cla)
				return cond(eps)
			}
		}
		return fmt.Errorf("no load assignment for %s", name)
	}); err != nil {
		t.Fatalf("EDS from istiod %s: %v", m.ID, err)
	}
	return mtls, eps
}

// startIdentityEcho serves TLS on addr inside ns: each line read is answered with
// "echo <client SPIFFE ID>: <line>", so the client sees the identity the backend verified.
func startIdentityEcho(t *testing.T, ns *harness.NetNS, addr string, cfg *tls.Config) {
	t.Helper()
	ln, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for i := 0; i < 100; i++ {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			serveIdentityEcho(tls.Server(raw, cfg))
		}
	}()
}

func serveIdentityEcho(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.Handshake(); err != nil {
		return
	}
	id := c.ConnectionState().PeerCertificates[0].URIs[0].String()
	r := bufio.NewReader(c)
	for i := 0; i < 100; i++ {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := fmt.Fprintf(c, "echo %s: %s", id, line); err != nil {
			return
		}
	}
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
