package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/config/field"
)

func exampleConfig(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy", "local", "ewgate.yaml")
}

func TestExampleConfigLoads(t *testing.T) {
	f, err := Load(exampleConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Listeners) != 2 || f.Listeners[0].Address != DefaultMeshAddress || f.Admin.Address != DefaultAdminAddress {
		t.Fatalf("example config: listeners %+v admin %q; want the default mesh and admin addresses", f.Listeners, f.Admin.Address)
	}
}

func TestDefaults(t *testing.T) {
	f, err := Parse([]byte("clusters: []\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	l := f.Listeners[0]
	if l.Kind != KindMesh || l.Address != DefaultMeshAddress || l.MaxConnections != 0 || l.MaxConnectionsPerSource != 0 ||
		l.HelloTimeout != DefaultHelloTimeout || l.MaxHelloBytes != DefaultMaxHelloBytes || l.IdleTimeout != DefaultIdleTimeout {
		t.Fatalf("default listener = %+v", l)
	}
	if f.DrainTimeout != 30*time.Second || f.Log.Format != LogJSON || !BoolOr(l.RequireIstioALPN, true) {
		t.Fatalf("defaults: %+v", f)
	}
	// The gateway node is named after the host (the pod), so replicas differ.
	if h, _ := os.Hostname(); h != "" && f.XDS.Node.Name != strings.ToLower(h) {
		t.Fatalf("xds.node.name = %q, want the host name %q", f.XDS.Node.Name, h)
	}
	if net.ParseIP(f.XDS.Node.IP) == nil {
		t.Fatalf("xds.node.ip = %q, want an address", f.XDS.Node.IP)
	}
}

const base = `listeners:
  - name: mesh
    kind: mesh
    address: 127.0.0.1:0
  - name: ingress
    kind: ingress
    address: 127.0.0.1:0
    routes:
      - hosts: [app.example.com]
        cluster: web
clusters:
  - name: outbound_.80_._.web.default.svc.cluster.local
    listener: mesh
    endpoints: [{address: 127.0.0.1:9000}]
  - name: web
    listener: ingress
    endpoints: [{address: 127.0.0.1:9001}]
`

func TestInvalidConfigsNameFieldAndLine(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string // substring of the error
	}{
		{"unknown key", strings.Replace(base, "    kind: mesh\n", "    kind: mesh\n    colour: blue\n", 1), `t.yaml:4: listeners[0].colour: unknown key "colour"`},
		{"bad duration", "drain_timeout: soon\n", `t.yaml:1: drain_timeout: "soon" is not valid here: want a duration`},
		{"bad kind", strings.Replace(base, "kind: mesh", "kind: sidecar", 1), `t.yaml:3: listeners[0].kind: "sidecar" is not a listener kind`},
		{"bad address", strings.Replace(base, "address: 127.0.0.1:0\n  - name: ingress", "address: 15443\n  - name: ingress", 1), `t.yaml:4: listeners[0].address: "15443" is not host:port`},
		{"mesh cluster not an Istio name", strings.Replace(base, "outbound_.80_._.web.default.svc.cluster.local", "web-mesh", 1), `t.yaml:12: clusters[0].name: "web-mesh": a mesh cluster is named by the Istio SNI`},
		{"inbound name", strings.Replace(base, "outbound_.80_", "inbound_.80_", 1), `clusters[0].name`},
		{"route crosses listeners", strings.Replace(base, "cluster: web\n", "cluster: outbound_.80_._.web.default.svc.cluster.local\n", 1), `t.yaml:10: listeners[1].routes[0].cluster: cluster "outbound_.80_._.web.default.svc.cluster.local" serves listener "mesh", not "ingress"`},
		{"mesh host on ingress", strings.Replace(base, "[app.example.com]", "[web.default.svc.cluster.local]", 1), `listeners[1].routes[0].hosts[0]: "web.default.svc.cluster.local" is under the mesh domain cluster.local`},
		{"unknown cluster", strings.Replace(base, "cluster: web\n", "cluster: nope\n", 1), `listeners[1].routes[0].cluster: no cluster is named "nope"`},
		{"unknown listener", strings.Replace(base, "listener: ingress\n", "listener: edge\n", 1), `clusters[1].listener: no listener is named "edge"`},
		{"no endpoints", strings.Replace(base, "    endpoints: [{address: 127.0.0.1:9001}]\n", "", 1), `clusters[1].endpoints: required`},
		{"bad policy", strings.Replace(base, "    listener: ingress\n", "    listener: ingress\n    lb_policy: random\n", 1), `clusters[1].lb_policy: "random" is not a policy`},
		{"duplicate listener", strings.Replace(base, "name: ingress", "name: mesh", 1), `listeners[1].name: "mesh" is used by another listener`},
		{"bad wildcard", strings.Replace(base, "[app.example.com]", "[\"app.*.com\"]", 1), `listeners[1].routes[0].hosts[0]: "app.*.com" is not a host name`},
		{"routes on mesh", strings.Replace(base, "    kind: mesh\n", "    kind: mesh\n    routes: [{hosts: [a.example.com], cluster: web}]\n", 1), `listeners[0].routes: a mesh listener routes by cluster name`},
		{"proxy cidr", strings.Replace(base, "    kind: ingress\n", "    kind: ingress\n    proxy_protocol: {trusted_cidrs: [10.0.0.0/33]}\n", 1), `listeners[1].proxy_protocol.trusted_cidrs[0]: "10.0.0.0/33" is not a CIDR`},
		{"two documents", base + "---\nlog: {}\n", "more than one YAML document"},
		{"two documents, the first one's problems too", "drain_timeout: soon\n---\nlog: {}\n", `t.yaml:1: drain_timeout: "soon"`},
		{"a long bad value in full", strings.Replace(base, "    kind: mesh\n", "    kind: mesh\n    max_hello_bytes: verymanybytes\n", 1), `t.yaml:4: listeners[0].max_hello_bytes: "verymanybytes" is not valid here: want a whole number`},
		{"bad route source", strings.Replace(base, "    kind: mesh\n", "    kind: mesh\n    routes_from: istiod\n", 1), `listeners[0].routes_from: "istiod" is not a route source`},
		{"route source on ingress", strings.Replace(base, "    kind: ingress\n", "    kind: ingress\n    routes_from: xds\n", 1), `listeners[1].routes_from: only mesh listeners`},
		{"static cluster on xds listener", strings.Replace(base, "    kind: mesh\n", "    kind: mesh\n    routes_from: xds\n", 1), `clusters[0].listener: listener "mesh" takes its routes from xDS`},
		{"hello cap", strings.Replace(base, "    kind: mesh\n", "    kind: mesh\n    max_hello_bytes: 10\n", 1), `listeners[0].max_hello_bytes: 10 is out of range`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "t.yaml")
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tt.want)
			}
		})
	}
}

