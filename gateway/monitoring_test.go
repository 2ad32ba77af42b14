package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// The shipped dashboard and alert rules (deploy/monitoring; promtool checks their syntax and
// the rules' behaviour in e2e/monitoring).
const (
	dashboardFile = "../deploy/monitoring/grafana-dashboard.json"
	alertsFile    = "../deploy/monitoring/alerts.yaml"
)

// notEwgate are the series a query may use that Prometheus makes, not ewgate.
var notEwgate = []string{"up"}

// TestMonitoringQueriesUseExportedMetrics starts a gateway with the data plane and the whole
// VM side (control endpoint, authn, registrar, built-in control plane and CA, routes over xDS)
// and checks that every metric the dashboard's queries and the alert rules name is in its
// /metrics: a renamed or never-exported metric would leave a panel empty or an alert silent.
func TestMonitoringQueriesUseExportedMetrics(t *testing.T) {
	queries := monitoringQueries(t)
	wanted := map[string][]string{} // metric -> where it is used
	for where, q := range queries {
		for _, name := range metricNames(q) {
			wanted[name] = append(wanted[name], where)
		}
	}
	if len(wanted) < 30 {
		t.Fatalf("found only %d metric names in %d queries: the tokenizer or the files are broken", len(wanted), len(queries))
	}

	s := newVMSetup(t)
	g, _ := s.start(t)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		g.Shutdown(ctx)
	}()
	h := g.handler()
	testkit.Eventually(t, "ready with routes from xDS", func() bool {
		return get(h, "/healthz/ready") == 200 && get(h, "/healthz/control") == 200 &&
			testkit.Metric(t, g.reg, "ewgate_xds_ready", nil) == 1
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	exported := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(rec.Body.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		exported[line[:strings.IndexAny(line, "{ ")]] = true
	}
	for name, where := range wanted {
		if !exported[name] && !slices.Contains(notEwgate, name) {
			t.Errorf("%s (used by %s) is not in ewgate's /metrics", name, strings.Join(where, ", "))
		}
	}
}

// monitoringQueries returns every PromQL expression of the dashboard and the rules, by where.
func monitoringQueries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	raw, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert, Record, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out["alert "+r.Alert+r.Record] = r.Expr
		}
	}
	raw, err = os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash.Panels {
		for i, tg := range p.Targets {
			out["panel "+p.Title+" #"+string(rune('A'+i))] = tg.Expr
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			out["variable "+v.Name] = strings.TrimSuffix(strings.TrimPrefix(q["query"].(string), "label_values("), ", instance)")
		}
	}
	return out
}

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promLabels   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeywords = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}
)

// metricNames returns the metric names a PromQL expression selects: identifiers outside strings,
// label matchers, ranges and label lists that are not functions (followed by "("), keywords,
// numbers or Grafana variables ($...).
func metricNames(q string) []string {
	q = promString.ReplaceAllString(q, `""`)
	q = promMatchers.ReplaceAllString(q, "{}")
	q = promRange.ReplaceAllString(q, "[]")
	q = promLabels.ReplaceAllString(q, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(q, -1) {
		name := q[loc[0]:loc[1]]
		rest := strings.TrimLeft(q[loc[1]:], " \t\n")
		switch {
		case loc[0] > 0 && (q[loc[0]-1] == '$' || q[loc[0]-1] == '.' || (q[loc[0]-1] >= '0' && q[loc[0]-1] <= '9')):
		case strings.HasPrefix(rest, "("):
		case slices.Contains(promKeywords, strings.ToLower(name)):
		default:
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for q, want := range map[string][]string{
		`sum by (job, instance) (rate(ewgate_control_auth_total{result=~"expired|bad_audience"}[10m])) > 0.05`:                                {"ewgate_control_auth_total"},
		`ewgate_connections_active / ignoring(scope) ewgate_listener_max_connections{scope="listener"} > 0.8`:                                 {"ewgate_connections_active", "ewgate_listener_max_connections"},
		`histogram_quantile(0.99, sum by (le, listener) (rate(ewgate_client_hello_seconds_bucket{instance=~"$instance"}[$__rate_interval])))`: {"ewgate_client_hello_seconds_bucket"},
		`ewgate_cluster_healthy_endpoints == 0 and ewgate_cluster_endpoints > 0`:                                                              {"ewgate_cluster_healthy_endpoints", "ewgate_cluster_endpoints"},
		`time() - ewgate_config_last_reload_success_timestamp_seconds{instance=~"$instance"}`:                                                 {"ewgate_config_last_reload_success_timestamp_seconds"},
		`up{job=~".*ewgate.*"} == 0`: {"up"},
		`1e3 * x`:                    {"x"},
	} {
		if got := metricNames(q); !slices.Equal(got, want) {
			t.Errorf("metricNames(%q) = %v, want %v", q, got, want)
		}
	}
}
