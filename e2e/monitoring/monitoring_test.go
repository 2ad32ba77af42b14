// Package monitoring checks deploy/monitoring with a real, pinned promtool (built into the peers'
// cache by `go run ./cmd/peers`): the alert rules load (`promtool check rules`), their unit tests
// pass (`promtool test rules alerts_test.yaml`: series that fire each alert and series that do
// not), a rule broken on purpose makes those tests fail, and every query of the Grafana
// dashboard parses. That the metrics they name exist in ewgate's /metrics is checked in the main
// module (gateway.TestMonitoringQueriesUseExportedMetrics).
package monitoring

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/e2e/peers"
)

func promtool(t *testing.T) (bin, dir string) {
	t.Helper()
	l, err := peers.Locate()
	if err != nil {
		t.Fatal(err)
	}
	bin = l.Promtool()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%v: run `cd e2e && go run ./cmd/peers` first (make e2e does)", err)
	}
	return bin, filepath.Join(filepath.Dir(l.E2ERoot), "deploy", "monitoring")
}

func run(t *testing.T, dir, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestAlertRules(t *testing.T) {
	bin, dir := promtool(t)
	out, err := run(t, dir, bin, "check", "rules", "alerts.yaml")
	if err != nil || !strings.Contains(out, "SUCCESS: 20 rules found") {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	out, err = run(t, dir, bin, "test", "rules", "alerts_test.yaml")
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// The unit tests catch a broken rule: an alert that no longer fires (a threshold moved) and
// one that fires on what it must not (a result matcher widened) each fail them.
func TestAlertTestsCatchBrokenRules(t *testing.T) {
	bin, dir := promtool(t)
	rules, err := os.ReadFile(filepath.Join(dir, "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join(dir, "alerts_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ old, new, alert string }{
		{`expr: up{job=~".*ewgate.*"} == 0`, `expr: up{job=~".*ewgate.*"} == 2`, "EwgateDown"},
		{`{result="unknown_sni"}`, `{result=~"unknown_sni|ok"}`, "EwgateUnknownSNI"},
		{`{reason="timeout"}`, `{reason=~".+"}`, "EwgateControlHalfOpenFlood"},
	} {
		if !strings.Contains(string(rules), tc.old) {
			t.Fatalf("alerts.yaml no longer has %q", tc.old)
		}
		work := t.TempDir()
		os.WriteFile(filepath.Join(work, "alerts.yaml"), []byte(strings.Replace(string(rules), tc.old, tc.new, 1)), 0o644)
		os.WriteFile(filepath.Join(work, "alerts_test.yaml"), tests, 0o644)
		out, err := run(t, work, bin, "test", "rules", "alerts_test.yaml")
		if err == nil || !strings.Contains(out, "alertname: "+tc.alert) {
			t.Errorf("%s broken (%s): promtool test rules: %v, want a failure of %s\n%s", tc.alert, tc.new, err, tc.alert, out)
		}
	}
}

// Every query of the dashboard, with Grafana's variables given values, is valid PromQL: each
// becomes a recording rule that `promtool check rules` parses.
func TestDashboardQueriesParse(t *testing.T) {
	bin, dir := promtool(t)
	raw, err := os.ReadFile(filepath.Join(dir, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__range", "6h", "$instance", ".*")
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			q, err := json.Marshal(vars.Replace(tg.Expr)) // a JSON string is a YAML string
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", n, q)
			n++
		}
	}
	if n < 30 {
		t.Fatalf("only %d queries in the dashboard", n)
	}
	work := t.TempDir()
	os.WriteFile(filepath.Join(work, "dashboard-rules.yaml"), []byte(b.String()), 0o644)
	out, err := run(t, work, bin, "check", "rules", "dashboard-rules.yaml")
	if err != nil || !strings.Contains(out, fmt.Sprintf("SUCCESS: %d rules found", n)) {
		t.Fatalf("promtool check rules on the dashboard's %d queries: %v\n%s", n, err, out)
	}
}
