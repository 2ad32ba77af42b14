package xdsclient_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/ewgate/ewgate/gateway/config"
	"github.com/ewgate/ewgate/gateway/controlplane"
	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/xdsclient"
	"github.com/ewgate/ewgate/registrar"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// reached dials n times and returns the set of backends reached.
func reached(gwAddr string, p *testkit.Cert, sni string, n int) map[string]bool {
	got := map[string]bool{}
	for range n {
		if name, err := who(gwAddr, p, sni); err == nil {
			got[name] = true
		} else {
			got["error: "+err.Error()] = true
		}
	}
	return got
}

func only(m map[string]bool, names ...string) bool {
	if len(m) != len(names) {
		return false
	}
	for _, n := range names {
		if !m[n] {
			return false
		}
	}
	return true
}

func TestRoutesFollowConfigAndRegistrations(t *testing.T) {
	p := testkit.NewCA(t, "test CA")
	a := startBackend(t, p, "a", reviewsSNI)
	b := startBackend(t, p, "b", reviewsSNI)
	store := registrar.NewMemoryStore()
	entries := store.WorkloadEntries()
	ctx := context.Background()

	g := startGateway(t)
	ln := listen(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	cp, _ := runCP(t, ln, controlplane.Options{Services: reviewsService(), Entries: entries})
	reg := prometheus.NewRegistry()
	c := runClient(t, addr, g, reg)
	testkit.Eventually(t, "client ready", c.Ready)
	if !g.Ready() {
		t.Fatal("gateway not ready after the first complete xDS snapshot")
	}
	gw := g.Addr("mesh").String()
	if _, err := who(gw, p, reviewsSNI); err == nil || !strings.Contains(err.Error(), "internal error") {
		// The cluster exists but has no endpoints yet: refused no_endpoint, with the TLS alert
		// internal_error.
		t.Fatalf("no endpoints yet: %v; want the TLS alert internal_error", err)
	}

	labels := map[string]string{"app": "reviews"}
	if _, err := entries.Create(ctx, entry("reviews-a", "127.0.0.1", a.port(), labels)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "registered workload a reachable", func() bool { return only(reached(gw, p, reviewsSNI, 1), "a") })
	if _, err := entries.Create(ctx, entry("reviews-b", "127.0.0.1", b.port(), labels)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "both workloads used", func() bool { return only(reached(gw, p, reviewsSNI, 4), "a", "b") })
	if err := entries.Delete(ctx, "default", "reviews-a", registrar.Preconditions{}); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "a workload that went away is no longer used", func() bool { return only(reached(gw, p, reviewsSNI, 4), "b") })
	// A workload whose labels do not match the selector is not an endpoint.
	if _, err := entries.Create(ctx, entry("other", "127.0.0.1", a.port(), map[string]string{"app": "ratings"})); err != nil {
		t.Fatal(err)
	}
	// The config changes: the service goes away and so does its route.
	cp.SetServices(nil)
	testkit.Eventually(t, "route removed with its service", func() bool {
		_, err := who(gw, p, reviewsSNI)
		return err != nil && strings.Contains(err.Error(), "unrecognized name")
	})
	if v := testkit.Metric(t, reg, "ewgate_xds_pushes_total", map[string]string{"type": "eds", "result": "applied"}); v < 3 {
		t.Fatalf("eds applied = %v; want several", v)
	}
	if testkit.Metric(t, reg, "ewgate_xds_connected", nil) != 1 || testkit.Metric(t, reg, "ewgate_xds_ready", nil) != 1 {
		t.Fatal("connected/ready gauges not set")
	}
}

