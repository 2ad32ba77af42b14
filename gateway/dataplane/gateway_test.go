package dataplane

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// testRelay is the relay engine the tests' gateways use. The suite runs once per engine:
// TestMain runs it on epoll (the default on Linux), then runs the same binary again with
// EWGATE_TEST_RELAY=goroutines, so both paths pass every test.
var testRelay = RelayEpoll

const relayEnv = "EWGATE_TEST_RELAY"

func TestMain(m *testing.M) {
	if v := os.Getenv(relayEnv); v != "" {
		testRelay = v
	} else if runtime.GOOS != "linux" {
		testRelay = RelayGoroutines
	}
	if os.Getenv(childEnv) != "" {
		os.Exit(runChildGateway())
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	if code == 0 && testRelay != RelayGoroutines {
		fmt.Printf("=== the same tests on the goroutine relay (%s=%s)\n", relayEnv, RelayGoroutines)
		cmd := exec.Command(os.Args[0], os.Args[1:]...)
		cmd.Env = append(os.Environ(), relayEnv+"="+RelayGoroutines)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutine relay run: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const reviews = "outbound_.9080_._.reviews.default.svc.cluster.local"

func TestMeshPassthroughEndToEnd(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))

	c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio-peer-exchange", "istio"))
	if err != nil {
		t.Fatalf("dial through the gateway: %v", err)
	}
	defer c.Close()
	// The client verified the backend's certificate, so the session is the backend's own; the
	// keying material exported on both ends must be equal.
	cs := c.ConnectionState()
	clientKM, err := cs.ExportKeyingMaterial("ewgate-test", nil, 32)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	got, err := exchange(c, msg)
	if err != nil {
		t.Fatalf("exchange: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo differs: got %d bytes, sent %d", len(got), len(msg))
	}
	// The connection is relayed by the engine under test, and only by it.
	wantPairs := 0.0
	if testRelay == RelayEpoll {
		wantPairs = 1
	}
	if v := g.counter("ewgate_relay_engine_pairs", nil); v != wantPairs {
		t.Fatalf("relay engine %s: ewgate_relay_engine_pairs = %v, want %v", testRelay, v, wantPairs)
	}
	if serverKM := <-be.keys; !bytes.Equal(serverKM, clientKM) {
		t.Fatal("client and backend exported different keying material: the TLS session was not end to end")
	}
	h := be.hellos()
	if len(h) != 1 || h[0].serverName != reviews || strings.Join(h[0].alpn, ",") != "istio-peer-exchange,istio" {
		t.Fatalf("backend saw %+v; want the client's own SNI and ALPN", h)
	}
	c.Close()
	testkit.Eventually(t, "access log line", func() bool { return g.logs.FilterMessage("connection").Len() == 1 })
	entry := g.logs.FilterMessage("connection").All()[0].ContextMap()
	if entry["result"] != "ok" || entry["sni"] != reviews || entry["cluster"] != reviews || entry["endpoint"] != be.addr() ||
		entry["bytes_down"].(int64) < int64(len(msg)) || entry["bytes_up"].(int64) < int64(len(msg)) {
		t.Fatalf("access log = %v", entry)
	}
	if v := g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": reviews, "result": "ok"}); v != 1 {
		t.Fatalf("ewgate_connections_total{result=ok} = %v, want 1", v)
	}
	if v := g.counter("ewgate_bytes_total", map[string]string{"cluster": reviews, "direction": "downstream"}); v < float64(len(msg)) {
		t.Fatalf("downstream bytes = %v, want >= %d", v, len(msg))
	}
}

