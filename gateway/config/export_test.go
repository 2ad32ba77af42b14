package config

import (
	"strings"
	"testing"
)

const exportBase = `listeners:
  - name: mesh
    kind: mesh
    address: 127.0.0.1:0
    routes_from: xds
    export:
      - {namespaces: [shop, payments]}
      - {hosts: ["*.shop.svc.cluster.local", db.example.internal], from_cidrs: [10.8.0.0/16]}
  - name: ingress
    kind: ingress
    address: 127.0.0.1:0
`

func TestExportLoads(t *testing.T) {
	f, err := Parse([]byte(exportBase), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ex := f.Listeners[0].Export
	if len(ex) != 2 || strings.Join(ex[0].Namespaces, ",") != "shop,payments" || ex[1].FromCIDRs[0] != "10.8.0.0/16" || ex[1].Hosts[1] != "db.example.internal" {
		t.Fatalf("export = %+v", ex)
	}
	if f.Listeners[1].Export != nil {
		t.Fatalf("a listener without export has rules: %+v", f.Listeners[1].Export)
	}
}

// Every problem of an export list is named by its full path and line.
func TestExportValidation(t *testing.T) {
	tests := []struct{ name, from, to, want string }{
		{"empty list", "    export:\n      - {namespaces: [shop, payments]}\n      - {hosts: [\"*.shop.svc.cluster.local\", db.example.internal], from_cidrs: [10.8.0.0/16]}\n", "    export: []\n", `t.yaml:6: listeners[0].export: an empty list would export nothing`},
		{"rule naming nothing", "{namespaces: [shop, payments]}", "{from_cidrs: [10.0.0.0/8]}", `t.yaml:7: listeners[0].export[0]: a rule names what it exports`},
		{"bad namespace", "[shop, payments]", "[shop, pay.ments]", `t.yaml:7: listeners[0].export[0].namespaces[1]: "pay.ments" is not a namespace name`},
		{"bad host", "db.example.internal]", "\"db.*.internal\"]", `t.yaml:8: listeners[0].export[1].hosts[1]: "db.*.internal" is not a host name`},
		{"bad cidr", "10.8.0.0/16", "10.8.0.0/33", `t.yaml:8: listeners[0].export[1].from_cidrs[0]: "10.8.0.0/33" is not a CIDR`},
		{"unknown key", "from_cidrs:", "from_networks:", `listeners[0].export[1].from_networks: unknown key`},
		{"on ingress", "    kind: ingress\n", "    kind: ingress\n    export: [{namespaces: [shop]}]\n", `t.yaml:11: listeners[1].export: only mesh listeners export hosts`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := strings.Replace(exportBase, tt.from, tt.to, 1)
			if y == exportBase {
				t.Fatalf("the case changes nothing: %q not in the base config", tt.from)
			}
			_, err := Parse([]byte(y), "t.yaml")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tt.want)
			}
		})
	}
}
