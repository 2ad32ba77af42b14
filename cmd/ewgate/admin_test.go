package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// TestAdminSplit runs the binary with the three admin servers on loopback: the status server
// answers readiness and nothing else, the metrics server /metrics and nothing else, the debug
// admin every page; pprof only when asked for.
func TestAdminSplit(t *testing.T) {
	for _, pprof := range []bool{false, true} {
		cfg := "admin:\n  address: 127.0.0.1:0\n  status_address: 127.0.0.1:0\n  metrics_address: 127.0.0.1:0\n"
		if pprof {
			cfg += "  pprof: true\n"
		}
		cfg += "listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0}\n"
		path := filepath.Join(t.TempDir(), "ewgate.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		p := startServe(t, path)
		admin, status, metrics := "http://"+p.addr(t, "admin"), "http://"+p.addr(t, "status"), "http://"+p.addr(t, "metrics")
		testkit.Eventually(t, "ready on the status port", func() bool { code, _ := httpGet(t, status+"/healthz/ready"); return code == 200 })

		want := []struct {
			url  string
			code int
		}{
			{status + "/debug/routes", 404}, {status + "/metrics", 404}, {status + "/debug/registrations", 404},
			{status + "/debug/authn", 404}, {status + "/debug/pprof/", 404},
			{status + "/healthz/control", 404}, // no control endpoint configured
			{metrics + "/metrics", 200}, {metrics + "/debug/routes", 404}, {metrics + "/healthz/ready", 404},
			{admin + "/debug/routes", 200}, {admin + "/metrics", 200}, {admin + "/healthz/ready", 200},
			{admin + "/debug/registrations", 404}, // the page exists; no registrar configured
			// The status page and its JSON: on the debug admin only.
			{admin + "/", 200}, {admin + "/debug/status", 200}, {admin + "/debug/xds", 404}, // no xDS client here
			{status + "/", 404}, {status + "/debug/status", 404}, {metrics + "/", 404}, {metrics + "/debug/status", 404},
			{admin + "/nothing-here", 404},
			{admin + "/debug/pprof/", map[bool]int{false: 404, true: 200}[pprof]},
		}
		for _, w := range want {
			if code, body := httpGet(t, w.url); code != w.code {
				t.Errorf("pprof %v: GET %s = %d %q; want %d", pprof, w.url, code, body, w.code)
			}
		}
		if _, body := httpGet(t, metrics+"/metrics"); !strings.Contains(body, `ewgate_admin_connections_refused_total{reason="per_source",server="status"} 0`) {
			t.Errorf("metrics lack the admin connection refusals:\n%.2000s", body)
		}
		for _, name := range []string{"admin", "status", "metrics"} {
			found := false
			for _, l := range p.find("listening") {
				if l["listener"] == name && l["max_connections"] == float64(64) && l["max_connections_per_source"] == float64(16) {
					found = true
				}
			}
			if !found {
				t.Errorf("no listening line for %s with its connection caps", name)
			}
		}
	}
}

// TestConfigWarnings: a risky setting is logged at start and at reload, and printed by check,
// which still exits 0.
func TestConfigWarnings(t *testing.T) {
	cfg := "admin: {address: '0.0.0.0:0'}\nreload: {watch_interval: 50ms}\nlisteners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0}\n"
	path := filepath.Join(t.TempDir(), "ewgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := ewgate("check", "--config", path).CombinedOutput()
	if err != nil {
		t.Fatalf("check with a warning: %v; want exit 0\n%s", err, out)
	}
	if want := "warning: " + path + ":1: admin.address: 0.0.0.0:0 is not a loopback address"; !strings.Contains(string(out), want) {
		t.Fatalf("check output:\n%s\nwant:\n%s", out, want)
	}
	p := startServe(t, path)
	p.addr(t, "admin")
	warned := func(when string) bool {
		for _, l := range p.find("config warning") {
			if l["when"] == when && l["path"] == "admin.address" && l["line"] == float64(1) && strings.Contains(l["warning"].(string), "not a loopback address") {
				return true
			}
		}
		return false
	}
	testkit.Eventually(t, "warning logged at start", func() bool { return warned("start") })
	os.WriteFile(path, []byte(cfg+"drain_timeout: 5s\n"), 0o600)
	testkit.Eventually(t, "warning logged at reload", func() bool { return warned("reload") })
}