func TestMeshRefusals(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML(", hello_timeout: 300ms, max_hello_bytes: 4096", cluster(reviews, "mesh", "round_robin", be.addr())))
	bigALPN := make([]string, 120)
	for i := range bigALPN {
		bigALPN[i] = "istio-padding-protocol-" + strings.Repeat("x", 8)
	}
	tests := []struct {
		name   string
		sni    string
		alpn   []string
		raw    []byte // sent instead of a TLS handshake
		stall  bool   // send half a hello and stop
		result string
		alert  string
	}{
		{name: "unknown cluster", sni: "outbound_.9080_._.ratings.default.svc.cluster.local", alpn: []string{"istio"}, result: "unknown_sni", alert: "unrecognized name"},
		{name: "plain h2 ALPN", sni: reviews, alpn: []string{"h2"}, result: "no_istio_alpn", alert: "unrecognized name"},
		{name: "no ALPN", sni: reviews, result: "no_istio_alpn", alert: "unrecognized name"},
		{name: "not an Istio name", sni: "reviews.default.svc.cluster.local", alpn: []string{"istio"}, result: "not_istio_name", alert: "unrecognized name"},
		{name: "inbound direction", sni: "inbound_.9080_._.reviews.default.svc.cluster.local", alpn: []string{"istio"}, result: "not_istio_name", alert: "unrecognized name"},
		{name: "no SNI", sni: "127.0.0.1", alpn: []string{"istio"}, result: "no_sni", alert: "remote error: tls: missing extension"}, // crypto/tls sends no SNI for an IP
		{name: "plain bytes", raw: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), result: "not_tls"},
		{name: "slow hello", sni: reviews, alpn: []string{"istio"}, stall: true, result: "hello_timeout"},
		{name: "oversized hello", sni: reviews, alpn: bigALPN, result: "hello_too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": "", "result": tt.result})
			switch {
			case tt.raw != nil:
				c := dialRaw(t, g.addr("mesh"))
				c.Write(tt.raw)
				if _, err := io.ReadAll(c); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
					t.Fatalf("read: %v", err)
				}
			case tt.stall:
				hello := helloBytes(t, tt.sni, tt.alpn)
				c := dialRaw(t, g.addr("mesh"))
				c.Write(hello[:len(hello)/2])
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadAll(c); err != nil && !isReset(err) {
					t.Fatalf("gateway did not close a stalled hello: %v", err)
				}
			default:
				c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(tt.sni, tt.alpn...))
				if err == nil {
					c.Close()
					t.Fatal("handshake succeeded; want a refusal")
				}
				if tt.alert != "" && !isAlert(err, tt.alert) {
					t.Fatalf("error %v; want TLS alert %q", err, tt.alert)
				}
			}
			testkit.Eventually(t, "refusal metric "+tt.result, func() bool {
				return g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": "", "result": tt.result}) == before+1
			})
		})
	}
	if n := len(be.hellos()); n != 0 {
		t.Fatalf("backend saw %d hellos; refused connections must never reach it", n)
	}
	for _, e := range g.logs.FilterMessage("connection").All() {
		if _, ok := e.ContextMap()["error"]; !ok {
			t.Fatalf("refusal logged without a reason: %v", e.ContextMap())
		}
	}
}

func TestALPNRuleCanBeSwitchedOff(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML(", require_istio_alpn: false", cluster(reviews, "mesh", "round_robin", be.addr())))
	c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "h2"))
	if err != nil {
		t.Fatalf("h2 client refused although require_istio_alpn is false: %v", err)
	}
	c.Close()
}

const ingressYAML = `listeners:
  - {name: mesh, kind: mesh, address: 127.0.0.1:0}
  - name: ingress
    kind: ingress
    address: 127.0.0.1:0
    routes:
      - {hosts: [app.example.com], cluster: app}
      - {hosts: ["*.example.com"], cluster: wild}
clusters:
  - {name: app, listener: ingress, endpoints: [{address: APP}]}
  - {name: wild, listener: ingress, endpoints: [{address: WILD}]}
  - {name: ` + reviews + `, listener: mesh, endpoints: [{address: MESH}]}
`

