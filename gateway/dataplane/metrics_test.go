package dataplane

import (
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// series reports whether a series of name with exactly these label values exists, and its value.
func (g *testGateway) series(name string, labels map[string]string) (float64, bool) {
	g.t.Helper()
	mfs, err := g.reg.Gather()
	if err != nil {
		g.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; !ok || v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

func (g *testGateway) wantSeries(name string, labels map[string]string, want float64) {
	g.t.Helper()
	v, ok := g.series(name, labels)
	if !ok {
		g.t.Fatalf("%s%v: no series", name, labels)
	}
	if v != want {
		g.t.Fatalf("%s%v = %v, want %v", name, labels, v, want)
	}
}

// The series an operator's queries need exist from the first config on, at zero.
func TestMetricsPresentFromTheStart(t *testing.T) {
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", deadAddr(t))))
	for _, r := range refusalResults {
		g.wantSeries("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": "", "result": r}, 0)
	}
	g.wantSeries("ewgate_connections_opened_total", map[string]string{"listener": "mesh"}, 0)
	g.wantSeries("ewgate_accept_failures_total", map[string]string{"listener": "mesh"}, 0)
	g.wantSeries("ewgate_connections_active", map[string]string{"listener": "mesh"}, 0)
	g.wantSeries("ewgate_config_reloads_total", map[string]string{"result": "ok"}, 1)
	g.wantSeries("ewgate_config_reloads_total", map[string]string{"result": "failed"}, 0)
	g.wantSeries("ewgate_config_reloads_total", map[string]string{"result": "restart_required"}, 0)
	g.wantSeries("ewgate_config_last_reload_successful", map[string]string{}, 1)
	if at, _ := g.series("ewgate_config_last_reload_success_timestamp_seconds", map[string]string{}); at <= 0 {
		t.Fatalf("last reload success timestamp %v, want the time of the first Apply", at)
	}
}

// A long connection shows in ewgate_connections_opened_total and in its cluster's open
// connections while it is open; a cluster removed by a reload keeps its open-connections series
// only until its last connection ends, and its endpoint series go with the reload.
func TestClusterMetricsFollowSnapshots(t *testing.T) {
	const other = "outbound_.9080_._.ratings.default.svc.cluster.local"
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	dead := deadAddr(t)
	cfg := meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr(), dead)+
		"    outlier_detection: {consecutive_failures: 1}\n")
	g := startGateway(t, cfg)
	mesh := map[string]string{"listener": "mesh"}
	lc := map[string]string{"listener": "mesh", "cluster": reviews}
	g.wantSeries("ewgate_cluster_endpoints", lc, 2)
	g.wantSeries("ewgate_cluster_healthy_endpoints", lc, 2)
	g.wantSeries("ewgate_cluster_open_connections", lc, 0)

	// Round robin tries the dead endpoint within a few connections: it is ejected at its first
	// failure and the connection goes on to the live one.
	var conns []*tls.Conn
	for range 4 {
		c := meshClient(t, g, pki)
		if _, err := exchangeOpen(c); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if g.counter("ewgate_endpoint_ejections_total", map[string]string{"cluster": reviews}) != 1 {
		t.Fatal("the dead endpoint was not ejected")
	}
	g.wantSeries("ewgate_cluster_healthy_endpoints", lc, 1)
	g.wantSeries("ewgate_cluster_open_connections", lc, 4)
	g.wantSeries("ewgate_connections_opened_total", mesh, 4)
	if v := g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": reviews, "result": "ok"}); v != 0 {
		t.Fatalf("%v open connections counted as ended", v)
	}

	f, err := parseConfig([]byte(meshYAML("", cluster(other, "mesh", "round_robin", be.addr()))), "reload.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Relay.Engine = testRelay
	if err := g.Apply(f); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.series("ewgate_cluster_endpoints", lc); ok {
		t.Fatal("endpoints of a removed cluster still exported")
	}
	g.wantSeries("ewgate_cluster_endpoints", map[string]string{"listener": "mesh", "cluster": other}, 1)
	g.wantSeries("ewgate_cluster_open_connections", lc, 4) // still relaying
	for _, c := range conns {
		// A clean end: the client's close_notify and FIN, then the backend's, read to the end.
		// A plain Close could leave the backend's close_notify unread at the client, whose
		// kernel then resets the connection, a reset result rather than ok.
		c.CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	}
	testkit.Eventually(t, "the removed cluster's open-connections series to go with its last connection", func() bool {
		_, ok := g.series("ewgate_cluster_open_connections", lc)
		return !ok
	})
	g.wantSeries("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": reviews, "result": "ok"}, 4)
	// The routed cluster's byte and ok series exist from its first snapshot; those of the
	// removed cluster go at the next swap, now that its last connection has ended.
	g.wantSeries("ewgate_bytes_total", map[string]string{"listener": "mesh", "cluster": other, "direction": "upstream"}, 0)
	g.wantSeries("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": other, "result": "ok"}, 0)
	if err := g.Apply(mustParse(t, meshYAML("", cluster(other, "mesh", "round_robin", be.addr())))); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ewgate_bytes_total", "ewgate_connections_total"} {
		if v := g.counter(name, map[string]string{"cluster": reviews}); v != 0 {
			t.Errorf("%s of the removed cluster still exported (%v)", name, v)
		}
	}
}

// A refused config sets ewgate_config_last_reload_successful to 0 and leaves the timestamp of
// the last success.
func TestLastReloadGauges(t *testing.T) {
	g := startGateway(t, meshYAML(""))
	at, _ := g.series("ewgate_config_last_reload_success_timestamp_seconds", map[string]string{})
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	f, err := parseConfig([]byte("listeners:\n  - {name: mesh, kind: mesh, address: "+busy.Addr().String()+"}\n"), "busy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Relay.Engine = testRelay
	if err := g.Apply(f); err == nil {
		t.Fatal("Apply bound an address in use")
	}
	g.wantSeries("ewgate_config_last_reload_successful", map[string]string{}, 0)
	g.wantSeries("ewgate_config_last_reload_success_timestamp_seconds", map[string]string{}, at)
	g.wantSeries("ewgate_config_reloads_total", map[string]string{"result": "failed"}, 1)
	g.RecordConfigError()
	g.wantSeries("ewgate_config_reloads_total", map[string]string{"result": "failed"}, 2)
	if err := g.Apply(mustParse(t, meshYAML(""))); err != nil {
		t.Fatal(err)
	}
	g.wantSeries("ewgate_config_last_reload_successful", map[string]string{}, 1)
}

func mustParse(t *testing.T, yaml string) *Config {
	t.Helper()
	f, err := parseConfig([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Relay.Engine = testRelay
	return f
}

// exchangeOpen writes a message and reads its echo, leaving the connection open.
func exchangeOpen(c *tls.Conn) ([]byte, error) {
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return buf, err
}
