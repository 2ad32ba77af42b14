package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// The tests run the real binaries: ewgate and the demo backend `make run` uses.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ewgate-bin")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for _, pkg := range []string{".", "../ewgate-demo"} {
		args := []string{"build", "-o", dir}
		if raceEnabled {
			args = append(args, "-race") // the binary's own races show as exit 66 in the tests that run it
		}
		out, err := exec.Command("go", append(args, pkg)...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func ewgate(args ...string) *exec.Cmd {
	return exec.Command(filepath.Join(binDir, "ewgate"), args...)
}

const example = "../../deploy/local/ewgate.yaml"

func TestCheck(t *testing.T) {
	out, err := ewgate("check", "--config", example).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "valid (listeners: 2, static clusters: 1, services: 1)") {
		t.Fatalf("check on the example: %v\n%s", err, out)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("listeners:\n  - name: mesh\n    kind: mesh\n    address: nowhere\n"), 0o600)
	out, err = ewgate("check", "--config", bad).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("check on an invalid file: %v; want exit 1", err)
	}
	if want := bad + `:4: listeners[0].address: "nowhere" is not host:port`; !strings.Contains(string(out), want) {
		t.Fatalf("check output:\n%s\nwant:\n%s", out, want)
	}
	if err := ewgate("check").Run(); err == nil {
		t.Fatal("check without --config succeeded")
	}
}

func TestVersion(t *testing.T) {
	out, err := ewgate("version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "ewgate ") {
		t.Fatalf("version: %v %s", err, out)
	}
}

// process is a running `ewgate serve` whose JSON log lines are collected.
type process struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	done chan error
}

func startServe(t *testing.T, config string) *process {
	t.Helper()
	return startProcess(t, ewgate("serve", "--config", config))
}

// startProcess starts cmd (an `ewgate serve`, perhaps under a wrapper) and collects its logs.
func startProcess(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, done: make(chan error, 1)}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				p.mu.Lock()
				p.logs = append(p.logs, m)
				p.mu.Unlock()
			}
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		if t.Failed() {
			p.mu.Lock()
			for _, l := range p.logs {
				t.Logf("ewgate: %v", l)
			}
			p.mu.Unlock()
		}
	})
	return p
}

