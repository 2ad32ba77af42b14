package scenarios

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// ewgate takes the place of Istio's Envoy east-west gateway: istiod has a Gateway with an
// AUTO_PASSTHROUGH server on 15443 and a mesh service (a ServiceEntry with an mTLS endpoint on a
// loopback TLS backend); ewgate connects to istiod as the gateway node, learns the route from
// istiod's LDS/CDS/EDS, and an Istio-style client reaches the backend through it. An unknown
// SNI is refused, and removing the ServiceEntry removes the route without cutting an open
// connection.
func TestEwgateAsIstioEastWestGateway(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 3*time.Minute)
	ns := cluster.Namespace(t, "eastwest")

	be, sni := eastWestService(t, ctx, ns)
	port := be.Addr().(*net.TCPAddr).Port

	admin, mesh := freeAddr(t), freeAddr(t)
	gw := harness.StartEwgate(t, admin, fmt.Sprintf(`
admin: {address: %s}
listeners:
  - {name: mesh, kind: mesh, address: %s, routes_from: xds}
xds:
  server: %s            # istiod's plaintext xDS port, on loopback
  node:
    ip: 127.0.0.1
    name: ewgate-e2e
    namespace: istio-system
    cluster_id: %s
    labels: {istio: eastwestgateway}
`, admin, mesh, cluster.Istiod.XDSAddr, cluster.Istiod.ClusterID))

	if err := gw.WaitRoutes(ctx, sni, func(r string) bool { return strings.Contains(r, sni) && strings.Contains(r, be.Addr().String()) }); err != nil {
		t.Fatal(err)
	}
	if body, err := gw.Get(ctx, "/healthz/ready"); err != nil {
		t.Fatalf("ready after the first push from istiod: %v %s", err, body)
	}
	conns, err := cluster.Istiod.Connections(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !connectedAs(conns, "ewgate-e2e.istio-system-") { // istiod names a stream <pod>.<ns>-<n>
		t.Fatalf("istiod does not list ewgate's gateway node among its xDS connections: %+v", conns)
	}

	// An Istio client: outbound_ SNI, ALPN istio. The echo proves the bytes reached the backend.
	open := dialMesh(t, mesh, sni, "istio")
	if got := echo(t, open, "first"); got != "first" {
		t.Fatalf("echo through ewgate: %q", got)
	}
	if c, err := tlsDial(mesh, fmt.Sprintf("outbound_.%d_._.nope.%s.svc.cluster.local", port, ns), "istio"); err == nil {
		c.Close()
		t.Fatal("an SNI istiod never published was routed")
	}

	// The ServiceEntry goes: its route goes, the open connection stays.
	if err := cluster.API.Delete(ctx, harness.ServiceEntryGVR, ns, "echo"); err != nil {
		t.Fatal(err)
	}
	if err := gw.WaitRoutes(ctx, "route removed", func(r string) bool { return !strings.Contains(r, sni) }); err != nil {
		t.Fatal(err)
	}
	if got := echo(t, open, "after the push"); got != "after the push" {
		t.Fatalf("open connection after the route was removed: %q", got)
	}
	open.Close()
	if c, err := tlsDial(mesh, sni, "istio"); err == nil {
		c.Close()
		t.Fatal("a removed service is still routed for new connections")
	}
}

// eastWestService is what istiod needs to route through an east-west gateway: a Gateway with an
// AUTO_PASSTHROUGH server on 15443 (selector istio: eastwestgateway) and a ServiceEntry
// echo.<ns>.svc.cluster.local with an mTLS endpoint on a new loopback TLS echo backend. It
// returns the backend and the SNI an Istio client sends for it.
func eastWestService(t *testing.T, ctx context.Context, ns string) (backend net.Listener, sni string) {
	t.Helper()
	be := startEchoTLS(t)
	port := be.Addr().(*net.TCPAddr).Port
	host := "echo." + ns + ".svc.cluster.local"
	if _, err := cluster.API.CreateGateway(ctx, ns, "eastwest", harness.EastWestGateway(15443)); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.API.CreateServiceEntry(ctx, ns, "echo", map[string]any{
		"hosts":      []any{host},
		"location":   "MESH_INTERNAL",
		"resolution": "STATIC",
		"ports":      []any{map[string]any{"number": int64(port), "name": "tls", "protocol": "TLS"}},
		"endpoints": []any{map[string]any{
			"address": "127.0.0.1",
			"labels":  map[string]any{"security.istio.io/tlsMode": "istio"},
		}},
	}); err != nil {
		t.Fatal(err)
	}
	return be, fmt.Sprintf("outbound_.%d_._.%s", port, host)
}

func connectedAs(conns []harness.XDSConnection, prefix string) bool {
	for _, c := range conns {
		if strings.HasPrefix(c.ConnectionID, prefix) {
			return true
		}
	}
	return false
}

func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// echoTLSConfig is a server config with a self-signed certificate made here.
func echoTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "echo"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"echo"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"istio"}}
}

// startEchoTLS is a TLS server (self-signed, made here) that echoes each line back.
func startEchoTLS(t *testing.T) net.Listener {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", echoTLSConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				io.Copy(c, c)
			}()
		}
	}()
	return ln
}

func tlsDial(addr, sni string, alpn ...string) (*tls.Conn, error) {
	return tlsDialVia((&net.Dialer{}).DialContext, addr, sni, alpn...)
}

// tlsDialVia is tlsDial over dial (e.g. into a replica's network namespace).
func tlsDialVia(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, sni string, alpn ...string) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: true})
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	c.SetDeadline(time.Now().Add(time.Minute))
	return c, nil
}

func dialMesh(t *testing.T, addr, sni string, alpn ...string) *tls.Conn {
	t.Helper()
	c, err := tlsDial(addr, sni, alpn...)
	if err != nil {
		t.Fatalf("TLS through ewgate with SNI %s: %v", sni, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// echo writes msg and reads back as many bytes.
func echo(t *testing.T, c *tls.Conn, msg string) string {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(buf)
}
