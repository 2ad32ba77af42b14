package vmcontrol_test

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// dialTCP opens a bare TCP connection to the front from the loopback address ip.
func dialTCP(t *testing.T, g *gateway, ip string) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.DialContext(t.Context(), "tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer reports whether the front closed c: reading (and discarding what the front
// sends) ends with EOF or a reset, not the 10s deadline.
func closedByPeer(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// refusedAtAccept dials from ip and reports whether the front closed the connection at once
// (the reset may already fail the dial).
func refusedAtAccept(t *testing.T, g *gateway, ip string) bool {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.DialContext(t.Context(), "tcp", g.addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return closedByPeer(c)
}

// stillOpen reports whether c is still held by the front after a short read deadline.
func stillOpen(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestConnectionCaps: connections over limits.max_connections_per_source or
// limits.max_connections are closed as they are accepted, before TLS, and counted; other
// sources (for the per-source cap) and freed slots (for the total) are served.
func TestConnectionCaps(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		Limits: vmcontrol.LimitsConfig{MaxConnections: 6, MaxConnectionsPerSource: 4, HandshakeTimeout: time.Minute}}, vmcontrol.Options{Registerer: reg})
	limit := func(l string) float64 {
		return testkit.Metric(t, reg, "ewgate_control_limits_total", map[string]string{"limit": l})
	}
	var held []net.Conn
	for range 4 { // half-open: TCP only, never a ClientHello
		held = append(held, dialTCP(t, g, "127.0.0.2"))
	}
	testkit.Eventually(t, "the four connections are accepted", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_connections_active", nil) == 4
	})
	if !refusedAtAccept(t, g, "127.0.0.2") {
		t.Fatal("a 5th connection from one source was not closed")
	}
	testkit.Eventually(t, "the per-source refusal is counted", func() bool { return limit("max_connections_per_source") == 1 })
	for _, c := range held {
		if !stillOpen(c) {
			t.Fatal("a connection within the cap was closed")
		}
	}
	// Another source is served: a real VM call.
	if _, err := holdEcho(withToken(t.Context(), token(t, vmNS, vmSA)), g.dialFrom(t, p, "127.0.0.3")); err != nil {
		t.Fatalf("VM from another source: %v", err)
	}
	// Total: 4 + 1 (the VM) + 1 = 6; the 7th, from a fresh source, is refused.
	dialTCP(t, g, "127.0.0.4")
	testkit.Eventually(t, "six connections are open", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_connections_active", nil) == 6
	})
	if !refusedAtAccept(t, g, "127.0.0.5") {
		t.Fatal("a connection over max_connections was not closed")
	}
	testkit.Eventually(t, "the refusal over the total is counted", func() bool { return limit("max_connections") == 1 })
	if v := limit("max_connections_per_source"); v != 1 {
		t.Fatalf("max_connections_per_source hits = %v, want 1", v)
	}
	held[0].Close() // a slot frees
	testkit.Eventually(t, "the freed slot is taken again", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_connections_active", nil) == 5
	})
	if c := dialTCP(t, g, "127.0.0.5"); !stillOpen(c) {
		t.Fatal("a connection was refused after a slot freed")
	}
}

// TestHandshakeFailuresAreCounted: each way a connection fails before HTTP/2 is counted by
// reason, the half-open ones (no ClientHello, or TLS but no HTTP/2 preface) once the handshake
// timeout closes them.
func TestHandshakeFailuresAreCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		Limits: vmcontrol.LimitsConfig{HandshakeTimeout: 200 * time.Millisecond}}, vmcontrol.Options{Registerer: reg})
	count := func(reason string) float64 {
		return testkit.Metric(t, reg, "ewgate_control_handshake_failures_total", map[string]string{"reason": reason})
	}

	silent := dialTCP(t, g, "127.0.0.1") // half-open: nothing sent
	if !closedByPeer(silent) {
		t.Fatal("a silent connection outlived the handshake timeout")
	}
	testkit.Eventually(t, "the silent connection is counted as a timeout", func() bool { return count("timeout") == 1 })

	tc, err := tls.Dial("tcp", g.addr, &tls.Config{RootCAs: p.serving.Pool(), ServerName: serverName, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close() // TLS done, no HTTP/2 preface
	if !closedByPeer(tc) {
		t.Fatal("a connection without an HTTP/2 preface outlived the handshake timeout")
	}
	testkit.Eventually(t, "the missing preface is counted as a timeout", func() bool { return count("timeout") == 2 })

	plain := dialTCP(t, g, "127.0.0.1")
	io.WriteString(plain, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	closedByPeer(plain)
	testkit.Eventually(t, "plain HTTP is counted as not_tls", func() bool { return count("not_tls") == 1 })

	old := &tls.Config{RootCAs: p.serving.Pool(), ServerName: serverName, MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}
	if c, err := tls.Dial("tcp", g.addr, old); err == nil {
		c.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	testkit.Eventually(t, "a TLS 1.1 client is counted as tls", func() bool { return count("tls") == 1 })

	dialTCP(t, g, "127.0.0.1").Close()
	testkit.Eventually(t, "a connection closed before its hello is counted as closed", func() bool { return count("closed") == 1 })
	if v := count("timeout"); v != 2 {
		t.Fatalf("timeouts = %v, want 2", v)
	}
}

// TestAcceptFailuresAreCounted runs the front out of file descriptors (the soft RLIMIT_NOFILE
// lowered to what is open, one descriptor left for the client's socket) so that accept fails
// with EMFILE, then restores the limit: the failure is counted and the connection is served.
func TestAcceptFailuresAreCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)}},
		vmcontrol.Options{Registerer: reg})
	cc := g.dial(t, p) // made before the descriptors run out
	var saved syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := saved
	low.Cur = uint64(len(fds) + 64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []*os.File
	restore := func() {
		for _, f := range fill {
			f.Close()
		}
		fill = nil
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved)
	}
	defer restore()
	for range 1000 { // fill every descriptor left (bounded: the limit is 64 above what was open)
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fill = append(fill, f)
	}
	var client net.Conn
	for i := 0; i < 10 && client == nil && len(fill) > 0; i++ {
		fill[len(fill)-1].Close() // one descriptor for the client's socket; accept gets none
		fill = fill[:len(fill)-1]
		client, _ = net.DialTimeout("tcp", g.addr, 10*time.Second)
	}
	if client == nil {
		t.Fatal("could not connect with one descriptor free")
	}
	defer client.Close()
	testkit.Eventually(t, "the failed accept is counted", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_accept_failures_total", map[string]string{"reason": "fd_limit"}) >= 1
	})
	restore()
	if _, err := holdEcho(withToken(t.Context(), token(t, vmNS, vmSA)), cc); err != nil {
		t.Fatalf("after the descriptors came back: %v", err)
	}
}