// find returns the log lines with this message.
func (p *process) find(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.logs {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

func (p *process) addr(t *testing.T, listener string) string {
	t.Helper()
	var addr string
	testkit.Eventually(t, listener+" listening", func() bool {
		for _, l := range p.find("listening") {
			if l["listener"] == listener {
				addr = l["address"].(string)
				return true
			}
		}
		return false
	})
	return addr
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeExampleReloadDrain runs the example config (ports moved to free ones) with the demo
// backend, sends the README's openssl s_client line through it, reloads by file change and by
// SIGHUP, refuses an invalid file while serving on, and drains on SIGTERM (a SIGHUP during the
// drain changes nothing).
func TestServeExampleReloadDrain(t *testing.T) {
	raw, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	demoAddr := freeAddr(t)
	_, demoPort, _ := net.SplitHostPort(demoAddr)
	cfg := strings.NewReplacer("ports: {tls: 18443}", "ports: {tls: "+demoPort+"}",
		"127.0.0.1:15000", "127.0.0.1:0", "127.0.0.1:15020", "127.0.0.1:0", "127.0.0.1:15021", "127.0.0.1:0", "127.0.0.1:15443", "127.0.0.1:0", "127.0.0.1:15444", "127.0.0.1:0", "127.0.0.1:15010", "127.0.0.1:0",
		"127.0.0.1:18443", demoAddr, "watch_interval: 2s", "watch_interval: 50ms", "drain_timeout: 30s", "drain_timeout: 20s",
	).Replace(string(raw))
	path := filepath.Join(t.TempDir(), "ewgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	demo := exec.Command(filepath.Join(binDir, "ewgate-demo"), "--listen", demoAddr)
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { demo.Process.Kill(); demo.Wait() })

	p := startServe(t, path)
	admin := "http://" + p.addr(t, "admin")
	mesh := p.addr(t, "mesh")
	testkit.Eventually(t, "ready", func() bool { code, _ := httpGet(t, admin+"/healthz/ready"); return code == 200 })

	// The README's line, pointed at this gateway.
	readme, _ := os.ReadFile("../../README.md")
	if !strings.Contains(string(readme), "openssl s_client -connect 127.0.0.1:15443 -servername outbound_.8443_._.demo.default.svc.cluster.local -alpn istio") {
		t.Fatal("README lost its openssl s_client line (or it no longer matches the example config)")
	}
	out := sClient(t, "-connect", mesh, "-servername", "outbound_.8443_._.demo.default.svc.cluster.local", "-alpn", "istio")
	if !strings.Contains(out, "hello from the ewgate demo backend") {
		t.Fatalf("s_client through the gateway did not reach the demo backend:\n%s", out)
	}

	// An invalid file is refused; the old routes keep serving.
	os.WriteFile(path, []byte(cfg+"bogus_key: 1\n"), 0o600)
	testkit.Eventually(t, "refused reload", func() bool { return len(p.find("config reload refused; the previous config keeps serving")) == 1 })
	if _, body := httpGet(t, admin+"/metrics"); !strings.Contains(body, `ewgate_config_reloads_total{result="failed"} 1`) {
		t.Fatal("failed reload not counted")
	}
	if refused := p.find("config reload refused; the previous config keeps serving")[0]; !strings.Contains(refused["error"].(string), `unknown key "bogus_key"`) {
		t.Fatalf("refusal does not name the key: %v", refused)
	}
	// A valid change is picked up from the file: a new ingress host (static routes) and a new
	// service (pushed by the built-in control plane over xDS to the mesh listener).
	changed := strings.Replace(cfg, "[demo.example.com,", "[demo2.example.com, demo.example.com,", 1)
	changed = strings.Replace(changed, "services:\n", "services:\n  - {name: extra, hosts: [extra.default.svc.cluster.local], ports: [{number: 9443, name: tls}], endpoints: [{address: 127.0.0.1, service_account: extra}]}\n", 1)
	os.WriteFile(path, []byte(changed), 0o600)
	testkit.Eventually(t, "routes from the changed file", func() bool {
		_, body := httpGet(t, admin+"/debug/routes")
		return strings.Contains(body, "demo2.example.com") && strings.Contains(body, "outbound_.9443_._.extra.default.svc.cluster.local")
	})
	// SIGHUP reloads too.
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.Eventually(t, "SIGHUP reload", func() bool {
		for _, l := range p.find("config reloaded") {
			if l["trigger"] == "SIGHUP" {
				return true
			}
		}
		return false
	})

	// SIGTERM with a connection open: not ready, the connection still works, exit 0 when it ends.
	c, err := net.Dial("tcp", mesh)
	if err != nil {
		t.Fatal(err)
	}
	tc := tlsClient(c, "outbound_.8443_._.demo.default.svc.cluster.local")
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	testkit.Eventually(t, "not ready while draining", func() bool { code, _ := httpGet(t, admin+"/healthz/ready"); return code == 503 })
	// A SIGHUP during the drain (a config-management agent's) neither reloads nor cuts.
	testkit.Eventually(t, "the drain to begin", func() bool { return len(p.find("shutting down: draining connections")) > 0 })
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.Eventually(t, "the SIGHUP seen during the drain", func() bool {
		return len(p.find("SIGHUP ignored: draining (no reloads, nothing cut)"))+len(p.find("second signal: closing every connection now")) > 0
	})
	if cut := p.find("second signal: closing every connection now"); len(cut) > 0 {
		t.Fatalf("a SIGHUP during the drain cut every connection: %v", cut[0])
	}
	br := bufio.NewReader(tc)
	if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "hello from the ewgate demo backend") {
		t.Fatalf("open connection during drain: %q %v", line, err)
	}
	fmt.Fprintf(tc, "still here\n")
	br.ReadString('\n') // "type a line..."
	if line, err := br.ReadString('\n'); err != nil || line != "echo: still here\n" {
		t.Fatalf("echo during drain: %q %v", line, err)
	}
	select {
	case err := <-p.done:
		t.Fatalf("ewgate exited (%v) with a connection open inside the drain period", err)
	default:
	}
	tc.Close()
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit after drain: %v; want 0", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("ewgate did not exit after its last connection closed")
	}
}

// sClient runs openssl s_client until the demo greeting arrives (bounded), then closes stdin.
func sClient(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_client"}, args...)...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	var b strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "hello from the ewgate demo backend") {
			break
		}
	}
	return b.String()
}