func TestIngressIsKeptApartFromTheMesh(t *testing.T) {
	pki := newPKI(t)
	app := startBackend(t, pki, "app.example.com")
	wild := startBackend(t, pki, "*.example.com", "*.b.example.com")
	mesh := startBackend(t, pki, reviews, "reviews.default.svc.cluster.local")
	y := strings.NewReplacer("APP", app.addr(), "WILD", wild.addr(), "MESH", mesh.addr()).Replace(ingressYAML)
	g := startGateway(t, y)

	for host, be := range map[string]*backend{"app.example.com": app, "API.Example.COM": wild, "a.b.example.com": wild} {
		c, err := tls.Dial("tcp", g.addr("ingress"), pki.clientConfig(host, "http/1.1"))
		if err != nil {
			t.Fatalf("%s through ingress: %v", host, err)
		}
		got, err := exchange(c, []byte("hello "+host))
		c.Close()
		if err != nil || string(got) != "hello "+host {
			t.Fatalf("%s: got %q, %v", host, got, err)
		}
		if h := be.hellos(); !strings.EqualFold(h[len(h)-1].serverName, host) {
			t.Fatalf("%s reached the wrong backend: %+v", host, h)
		}
	}
	for _, host := range []string{reviews, "reviews.default.svc.cluster.local", "example.com"} {
		c, err := tls.Dial("tcp", g.addr("ingress"), pki.clientConfig(host, "istio"))
		if err == nil {
			c.Close()
			t.Fatalf("ingress accepted %q", host)
		}
	}
	if n := len(mesh.hellos()); n != 0 {
		t.Fatalf("the mesh backend saw %d ingress connections", n)
	}
	// Counted when the gateway finishes with the refused connection, after the client saw the alert.
	testkit.Eventually(t, "mesh_name_on_ingress = 2", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"listener": "ingress", "result": "mesh_name_on_ingress"}) == 2
	})
	// And the mesh listener never consults ingress routes.
	if c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig("app.example.com", "istio")); err == nil {
		c.Close()
		t.Fatal("mesh listener routed an ingress host")
	}
}

// meshClient opens a TLS connection through the gateway's mesh listener to reviews, closed when
// the test ends.
func meshClient(t *testing.T, g *testGateway, pki *testPKI) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio"))
	if err != nil {
		t.Fatalf("dial through the gateway: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || errors.Is(err, io.EOF))
}

// An endpoint given by host name is resolved at connect time, and each of its addresses is tried
// in turn (localhost may resolve to ::1 first, where the backend does not listen).
func TestEndpointByHostName(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	_, port, _ := net.SplitHostPort(be.addr())
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", net.JoinHostPort("localhost", port))))
	c := meshClient(t, g, pki)
	if got, err := exchange(c, []byte("by name")); err != nil || string(got) != "by name" {
		t.Fatalf("exchange through a named endpoint: %q, %v", got, err)
	}
}

// Out of files, accepting fails and backs off instead of spinning; the connection waiting in the
// listen queue is served once files are free again.
func TestAcceptOutOfFilesBacksOff(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := rl
	low.Cur = uint64(len(fds) + 64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) })
	var fill []*os.File
	defer func() {
		for _, f := range fill {
			f.Close()
		}
	}()
	for range 200 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
	}
	// One file left, for the client's socket. Another goroutine of this process (the backend's,
	// the gateway's) can take it first: then free one more and dial again.
	var raw net.Conn
	for try := 0; raw == nil; try++ {
		fill[len(fill)-1].Close()
		fill = fill[:len(fill)-1]
		if raw, err = net.Dial("tcp", g.addr("mesh")); err != nil && (try == 5 || !errors.Is(err, syscall.EMFILE)) {
			t.Fatal(err)
		}
	}
	defer raw.Close()
	// The client sends its hello at once: the listener defers accepting (TCP_DEFER_ACCEPT) until
	// a connection has data, so the accept that fails is this connection's.
	c := tls.Client(raw, pki.clientConfig(reviews, "istio"))
	c.SetDeadline(time.Now().Add(30 * time.Second))
	type result struct {
		got []byte
		err error
	}
	exchanged := make(chan result, 1)
	go func() {
		got, err := exchange(c, []byte("after the drought"))
		exchanged <- result{got, err}
	}()
	testkit.Eventually(t, "the accept failure logged and counted", func() bool {
		return g.logs.FilterMessage("accept failed; backing off").Len() > 0 &&
			g.counter("ewgate_accept_failures_total", map[string]string{"listener": "mesh"}) > 0
	})
	for _, f := range fill {
		f.Close()
	}
	fill = nil
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	if r := <-exchanged; r.err != nil || string(r.got) != "after the drought" {
		t.Fatalf("exchange once files were free: %q, %v", r.got, r.err)
	}
}