func TestAllErrorsReportedAtOnce(t *testing.T) {
	y := strings.Replace(strings.Replace(base, "kind: mesh", "kind: x", 1), "cluster: web\n", "cluster: nope\n", 1)
	_, err := Parse([]byte(y), "t.yaml")
	var errs field.Errors
	if !errors.As(err, &errs) || len(errs) < 2 {
		t.Fatalf("got %v; want every problem listed", err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v; want not-exist", err)
	}
}

func TestVMSectionsValidation(t *testing.T) {
	const tlsFiles = "control:\n  tls: {cert_file: /nonexistent/tls.crt, key_file: /nonexistent/tls.key}\n  upstreams: [{cluster: c1, builtin: true}]\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"control needs authn", tlsFiles, []string{"control: the control endpoint authenticates every call"}},
		{"section errors keep their paths", tlsFiles + "authn:\n  issuers: [{cluster: c1}]\n",
			[]string{"authn.issuers[0].issuer", "control.tls.cert_file"}},
		{"registrar needs control and a store", "registrar: {grace_period: 5s}\n",
			[]string{"registrar: VMs register through the control endpoint", "registrar: needs a store"}},
		{"a section's error points at its key", "registrar:\n  grace_period: 5s\n",
			[]string{"t.yaml:1: registrar: VMs register through the control endpoint"}},
		{"registrar's own checks", "registrar: {address_policy: guess}\n", []string{`registrar.address_policy: "guess"`}},
		{"groups need the registrar", "workload_groups: [{metadata: {name: web, namespace: vms}}]\n",
			[]string{"workload_groups: groups are for the registrar"}},
		{"group without namespace", "workload_groups: [{metadata: {name: web}}]\n",
			[]string{"workload_groups[0].metadata.namespace: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml), "t.yaml")
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error:\n%v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func TestDNSKeys(t *testing.T) {
	const svc = "services:\n  - {name: web, hosts: [web.default.svc.cluster.local], ports: [{number: 80, name: http}], addresses: [%s]}\n"
	f, err := Parse([]byte(fmt.Sprintf(svc, "10.20.0.5")), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if f.ControlPlane.DNS.VIPRange != DefaultVIPRange && f.ControlPlane.DNS.VIPRange != "" {
		t.Errorf("vip_range = %q, want the default", f.ControlPlane.DNS.VIPRange)
	}
	if got := f.Services[0].Addresses; len(got) != 1 || got[0] != "10.20.0.5" {
		t.Errorf("addresses = %v", got)
	}
	tests := []struct{ yaml, want string }{
		{fmt.Sprintf(svc, "not-an-ip"), `services[0].addresses[0]: "not-an-ip" is not an IP address`},
		{"control_plane: {dns: {vip_range: 240.240.0.0/32}}\n", "control_plane.dns.vip_range"},
		{"control_plane: {dns: {vip_range: fd00::/64}}\n", "control_plane.dns.vip_range"},
		{"control_plane: {dns: {vip_range: nonsense}}\n", "control_plane.dns.vip_range"},
	}
	for _, tt := range tests {
		if _, err := Parse([]byte(tt.yaml), "t.yaml"); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want %q", tt.yaml, err, tt.want)
		}
	}
}

// An unset control.limits.max_connections is a quarter of the open-file limit, within bounds,
// so that a default config fits the file budget under small limits; a set one is kept.
func TestControlConnectionsFromTheFileLimit(t *testing.T) {
	for _, tc := range []struct {
		limit uint64
		want  int
	}{{4096, 1024}, {20000, 5000}, {1 << 20, 10000}, {40, 16}} {
		if got := ControlConnections(tc.limit); got != tc.want {
			t.Errorf("ControlConnections(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

// ewgate check lists every problem of a file at once: unknown keys anywhere, values of the wrong
// type (which the decoder finds) and values validation refuses, each with its path and line.
func TestEveryProblemAtOnceWithPathAndLine(t *testing.T) {
	y := `log:
  format: json
  colour: blue
drain_timeout: soon
` + strings.Replace(strings.Replace(base,
		"    kind: ingress\n", "    kind: ingress\n    tls_mode: strict\n", 1),
		"    listener: ingress\n", "    listener: ingress\n    lb_policy: random\n", 1)
	_, err := Parse([]byte(y), "t.yaml")
	var errs field.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("got %v; want field.Errors", err)
	}
	want := []struct {
		line int
		path string
		msg  string
	}{
		{3, "log.colour", `unknown key "colour"`},
		{4, "drain_timeout", `"soon" is not valid here: want a duration`},
		{11, "listeners[1].tls_mode", `unknown key "tls_mode"`},
		{22, "clusters[1].lb_policy", `"random" is not a policy`},
	}
	if len(errs) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(errs), len(want), err)
	}
	for i, w := range want {
		e := errs[i]
		if e.File != "t.yaml" || e.Line != w.line || e.Path != w.path || !strings.Contains(e.Msg, w.msg) {
			t.Errorf("problem %d = %q; want t.yaml:%d: %s: ...%s...", i, e, w.line, w.path, w.msg)
		}
	}
}

// A section's own type refusing a value (the registrar's durations) no longer stops the decoder:
// the file's other problems are reported with it.
func TestSectionTypeErrorDoesNotHideTheRest(t *testing.T) {
	y := "registrar:\n  grace_period: soon\nlog:\n  colour: blue\n"
	_, err := Parse([]byte(y), "t.yaml")
	for _, w := range []string{`t.yaml:2: registrar.grace_period: "soon" is not a duration`, `t.yaml:4: log.colour: unknown key "colour"`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error:\n%v\nwant it to contain %q", err, w)
		}
	}
}
