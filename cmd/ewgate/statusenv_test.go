package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// busyGateway is a standalone ewgate (the binary) as an operator would look at it: a mesh
// listener whose routes come from the built-in control plane over xDS, a service whose endpoint
// is a TLS backend made here, one connection open through the gateway, one refused for an
// unknown server name, a token issuer and one VM registered over the control endpoint.
type busyGateway struct {
	p       *process
	admin   string // http://host:port of the debug admin
	addr    string // the debug admin's host:port
	mesh    string
	sni     string // the routed server name
	vmEntry string // the registered VM's WorkloadEntry
	held    *tls.Conn
}

const busySNI = "outbound_.8443_._.demo.default.svc.cluster.local"

func startBusyGateway(t *testing.T) *busyGateway {
	t.Helper()
	env := newVMTestEnv(t)
	ca := testkit.NewCA(t, "backend CA")
	backend := tlsEchoBackend(t, ca.Server(t, busySNI).TLS())
	_, port, _ := net.SplitHostPort(backend)
	cfg := env.config() + fmt.Sprintf(`  - name: demo
    namespace: default
    hosts: [demo.default.svc.cluster.local]
    ports: [{number: 8443, name: tls, protocol: TLS}]
    endpoints: [{address: 127.0.0.1, ports: {tls: %s}, service_account: demo}]
`, port)
	path := filepath.Join(env.dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &busyGateway{p: startServe(t, path), sni: busySNI, vmEntry: "web-10.1.2.3-vmnet"}
	g.addr = g.p.addr(t, "admin")
	g.admin = "http://" + g.addr
	g.mesh = g.p.addr(t, "mesh")
	testkit.Eventually(t, "ready", func() bool { code, _ := httpGet(t, g.admin+"/healthz/ready"); return code == 200 })
	testkit.Eventually(t, "the demo route from xDS", func() bool {
		_, body := httpGet(t, g.admin+"/debug/routes")
		return strings.Contains(body, busySNI)
	})

	// One connection through the gateway, verified end to end against the backend's CA, held open.
	c, err := net.Dial("tcp", g.mesh)
	if err != nil {
		t.Fatal(err)
	}
	g.held = tls.Client(c, &tls.Config{ServerName: busySNI, RootCAs: ca.Pool(), NextProtos: []string{"istio"}})
	t.Cleanup(func() { g.held.Close() })
	fmt.Fprintf(g.held, "ping\n")
	if line, err := bufio.NewReader(g.held).ReadString('\n'); err != nil || line != "pong: ping\n" {
		t.Fatalf("through the gateway: %q %v", line, err)
	}
	// One refused: a name no route has.
	r, err := net.Dial("tcp", g.mesh)
	if err != nil {
		t.Fatal(err)
	}
	if err := tls.Client(r, &tls.Config{ServerName: "outbound_.8443_._.nowhere.default.svc.cluster.local", RootCAs: ca.Pool(), NextProtos: []string{"istio"}}).Handshake(); err == nil {
		t.Fatal("a handshake for an unknown server name went through")
	}
	r.Close()

	// A VM registers as pilot-agent does: its ADS stream over the control endpoint.
	cc, _, asVM := env.vmClient(t, g.p.addr(t, "control"))
	registerWebVM(t, cc, asVM, nil)
	testkit.Eventually(t, "the refusal and the open connection counted", func() bool {
		_, body := httpGet(t, g.admin+"/debug/status")
		return strings.Contains(body, `"reason": "unknown_sni"`) && strings.Contains(body, `"active_connections": 1`)
	})
	return g
}

// tlsEchoBackend serves TLS on loopback with cert: each line read is answered "pong: <line>".
func tlsEchoBackend(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"istio"}})
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
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "pong: %s\n", sc.Text())
				}
			}()
		}
	}()
	return ln.Addr().String()
}
