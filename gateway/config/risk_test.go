package config

import (
	"strings"
	"testing"
)

func TestAdminDefaults(t *testing.T) {
	f, err := Parse([]byte("log: {level: info}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := f.Admin
	if a.Address != "127.0.0.1:15000" || a.Pprof || a.StatusAddress != "" || a.MetricsAddress != "" ||
		a.MaxConnections != 64 || a.MaxConnectionsPerSource != 16 {
		t.Fatalf("admin defaults = %+v; want debug admin on 127.0.0.1:15000, no pprof, no status or metrics server, caps 64/16", a)
	}
	if len(f.Warnings) != 0 {
		t.Fatalf("a default config warns: %v", f.Warnings)
	}
}

func TestAdminSplitKeys(t *testing.T) {
	f, err := Parse([]byte("admin:\n  address: 127.0.0.1:15000\n  status_address: 0.0.0.0:15021\n  metrics_address: 0.0.0.0:15020\n  pprof: true\n  max_connections: 10\n  max_connections_per_source: 2\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if a := f.Admin; a.StatusAddress != "0.0.0.0:15021" || a.MetricsAddress != "0.0.0.0:15020" || !a.Pprof || a.MaxConnections != 10 || a.MaxConnectionsPerSource != 2 {
		t.Fatalf("admin = %+v", a)
	}
	if len(f.Warnings) != 0 {
		t.Fatalf("status and metrics on the pod address are what they are for; warnings: %v", f.Warnings)
	}
}

// An old config (admin: {address: 0.0.0.0:15021}, every page on the published port) next to a
// status server on 15021 is refused with what to change; alone it loads with a warning.
func TestAdminRefusals(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"admin:\n  address: 0.0.0.0:15021\n  status_address: 0.0.0.0:15021\n",
			`t.yaml:3: admin.status_address: 0.0.0.0:15021 takes the port of admin.address (0.0.0.0:15021)`},
		{"admin:\n  address: 0.0.0.0:15021\n  status_address: 127.0.0.1:15021\n", `admin.status_address: 127.0.0.1:15021 takes the port of admin.address`},
		{"admin:\n  status_address: 0.0.0.0:15021\n  metrics_address: :15021\n", `admin.metrics_address: ":15021": give the host`},
		{"admin:\n  status_address: 0.0.0.0:15020\n  metrics_address: 10.0.0.1:15020\n", `admin.metrics_address: 10.0.0.1:15020 takes the port of admin.status_address`},
		{"admin:\n  status_address: nowhere\n", `admin.status_address: "nowhere" is not host:port`},
		{"admin:\n  max_connections: 4\n  max_connections_per_source: 5\n", `admin.max_connections_per_source: 5: want 0 (16) to admin.max_connections (4)`},
		{"admin:\n  max_connections: -1\n", `admin.max_connections: -1`},
		{"admin:\n  pprof: maybe\n", `"maybe" is not valid here: want true or false`},
	}
	for _, tt := range tests {
		if _, err := Parse([]byte(tt.yaml), "t.yaml"); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v; want %q", tt.yaml, err, tt.want)
		}
	}
	// Port 0 (tests) never collides.
	if _, err := Parse([]byte("admin:\n  address: 127.0.0.1:0\n  status_address: 127.0.0.1:0\n  metrics_address: 127.0.0.1:0\n"), "t.yaml"); err != nil {
		t.Fatal(err)
	}
}

func TestTrustEveryoneRefused(t *testing.T) {
	for _, cidr := range []string{"0.0.0.0/0", "::/0"} {
		y := strings.Replace(base, "    kind: ingress\n", "    kind: ingress\n    proxy_protocol: {trusted_cidrs: [10.0.0.0/8, \""+cidr+"\"]}\n", 1)
		_, err := Parse([]byte(y), "t.yaml")
		want := `t.yaml:7: listeners[1].proxy_protocol.trusted_cidrs[1]: "` + cidr + `" trusts every address: any client could send a PROXY header and forge its source address`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("trusted_cidrs with %s: error %v; want %q", cidr, err, want)
		}
	}
	y := strings.Replace(base, "    kind: ingress\n", "    kind: ingress\n    proxy_protocol: {trusted_cidrs: [10.0.0.0/8, \"0.0.0.0/1\"]}\n", 1)
	if _, err := Parse([]byte(y), "t.yaml"); err != nil {
		t.Fatalf("a broad but not universal range is the operator's call: %v", err)
	}
}

func TestRiskySettingsWarn(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string // each a substring of one warning's Error(), in order
	}{
		{"admin on every address", "admin:\n  address: 0.0.0.0:15021\n",
			[]string{`t.yaml:2: admin.address: 0.0.0.0:15021 is not a loopback address: the debug pages`}},
		{"admin on a pod address with pprof", "log: {level: info}\nadmin: {address: '10.1.2.3:15000', pprof: true}\n",
			[]string{`t.yaml:2: admin.address: 10.1.2.3:15000 is not a loopback address: the debug pages (every route and endpoint IP, every registered VM, issuers and key ids, auth-failure counts) and pprof are open`}},
		{"control plane on every address", "control_plane:\n  address: 0.0.0.0:15010\nservices:\n  - {name: web, hosts: [web.default.svc.cluster.local], ports: [{number: 80, name: http}], endpoints: [{address: 10.0.0.1}]}\n",
			[]string{`t.yaml:2: control_plane.address: 0.0.0.0:15010 is not a loopback address: the built-in control plane authenticates no caller`}},
		{"both", "admin: {address: '[::]:15000'}\ncontrol_plane: {address: '[::]:15010', ca: {data_dir: /var/lib/ewgate/ca}}\n",
			[]string{"admin.address: [::]:15000 is not a loopback", "control_plane.address: [::]:15010 is not a loopback"}},
		{"loopback names are fine", "admin: {address: 'localhost:15000'}\ncontrol_plane: {address: '[::1]:15010', ca: {data_dir: /x}}\n", nil},
		{"a control plane that does not run is not a risk", "control_plane: {address: 0.0.0.0:15010}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse([]byte(tt.yaml), "t.yaml")
			if err != nil {
				t.Fatalf("a warning is not an error: %v", err)
			}
			if len(f.Warnings) != len(tt.want) {
				t.Fatalf("warnings %v; want %d", f.Warnings, len(tt.want))
			}
			for i, w := range tt.want {
				if got := f.Warnings[i].Error(); !strings.Contains(got, w) {
					t.Errorf("warning %d: %q; want it to contain %q", i, got, w)
				}
			}
		})
	}
}
