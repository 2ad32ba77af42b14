package dataplane

import (
	"crypto/tls"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/sni"
)

// handoffs is the listener's count of connections handed to a goroutine at step.
func (g *testGateway) handoffs(step string) float64 {
	return g.counter("ewgate_connection_handoffs_total", map[string]string{"listener": "mesh", "step": step})
}

// A client whose whole hello arrives with its connection, to a nearby endpoint, is served on the
// relay engine's loop from accept to relaying: no hand-off at any step. (Without the engine
// nothing counts hand-offs.)
func TestConnectionsServedOnTheLoop(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	const n = 20
	for i := range n {
		c := meshClient(t, g, pki)
		if got, err := exchange(c, []byte("on the loop")); err != nil || string(got) != "on the loop" {
			t.Fatalf("exchange %d: %q, %v", i, got, err)
		}
		c.Close()
	}
	testkit.Eventually(t, "every connection counted ok", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": reviews, "result": "ok"}) == n
	})
	for _, step := range []string{stepProxyHeader, stepHello, stepRefused, stepDial, stepRelay} {
		if h := g.handoffs(step); h != 0 {
			t.Errorf("%v connections handed off at %s; want none", h, step)
		}
	}
}

// A client that connects and says nothing waits in the kernel (TCP_DEFER_ACCEPT): it is not
// accepted before a client that connected after it and sent its hello, and it is not counted.
// Once it speaks it is served like the others.
func TestSilentClientIsNotAcceptedBeforeItSpeaks(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	silent := dialRaw(t, g.addr("mesh"))
	c := meshClient(t, g, pki)
	if got, err := exchange(c, []byte("after a silent one")); err != nil || string(got) != "after a silent one" {
		t.Fatalf("exchange: %q, %v", got, err)
	}
	opened := map[string]string{"listener": "mesh"}
	if n := g.counter("ewgate_connections_opened_total", opened); n != 1 {
		t.Fatalf("%v connections opened; want 1: the silent client was accepted before it sent a byte", n)
	}
	sc := tls.Client(silent, pki.clientConfig(reviews, "istio"))
	sc.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := exchange(sc, []byte("now it speaks")); err != nil || string(got) != "now it speaks" {
		t.Fatalf("exchange of the client that was silent: %q, %v", got, err)
	}
	if n := g.counter("ewgate_connections_opened_total", opened); n != 2 {
		t.Fatalf("%v connections opened; want 2", n)
	}
}

// A hello that comes in two parts leaves the loop for a goroutine after the first part (which
// the loop read); the goroutine reads the rest and the connection is routed as usual.
func TestHelloInTwoPartsIsHandedOff(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	raw := dialRaw(t, g.addr("mesh"))
	split := &splitConn{Conn: raw, first: 40, wait: func() {
		if testRelay != RelayGoroutines { // without the engine there is no loop to leave
			testkit.Eventually(t, "the first part handed off", func() bool { return g.handoffs(stepHello) == 1 })
		}
	}}
	c := tls.Client(split, pki.clientConfig(reviews, "istio"))
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := exchange(c, []byte("in two parts")); err != nil || string(got) != "in two parts" {
		t.Fatalf("exchange: %q, %v", got, err)
	}
	if h := be.hellos(); len(h) != 1 || h[0].serverName != reviews {
		t.Fatalf("backend saw hellos %+v; want one for %s", h, reviews)
	}
}

// splitConn writes its first write in two parts: first bytes, then (once wait returns) the rest.
type splitConn struct {
	net.Conn
	first int
	wait  func()
	done  bool
}

func (s *splitConn) Write(b []byte) (int, error) {
	if s.done || len(b) <= s.first {
		return s.Conn.Write(b)
	}
	s.done = true
	n, err := s.Conn.Write(b[:s.first])
	if err != nil {
		return n, err
	}
	s.wait()
	m, err := s.Conn.Write(b[s.first:])
	return n + m, err
}

// An endpoint whose connect does not complete at once (its accept queue is full: the SYN goes
// unanswered) takes the dial off the loop; after connect_timeout it counts as a failed attempt
// and the next endpoint serves the connection.
func TestSlowConnectIsHandedOff(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	full := blackHole(t)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", full, be.addr())+
		"    connect_timeout: 200ms\n    max_connect_attempts: 2\n"))
	for i := range 4 { // round robin: some of them try the full endpoint first
		c := meshClient(t, g, pki)
		if got, err := exchange(c, []byte("past a full queue")); err != nil || string(got) != "past a full queue" {
			t.Fatalf("exchange %d: %q, %v", i, got, err)
		}
	}
	failed := g.counter("ewgate_upstream_connect_failures_total", map[string]string{"cluster": reviews})
	if failed < 1 {
		t.Fatalf("%v connect failures; want the full endpoint tried at least once", failed)
	}
	if h := g.handoffs(stepDial); testRelay != RelayGoroutines && h != failed {
		t.Errorf("%v dials handed off, %v connects failed; want each failed connect handed off", h, failed)
	}
}

// Open connections routed to one cluster keep one hello between them when their clients sent the
// same name and protocols (on the loop's path and on a goroutine's alike); a client offering
// other protocols keeps its own, and its access-log fields are its own.
func TestOpenConnectionsShareTheirHello(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	open := func(alpn ...string) {
		c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, alpn...))
		if err != nil {
			t.Fatalf("dial through the gateway: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		open("istio-peer-exchange", "istio")
	}
	open("istio")
	// A connection's hello is set before its relay (setRelay, under c.mu): read it once the
	// relay is, under the same lock.
	var hellos map[*sni.Hello]int
	testkit.Eventually(t, "4 connections relaying", func() bool {
		hellos = map[*sni.Hello]int{}
		relaying := 0
		g.connsMu.Lock()
		defer g.connsMu.Unlock()
		for c := range g.conns {
			c.mu.Lock()
			if c.relaying != nil {
				hellos[c.hello]++
				relaying++
			}
			c.mu.Unlock()
		}
		return relaying == 4
	})
	if len(hellos) != 2 {
		t.Fatalf("4 open connections keep %d hellos; want 2 (3 alike share one)", len(hellos))
	}
	for h, n := range hellos {
		want := 3
		if !slices.Equal(h.ALPN, []string{"istio-peer-exchange", "istio"}) {
			want = 1
		}
		if h.ServerName != reviews || n != want {
			t.Errorf("hello %q %v kept by %d connections; want %d", h.ServerName, h.ALPN, n, want)
		}
	}
}