// -h and --help print the usage on stdout and exit 0, for the command and each subcommand
// (before, the subcommands' went to stderr with status 2); a wrong flag still exits 2.
func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}, {"serve", "-h"}, {"check", "--help"}, {"vm-config", "-h"}} {
		var stdout, stderr bytes.Buffer
		cmd := ewgate(args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Errorf("%v: %v (stderr %q)", args, err, stderr.String())
		}
		if !strings.Contains(stdout.String(), "usage") && !strings.Contains(stdout.String(), "Usage") {
			t.Errorf("%v: no usage on stdout: %q", args, stdout.String())
		}
	}
	err := ewgate("check", "--no-such-flag").Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Errorf("a wrong flag: %v; want exit 2", err)
	}
}

// ewgate check --offline passes every config shipped under deploy/ (they name certificate files
// of the host or pod they are for), and still refuses what is wrong in them; without --offline
// the overlays fail on their missing files.
func TestCheckOfflineShippedConfigs(t *testing.T) {
	files, _ := filepath.Glob("../../deploy/*/ewgate.yaml")
	overlays, _ := filepath.Glob("../../deploy/kubernetes/overlays/*/ewgate.yaml")
	files = append(files, overlays...)
	if len(overlays) < 2 || len(files) < 3 {
		t.Fatalf("shipped configs: %v", files)
	}
	for _, f := range files {
		out, err := ewgate("check", "--offline", "--config", f).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": valid (") {
			t.Errorf("check --offline %s: %v\n%s", f, err, out)
		}
	}
	for _, f := range overlays {
		out, err := ewgate("check", "--config", f).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "cannot read: ") {
			t.Errorf("check %s on a host without its files: %v\n%s; want the missing files named", f, err, out)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	raw, err := os.ReadFile(overlays[0])
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bad, append(raw, []byte("drain_timeout: soon\n")...), 0o600)
	out, err := ewgate("check", "--offline", "--config", bad).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || strings.Contains(string(out), "cannot read") || !strings.Contains(string(out), "drain_timeout") {
		t.Errorf("check --offline of a broken overlay: %v\n%s; want exit 1 naming drain_timeout only", err, out)
	}
}

// Stopping `make run` by its PID stops ewgate: deploy/local/run.sh (what make run runs) forwards
// SIGTERM to ewgate, waits for its drain and stops the demo backend, so the ports are free when it
// exits (before, the script died and left ewgate holding them: the next make run failed with
// "address already in use").
func TestRunScriptStopsByPID(t *testing.T) {
	raw, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	demoAddr, meshAddr := freeAddr(t), freeAddr(t)
	_, demoPort, _ := net.SplitHostPort(demoAddr)
	cfg := strings.NewReplacer("ports: {tls: 18443}", "ports: {tls: "+demoPort+"}",
		"127.0.0.1:15000", "127.0.0.1:0", "127.0.0.1:15020", "127.0.0.1:0", "127.0.0.1:15021", "127.0.0.1:0", "127.0.0.1:15443", meshAddr, "127.0.0.1:15444", "127.0.0.1:0", "127.0.0.1:15010", "127.0.0.1:0",
		"127.0.0.1:18443", demoAddr, "drain_timeout: 30s", "drain_timeout: 5s",
	).Replace(string(raw))
	path := filepath.Join(t.TempDir(), "ewgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "../../deploy/local/run.sh", binDir)
	cmd.Env = append(os.Environ(), "EWGATE_CONFIG="+path, "DEMO_LISTEN="+demoAddr)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	testkit.Eventually(t, "ewgate serving the mesh port", func() bool {
		c, err := net.Dial("tcp", meshAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	cmd.Process.Signal(syscall.SIGTERM) // the script's PID, as `kill PID` does
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run.sh after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("run.sh did not exit after SIGTERM\n%s", out.String())
	}
	for _, addr := range []string{meshAddr, demoAddr} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s still held after run.sh exited: %v\n%s", addr, err, out.String())
		}
		ln.Close()
	}
}
