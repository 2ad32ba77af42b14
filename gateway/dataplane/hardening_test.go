package dataplane

// Issue 17's data-plane hardening: the open-file budget, the per-source cap, bounded refusal
// logs, the load balancer's address in the log, the accept-failure metric.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ewgate/ewgate/gateway/testkit"
)

func TestPlanFiles(t *testing.T) {
	ls := func(caps ...int) []Listener {
		var out []Listener
		for i, c := range caps {
			out = append(out, Listener{Name: fmt.Sprintf("l%d", i), MaxConnections: c})
		}
		return out
	}
	control := []FDHolder{{Name: "control endpoint", FDs: 1000}}
	tests := []struct {
		name      string
		listeners []Listener
		limit     uint64
		per       int
		others    []FDHolder
		wantCaps  []int // nil: refused
		wantInErr []string
	}{
		{name: "explicit caps that fit", listeners: ls(1000, 2000), limit: 20000, per: 2, wantCaps: []int{1000, 2000}},
		{name: "unset caps share what is left", listeners: ls(0, 0), limit: 20000, per: 2, others: control,
			wantCaps: []int{(20000 - FDReserve - 1000) / 4, (20000 - FDReserve - 1000) / 4}},
		{name: "unset next to explicit", listeners: ls(0, 3000), limit: 20000, per: 6,
			wantCaps: []int{(20000 - FDReserve - 18000) / 6, 3000}},
		{name: "unset capped at 10000", listeners: ls(0), limit: 1 << 20, per: 2, wantCaps: []int{DefaultMaxConnections}},
		{name: "unlimited", listeners: ls(0), limit: ^uint64(0), per: 6, wantCaps: []int{DefaultMaxConnections}},
		{name: "explicit caps over the limit", listeners: ls(10000, 10000), limit: 20000, per: 2,
			wantInErr: []string{"listener l0 (10000 connections x 2) 20000", "listener l1", "reserve 256", "limit 20000", "at least 40256", "LimitNOFILE"}},
		{name: "others take the room", listeners: ls(9000), limit: 20000, per: 2, others: []FDHolder{{Name: "control endpoint", FDs: 2000}},
			wantInErr: []string{"control endpoint 2000", "at least 20256"}},
		{name: "no room for an unset cap", listeners: ls(0, 9900), limit: 20000, per: 2,
			wantInErr: []string{"1 listeners that leave it unset", "LimitNOFILE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]Listener(nil), tt.listeners...)
			got, holders, err := PlanFiles(in, tt.limit, tt.per, tt.others)
			if tt.wantCaps == nil {
				if !errors.Is(err, ErrFileBudget) {
					t.Fatalf("err = %v, want ErrFileBudget", err)
				}
				for _, s := range tt.wantInErr {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("error %q does not say %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			total := FDReserve
			for _, h := range holders {
				total += h.FDs
			}
			if uint64(total) > tt.limit {
				t.Fatalf("planned %d files over the limit %d", total, tt.limit)
			}
			for i, l := range got {
				if l.MaxConnections != tt.wantCaps[i] {
					t.Fatalf("listener %d: max_connections %d, want %d", i, l.MaxConnections, tt.wantCaps[i])
				}
				if want := max(l.MaxConnections/4, min(l.MaxConnections, 64)); l.MaxConnectionsPerSource != want {
					t.Fatalf("listener %d: per source %d, want %d", i, l.MaxConnectionsPerSource, want)
				}
				if tt.listeners[i].MaxConnections != in[i].MaxConnections {
					t.Fatal("PlanFiles changed its input")
				}
			}
		})
	}
}

// Apply refuses a config whose caps do not fit in the process's open-file limit, naming the
// holders the caller adds, and keeps serving the one before.
func TestApplyRefusesCapsOverTheFileLimit(t *testing.T) {
	soft, _, err := OpenFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	var control int
	reg := prometheus.NewRegistry()
	g := &testGateway{Gateway: New(Options{Registerer: reg}), t: t, reg: reg}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	})
	parse := func(yaml string) *Config {
		f, err := parseConfig([]byte(yaml), "t.yaml")
		if err != nil {
			t.Fatal(err)
		}
		f.Relay.Engine = testRelay
		return f
	}
	// apply gives the config the control endpoint's holder as it is at the time of the call.
	apply := func(c *Config) error {
		c.FDHolders = []FDHolder{{Name: "control endpoint (15012)", FDs: control}}
		return g.Apply(c)
	}
	ok := parse(meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	if err := apply(ok); err != nil {
		t.Fatal(err)
	}
	if ok.Listeners[0].MaxConnections != 0 {
		t.Fatal("Apply changed the caller's config")
	}
	planned, _, err := PlanFiles(ok.Listeners, soft, g.filesPerConn(), []FDHolder{{FDs: control}})
	if err != nil {
		t.Fatal(err)
	}
	for scope, want := range map[string]int{"listener": planned[0].MaxConnections, "source": planned[0].MaxConnectionsPerSource} {
		if got := g.counter("ewgate_listener_max_connections", map[string]string{"listener": "mesh", "scope": scope}); got != float64(want) {
			t.Fatalf("ewgate_listener_max_connections{scope=%q} = %v, want %d", scope, got, want)
		}
	}
	over := parse(meshYAML(fmt.Sprintf(", max_connections: %d", soft), cluster(reviews, "mesh", "round_robin", be.addr())))
	if err := apply(over); !errors.Is(err, ErrFileBudget) || !strings.Contains(err.Error(), "listener mesh") {
		t.Fatalf("max_connections = the file limit (%d): Apply returned %v; want ErrFileBudget naming the listener", soft, err)
	}
	control = int(soft)
	if err := apply(ok); !errors.Is(err, ErrFileBudget) || !strings.Contains(err.Error(), "control endpoint (15012)") {
		t.Fatalf("a holder taking the whole limit: Apply returned %v; want ErrFileBudget naming it", err)
	}
	c, err := tls.Dial("tcp", g.Addr("mesh").String(), pki.clientConfig(reviews, "istio"))
	if err != nil {
		t.Fatalf("the config before the refused ones stopped serving: %v", err)
	}
	c.Close()
}

func TestPerSourceCap(t *testing.T) {
	pki := newPKI(t)
	const details = "outbound_.9080_._.details.default.svc.cluster.local"
	be := startBackend(t, pki, reviews, details)
	g := startGateway(t, `listeners:
  - {name: mesh, kind: mesh, address: 127.0.0.1:0, max_connections_per_source: 2}
  - {name: lb, kind: mesh, address: 127.0.0.1:0, max_connections_per_source: 2, proxy_protocol: {trusted_cidrs: [127.0.0.0/8]}}
clusters:
`+cluster(reviews, "mesh", "round_robin", be.addr())+cluster(details, "lb", "round_robin", be.addr()))
	// dial connects from the loopback address from, after sending a PROXY header when header is
	// not empty, and reports whether a TLS session through the gateway works.
	var (
		mu   sync.Mutex
		open []*tls.Conn
	)
	dial := func(listener, from, header string) (*tls.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		raw, err := d.Dial("tcp", g.addr(listener))
		if err != nil {
			return nil, err
		}
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		if header != "" {
			raw.Write([]byte(header))
		}
		name := reviews
		if listener == "lb" {
			name = details
		}
		c := tls.Client(raw, pki.clientConfig(name, "istio"))
		if err := c.Handshake(); err != nil {
			raw.Close()
			return nil, err
		}
		if got, err := exchange1(c); err != nil {
			raw.Close()
			return nil, fmt.Errorf("echo: %q, %w", got, err)
		}
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
		return c, nil
	}
	overSource := func(listener string) float64 {
		return g.counter("ewgate_connections_total", map[string]string{"listener": listener, "result": "over_source_limit"})
	}
	for _, tc := range []struct{ listener, a, b, header string }{
		{"mesh", "127.0.0.1", "127.0.0.2", ""},
		// Behind a trusted load balancer every TCP peer is the same; the PROXY source counts.
		{"lb", "127.0.0.1", "127.0.0.1", "PROXY TCP4 %s 10.0.0.1 40000 15443\r\n"},
	} {
		t.Run(tc.listener, func(t *testing.T) {
			hdr := func(src string) string {
				if tc.header == "" {
					return ""
				}
				return fmt.Sprintf(tc.header, src)
			}
			first, err := dial(tc.listener, tc.a, hdr("10.1.0.1"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := dial(tc.listener, tc.a, hdr("10.1.0.1")); err != nil {
				t.Fatal(err)
			}
			if _, err := dial(tc.listener, tc.a, hdr("10.1.0.1")); err == nil {
				t.Fatal("a third connection from one source was served over max_connections_per_source: 2")
			}
			testkit.Eventually(t, "over_source_limit counted", func() bool { return overSource(tc.listener) == 1 })
			if _, err := dial(tc.listener, tc.b, hdr("10.1.0.2")); err != nil {
				t.Fatalf("another source refused: %v", err)
			}
			first.Close()
			testkit.Eventually(t, "the source's slot freed", func() bool {
				c, err := dial(tc.listener, tc.a, hdr("10.1.0.1"))
				if c != nil {
					c.Close()
				}
				return err == nil
			})
		})
	}
	// The load balancer's own address is logged beside the client (the PROXY source).
	mu.Lock()
	for _, c := range open {
		c.Close()
	}
	mu.Unlock()
	okLines := func(listener string) []map[string]any {
		var out []map[string]any
		for _, e := range g.logs.FilterMessage("connection").All() {
			if m := e.ContextMap(); m["listener"] == listener && m["endpoint"] != nil {
				out = append(out, m)
			}
		}
		return out
	}
	testkit.Eventually(t, "the relayed connections' lines", func() bool { return len(okLines("lb")) >= 4 && len(okLines("mesh")) >= 4 })
	for _, m := range okLines("lb") {
		if !strings.HasPrefix(m["client"].(string), "10.1.0.") || !strings.HasPrefix(fmt.Sprint(m["lb"]), "127.0.0.1:") {
			t.Fatalf("PROXY connection logged as client %v lb %v; want the PROXY source and the load balancer's address", m["client"], m["lb"])
		}
	}
	for _, m := range okLines("mesh") {
		if m["lb"] != nil {
			t.Fatalf("a connection without a PROXY header logged lb %v", m["lb"])
		}
	}
}

// exchange1 sends a byte and reads it back, leaving the connection open.
func exchange1(c *tls.Conn) ([]byte, error) {
	if _, err := c.Write([]byte{'x'}); err != nil {
		return nil, err
	}
	b := make([]byte, 1)
	_, err := io.ReadFull(c, b)
	return b, err
}

// A flood of refused hellos, each with an ALPN list of 200 entries of 250 bytes (50 KB), writes
// short access-log lines and at most refusalLogBurst of them per window, the next one written
// saying how many were dropped; lines of relayed connections are never sampled.
func TestRefusalLogsAreCappedAndSampled(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	clock := newTestClock()
	g := startGatewayClock(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())), clock.Now)
	alpn := []string{"istio"}
	for i := range 200 {
		alpn = append(alpn, fmt.Sprintf("%03d-%s", i, strings.Repeat("a", 246)))
	}
	const unknown = "outbound_.9080_._.ratings.default.svc.cluster.local"
	hello := helloBytes(t, unknown, alpn)
	if len(hello) < 50000 {
		t.Fatalf("hello of %d bytes; want about 50 KB", len(hello))
	}
	flood := func(n int) {
		for range n {
			c := dialRaw(t, g.addr("mesh"))
			c.Write(hello)
			io.Copy(io.Discard, c) // the alert, then the gateway's close
			c.Close()
		}
	}
	refused := func() float64 {
		return g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "result": "unknown_sni"})
	}
	const n = 60
	flood(n)
	testkit.Eventually(t, "every refusal counted", func() bool { return refused() == n })
	lines := func() []observer.LoggedEntry {
		return g.logs.Filter(func(e observer.LoggedEntry) bool {
			return e.Message == "connection" && e.ContextMap()["result"] == "unknown_sni"
		}).All()
	}
	if got := len(lines()); got != refusalLogBurst {
		t.Fatalf("%d refusals in one window wrote %d log lines; want %d", n, got, refusalLogBurst)
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range lines() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		if buf.Len() > 2048 {
			t.Fatalf("a refusal's log line is %d bytes: %s", buf.Len(), buf.String()[:300])
		}
		buf.Free()
	}
	clock.Advance(refusalLogInterval)
	flood(1)
	testkit.Eventually(t, "the next window's line", func() bool { return len(lines()) == refusalLogBurst+1 })
	if d := lines()[refusalLogBurst].ContextMap()["dropped"]; d != uint64(n-refusalLogBurst) {
		t.Fatalf("the next line says dropped=%v; want %d", d, n-refusalLogBurst)
	}
	// Relayed connections: one line each, never sampled.
	for range 2 * refusalLogBurst {
		c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio"))
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	testkit.Eventually(t, "a line per relayed connection", func() bool {
		return g.logs.Filter(func(e observer.LoggedEntry) bool {
			return e.Message == "connection" && e.ContextMap()["endpoint"] != nil
		}).Len() == 2*refusalLogBurst
	})
}
