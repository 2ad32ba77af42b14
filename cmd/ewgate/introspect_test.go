package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/gateway/dataplane"
	"github.com/ewgate/ewgate/gateway/statuspage"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/registrar"
)

// run runs the binary and returns its exit code, stdout and stderr.
func runEwgate(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := ewgate(args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, stdout.String(), stderr.String()
}

// TestIntrospection runs ewgate status, routes and vms against a busy gateway (the binary):
// the tables say what the gateway serves, -o json is the admin API's JSON, -c FILE finds the
// admin address in the config, and an unreachable admin API is a clear error.
func TestIntrospection(t *testing.T) {
	g := startBusyGateway(t)
	backend := regexp.QuoteMeta(g.sni)

	code, out, errOut := runEwgate(t, "status", "--admin", g.admin)
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, errOut)
	}
	for _, re := range []string{
		`(?m)^ewgate \S+\s+ready\s+uptime `,
		`(?m)^control endpoint: ready$`,
		`(?m)^LISTENER\s+KIND\s+ADDRESS\s+ROUTES FROM\s+ROUTES\s+ENDPOINTS\s+OPEN\s+MAX\s+MAX/SOURCE$`,
		`(?m)^mesh\s+mesh\s+` + regexp.QuoteMeta(g.mesh) + `\s+xds\s+2\s+\d+\s+1\s+\d+\s+\d+$`,
		`(?m)^mesh\s+` + backend + `\s+1\s+1\s+0\s+1$`,
		`(?m)^mesh\s+unknown_sni\s+1$`,
		`(?m)^127\.0\.0\.1:\d+\s+connected since \S+\s+received, last applied `,
		`(?m)^cds\s+\S+\s+\S+\s+\S+\s+-\s+-$`,
		`(?m)^https://issuer\.ewgate\.test\s+cluster1\s+1\s+`,
		`(?m)^VMs registered: 1 \(registered 1\); ewgate vms lists them$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("ewgate status lacks /%s/", re)
		}
	}
	if t.Failed() {
		t.Fatalf("ewgate status:\n%s", out)
	}
	var st statuspage.Status
	code, out, _ = runEwgate(t, "status", "--admin", g.admin, "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("status -o json: exit %d, %v\n%s", code, err, out)
	}
	if len(st.Listeners) != 1 || st.Listeners[0].Active != 1 || len(st.Refusals) != 1 || st.Refusals[0] != (dataplane.Refusal{Listener: "mesh", Reason: "unknown_sni", Count: 1}) ||
		st.XDS == nil || !st.XDS.Connected || st.VMs == nil || st.VMs.Total != 1 {
		t.Fatalf("status -o json: %+v", st)
	}

	code, out, errOut = runEwgate(t, "routes", "--admin", g.addr) // host:port is taken as http://
	if code != 0 {
		t.Fatalf("routes: exit %d\n%s", code, errOut)
	}
	for _, re := range []string{
		`(?m)^LISTENER\s+MATCH\s+CLUSTER\s+LB\s+ENDPOINT\s+WEIGHT\s+HEALTH\s+OPEN\s+LOCALITY$`,
		`(?m)^mesh\s+` + backend + `\s+` + backend + `\s+\S+\s+127\.0\.0\.1:\d+\s+\d+\s+healthy\s+1\s+-$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Fatalf("ewgate routes lacks /%s/:\n%s", re, out)
		}
	}
	var rv dataplane.RoutesView
	code, out, _ = runEwgate(t, "routes", "--admin", g.admin, "-o", "json")
	if err := json.Unmarshal([]byte(out), &rv); code != 0 || err != nil || rv.Listeners["mesh"].Active != 1 || len(rv.Listeners["mesh"].Routes) != 2 {
		t.Fatalf("routes -o json: exit %d, %v\n%s", code, err, out)
	}

	// vms, with the admin address read from a config file.
	cfg := filepath.Join(t.TempDir(), "ewgate.yaml")
	os.WriteFile(cfg, []byte("admin:\n  address: "+g.addr+"\n"), 0o600)
	code, out, errOut = runEwgate(t, "vms", "-c", cfg)
	if code != 0 {
		t.Fatalf("vms: exit %d\n%s", code, errOut)
	}
	if re := `(?m)^spiffe://cluster\.local/ns/vms/sa/web\s+cluster1\s+sidecar~10\.1\.2\.3~web-1\.vms~vms\.svc\.cluster\.local\s+10\.1\.2\.3\s+registered\s+vms/` +
		g.vmEntry + `\s+1\s+\d{4}-\d\d-\d\dT`; !regexp.MustCompile(re).MatchString(out) {
		t.Fatalf("ewgate vms lacks /%s/:\n%s", re, out)
	}
	var regs []registrar.Registration
	code, out, _ = runEwgate(t, "vms", "--config", cfg, "-o", "json")
	if err := json.Unmarshal([]byte(out), &regs); code != 0 || err != nil || len(regs) != 1 || regs[0].State != "registered" || regs[0].Entry != g.vmEntry {
		t.Fatalf("vms -o json: exit %d, %v\n%s", code, err, out)
	}
}