// A legal hello of about 30 KiB, which crypto/tls splits over two TLS records, is routed with
// the default max_hello_bytes (64 KiB, Envoy's TLS inspector's cap); it used to be refused at
// 16 KiB.
func TestLargeMultiRecordHelloIsRouted(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	alpn := []string{"istio"}
	for i := range 120 {
		alpn = append(alpn, fmt.Sprintf("padding-%03d-%s", i, strings.Repeat("p", 240)))
	}
	hello := helloBytes(t, reviews, alpn)
	if len(hello) < 16<<10+5 || hello[0] != 22 || int(hello[3])<<8|int(hello[4]) >= len(hello)-5 {
		t.Fatalf("the hello is %d bytes, first record %d: want more than one record", len(hello), int(hello[3])<<8|int(hello[4]))
	}
	c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, alpn...))
	if err != nil {
		t.Fatalf("a %d-byte hello over two records was refused: %v", len(hello), err)
	}
	defer c.Close()
	if got, err := exchange(c, []byte("big hello")); err != nil || string(got) != "big hello" {
		t.Fatalf("exchange: %q, %v", got, err)
	}
	if h := be.hellos(); len(h) != 1 || len(h[0].alpn) != len(alpn) {
		t.Fatalf("backend saw %+v", h)
	}
}

// A hello whose TLS record header announces more bytes than the client sends is not routed:
// the gateway waits for the whole record until hello_timeout, and a client that half-closes
// instead is refused as hello_truncated. The backend never sees either.
func TestIncompleteHelloRecordIsNotRouted(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML(", hello_timeout: 300ms", cluster(reviews, "mesh", "round_robin", be.addr())))
	hello := helloBytes(t, reviews, []string{"istio"})
	n := int(hello[3])<<8 | int(hello[4])
	if n != len(hello)-5 {
		t.Fatalf("want a one-record hello, got record of %d for %d bytes", n, len(hello))
	}
	long := bytes.Clone(hello)
	n += 200
	long[3], long[4] = byte(n>>8), byte(n)
	for _, tc := range []struct {
		name      string
		halfClose bool
		result    string
	}{{"client half-closes", true, "hello_truncated"}, {"client waits", false, "hello_timeout"}} {
		t.Run(tc.name, func(t *testing.T) {
			labels := map[string]string{"listener": "mesh", "cluster": "", "result": tc.result}
			before := g.counter("ewgate_connections_total", labels)
			c := dialRaw(t, g.addr("mesh"))
			if _, err := c.Write(long); err != nil {
				t.Fatal(err)
			}
			if tc.halfClose {
				c.(*net.TCPConn).CloseWrite()
			}
			if _, err := io.ReadAll(c); err != nil && !isReset(err) {
				t.Fatalf("gateway did not close the connection: %v", err)
			}
			testkit.Eventually(t, "result "+tc.result, func() bool { return g.counter("ewgate_connections_total", labels) == before+1 })
		})
	}
	if h := be.hellos(); len(h) != 0 {
		t.Fatalf("backend saw %d hellos from incomplete records", len(h))
	}
}