func TestControlPlaneRestartDropsNothing(t *testing.T) {
	p := testkit.NewCA(t, "test CA")
	a := startBackend(t, p, "a", reviewsSNI)
	b := startBackend(t, p, "b", reviewsSNI)
	store := registrar.NewMemoryStore()
	entries := store.WorkloadEntries()
	ctx := context.Background()
	labels := map[string]string{"app": "reviews"}
	if _, err := entries.Create(ctx, entry("reviews-a", "127.0.0.1", a.port(), labels)); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t)
	ln := listen(t, "127.0.0.1:0")
	addr := ln.Addr().String()
	_, stop := runCP(t, ln, controlplane.Options{Services: reviewsService(), Entries: entries})
	reg := prometheus.NewRegistry()
	c := runClient(t, addr, g, reg)
	testkit.Eventually(t, "client ready", c.Ready)
	gw := g.Addr("mesh").String()
	testkit.Eventually(t, "a reachable", func() bool { return only(reached(gw, p, reviewsSNI, 1), "a") })

	// A connection open across the restart.
	open, err := tls.Dial("tcp", gw, &tls.Config{ServerName: reviewsSNI, NextProtos: []string{"istio"}, RootCAs: p.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	stop()
	testkit.Eventually(t, "client notices the control plane is gone", func() bool { return testkit.Metric(t, reg, "ewgate_xds_connected", nil) == 0 })
	if !only(reached(gw, p, reviewsSNI, 3), "a") || !g.Ready() || !c.Ready() {
		t.Fatal("routes or readiness lost while the control plane was down")
	}
	// The control plane comes back on the same address with a changed registration.
	if _, err := entries.Create(ctx, entry("reviews-b", "127.0.0.1", b.port(), labels)); err != nil {
		t.Fatal(err)
	}
	runCP(t, listenRetry(t, addr), controlplane.Options{Services: reviewsService(), Entries: entries})
	testkit.Eventually(t, "reconnected and updated", func() bool { return only(reached(gw, p, reviewsSNI, 4), "a", "b") })
	if testkit.Metric(t, reg, "ewgate_xds_reconnects_total", nil) < 1 {
		t.Fatal("no reconnect counted")
	}
	open.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if n, err := open.Read(buf); err != nil || string(buf[:n]) != "a\n" {
		t.Fatalf("connection open across the restart: %q %v", buf[:n], err)
	}
	if _, err := open.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if n, err := open.Read(buf[:2]); err != nil || n == 0 {
		t.Fatalf("echo on the old connection: %v", err)
	}
}

// listenRetry binds addr again; the port was just released by the stopped control plane.
func listenRetry(t *testing.T, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	testkit.Eventually(t, "port free again", func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	return ln
}

// countingSink records how many endpoints the last table had, for the latency benchmark.
type countingSink struct {
	last atomic.Int64
	wake chan struct{} // capacity 1; a token after each store
}

func (s *countingSink) SetMeshClusters(_ string, cs []dataplane.ClusterSpec) error {
	n := 0
	for _, c := range cs {
		n += len(c.Endpoints)
	}
	s.last.Store(int64(n))
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// Time from a WorkloadEntry being created to the gateway's xDS client applying a table with it
// (debounce 5ms, 100ms, and the default: config.DefaultDebounce and DefaultMaxPushDelay), with no
// other VM registered and with 10,000.
func BenchmarkRegistrationToPush(b *testing.B) {
	for _, registered := range []int{0, 10000} {
		for _, debounce := range []time.Duration{5 * time.Millisecond, 100 * time.Millisecond, 0} {
			name := debounce.String()
			if debounce == 0 {
				name = "default"
			}
			if registered > 0 {
				name = fmt.Sprintf("registered%d/%s", registered, name)
			}
			b.Run(name, func(b *testing.B) { benchRegistrationToPush(b, registered, debounce) })
		}
	}
}

func benchRegistrationToPush(b *testing.B, registered int, debounce time.Duration) {
	store := registrar.NewMemoryStore()
	entries := store.WorkloadEntries()
	for i := range registered {
		addr := fmt.Sprintf("10.%d.%d.%d", 1+i>>16&0xff, i>>8&0xff, i&0xff)
		if _, err := entries.Create(context.Background(), entry(fmt.Sprintf("pre-%d", i), addr, 9080, map[string]string{"app": "reviews"})); err != nil {
			b.Fatal(err)
		}
	}
	ln := listen(b, "127.0.0.1:0")
	opts := controlplane.Options{Services: reviewsService(), Entries: entries, Debounce: debounce, MaxDelay: 10 * debounce}
	if debounce == 0 {
		opts.Debounce, opts.MaxDelay = config.DefaultDebounce, config.DefaultMaxPushDelay
	}
	runCP(b, ln, opts)
	sink := &countingSink{wake: make(chan struct{}, 1)}
	f, _ := config.Parse([]byte("{}"), "b.yaml")
	c := xdsclient.New(xdsclient.Options{Target: ln.Addr().String(), Node: xdsclient.NewNode(f.XDS.Node, "bench"), Listeners: []string{"mesh"}, Sink: sink})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testkit.Eventually(b, "ready", c.Ready)
	testkit.Eventually(b, "the registered VMs pushed", func() bool { return sink.last.Load() == int64(registered) })
	i := 0
	for b.Loop() {
		i++
		if _, err := entries.Create(ctx, entry(fmt.Sprintf("r-%d", i), "127.0.0.1", uint32(1000+i), map[string]string{"app": "reviews"})); err != nil {
			b.Fatal(err)
		}
		for sink.last.Load() != int64(registered+i) {
			<-sink.wake
		}
	}
}