// TestIntrospectionErrors: no gateway behind the address, a config whose admin port is picked
// at start, a gateway without a registrar, and -h, each with its exit code and message.
func TestIntrospectionErrors(t *testing.T) {
	free := freeAddr(t) // nothing listens there once freeAddr returns
	for _, cmd := range []string{"status", "routes", "vms"} {
		code, _, errOut := runEwgate(t, cmd, "--admin", "http://"+free)
		if want := "is ewgate running? admin.address is " + free; code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("%s against nothing: exit %d %q; want 1 and %q", cmd, code, errOut, want)
		}
		for _, h := range []string{"-h", "--help"} {
			code, out, _ := runEwgate(t, cmd, h)
			if code != 0 || !strings.HasPrefix(out, "usage: ewgate "+cmd+" [--admin URL | -c FILE] [-o table|json]") {
				t.Errorf("%s %s: exit %d\n%s", cmd, h, code, out)
			}
		}
	}
	dir := t.TempDir()
	zero := filepath.Join(dir, "zero.yaml")
	os.WriteFile(zero, []byte("admin: {address: 127.0.0.1:0}\n"), 0o600)
	if code, _, errOut := runEwgate(t, "status", "-c", zero); code != 2 || !strings.Contains(errOut, "admin.address 127.0.0.1:0 picks a free port at start; pass the one ewgate logged with --admin") {
		t.Errorf("status -c with port 0: exit %d %q", code, errOut)
	}
	if code, _, errOut := runEwgate(t, "status", "-o", "yaml"); code != 2 || !strings.Contains(errOut, "want [--admin URL | -c FILE] [-o table|json]") {
		t.Errorf("status -o yaml: exit %d %q", code, errOut)
	}

	// A gateway without a registrar: vms says so.
	cfg := filepath.Join(dir, "ewgate.yaml")
	os.WriteFile(cfg, []byte("admin: {address: 127.0.0.1:0}\nlisteners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0}\n"), 0o600)
	p := startServe(t, cfg)
	admin := p.addr(t, "admin")
	testkit.Eventually(t, "ready", func() bool { code, _ := httpGet(t, "http://"+admin+"/healthz/ready"); return code == 200 })
	if code, _, errOut := runEwgate(t, "vms", "--admin", admin); code != 1 || !strings.Contains(errOut, "this gateway runs no registrar") {
		t.Errorf("vms without a registrar: exit %d %q", code, errOut)
	}
	code, out, errOut := runEwgate(t, "status", "--admin", admin)
	if _, port, _ := net.SplitHostPort(p.addr(t, "mesh")); code != 0 || !regexp.MustCompile(`(?m)^mesh\s+mesh\s+127\.0\.0\.1:`+port+`\s+static\s+0\s+0\s+0\s+\d+\s+\d+$`).MatchString(out) ||
		!strings.Contains(out, "\nno cluster routed\n") {
		t.Errorf("status of a gateway without routes: exit %d\n%s%s", code, out, errOut)
	}
}
