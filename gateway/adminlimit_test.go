package gateway

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/testkit"
)

// TestAdminConnectionCaps runs a real admin HTTP server on loopback behind the caps: one source
// gets MaxPerSource connections and no more, all sources together MaxConnections, refusals are
// counted by reason, and a closed connection gives its slot back.
func TestAdminConnectionCaps(t *testing.T) {
	reg := prometheus.NewRegistry()
	lim := newAdminLimiter(reg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := dataplane.NewAdminServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lim.wrap("status", ln, adminLimits{MaxConnections: 4, MaxPerSource: 2})) }()
	t.Cleanup(func() { srv.Close(); <-done })
	addr := ln.Addr().String()

	var open []net.Conn
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	// dial opens a keep-alive connection from src and reports whether a request on it is
	// answered (a refused connection is closed by the server before it reads anything).
	dial := func(src string) (net.Conn, bool) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			// On loopback the server's reset of a refused connection can beat connect's return.
			t.Logf("dial from %s: %v", src, err)
			return nil, false
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			c.Close()
			return nil, false
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			c.Close()
			return nil, false
		}
		resp.Body.Close()
		open = append(open, c)
		return c, resp.StatusCode == 200
	}
	refused := func(reason string) float64 {
		return testutil.ToFloat64(lim.refused.WithLabelValues("status", reason))
	}

	first, ok := dial("127.0.0.1")
	if !ok {
		t.Fatal("first connection refused")
	}
	if _, ok := dial("127.0.0.1"); !ok {
		t.Fatal("second connection from one source refused; the cap is 2")
	}
	if _, ok := dial("127.0.0.1"); ok {
		t.Fatal("third connection from one source served; want it closed (per-source cap 2)")
	}
	if got := refused(adminRefusedPerSource); got != 1 {
		t.Fatalf("per_source refusals = %v; want 1", got)
	}
	for range 2 {
		if _, ok := dial("127.0.0.2"); !ok {
			t.Fatal("another source was refused while under both caps")
		}
	}
	if _, ok := dial("127.0.0.3"); ok {
		t.Fatal("fifth connection served; want it closed (max_connections 4)")
	}
	if got := refused(adminRefusedMax); got != 1 {
		t.Fatalf("max_connections refusals = %v; want 1", got)
	}
	if got := testutil.ToFloat64(lim.open.WithLabelValues("status")); got != 4 {
		t.Fatalf("ewgate_admin_connections = %v; want 4", got)
	}
	// A client that leaves frees its slot for others.
	first.Close()
	testkit.Eventually(t, "the closed connection's slot released", func() bool {
		return testutil.ToFloat64(lim.open.WithLabelValues("status")) == 3
	})
	if _, ok := dial("127.0.0.3"); !ok {
		t.Fatal("a freed slot was not given to a new source")
	}
	if n, err := testutil.GatherAndCount(reg, "ewgate_admin_connections_refused_total"); err != nil || n != 2 {
		t.Fatalf("refusal series: %d (%v); want max_connections and per_source for status", n, err)
	}
}
