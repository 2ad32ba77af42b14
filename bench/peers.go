package bench

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/template"
	"time"
)

//go:embed peers/*.tmpl
var peerFiles embed.FS

// The targets, in the order every phase cycles through them.
const (
	Ewgate = "ewgate" // the default relay engine (epoll event loops)
	// EwgateGo is the same binary on its goroutine relay (relay.engine: goroutines), the shape
	// the engine replaced, measured side by side.
	EwgateGo = "ewgate-goroutines"
	HAProxy  = "haproxy"
	Nginx    = "nginx"
	Direct   = "direct"
)

// AllTargets is every target in run order.
var AllTargets = []string{Ewgate, EwgateGo, HAProxy, Nginx, Direct}

var labels = map[string]string{Ewgate: "ewgate", EwgateGo: "ewgate (goroutines)", HAProxy: "HAProxy", Nginx: "nginx", Direct: "direct"}

// relayEngine is the relay.engine of each ewgate target.
var relayEngine = map[string]string{Ewgate: "epoll", EwgateGo: "goroutines"}

const streamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

// ensurePeers installs HAProxy and nginx with its stream module from Debian packages, only
// what is missing. Services are kept from starting during the install (policy-rc.d), so no
// nginx ends up listening on port 80.
func ensurePeers(logw io.Writer) error {
	var missing []string
	if _, err := exec.LookPath("haproxy"); err != nil && !exists("/usr/sbin/haproxy") {
		missing = append(missing, "haproxy")
	}
	if _, err := exec.LookPath("nginx"); err != nil && !exists("/usr/sbin/nginx") {
		missing = append(missing, "nginx")
	}
	if !exists(streamModule) {
		missing = append(missing, "libnginx-mod-stream")
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Fprintf(logw, "installing %s (apt)\n", strings.Join(missing, " "))
	const policy = "/usr/sbin/policy-rc.d"
	if !exists(policy) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err == nil {
			defer os.Remove(policy)
		}
	}
	run := func(args ...string) error {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("bench: apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("update", "-qq"); err != nil {
		return err
	}
	return run(append([]string{"install", "-y", "-qq"}, missing...)...)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

func peerBinary(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

// buildEwgate builds the gateway in release mode (as `make build` does) into the work dir.
func buildEwgate(ctx context.Context, repo, out string) (version string, err error) {
	v, err := exec.CommandContext(ctx, "git", "-C", repo, "describe", "--always", "--dirty").Output()
	version = strings.TrimSpace(string(v))
	if err != nil || version == "" {
		version = "dev"
	}
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-tags", "grpcnotrace", "-ldflags", "-s -w -X main.version="+version, "-o", out, "./cmd/ewgate")
	cmd.Dir = repo
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bench: build ewgate: %w\n%s", err, b)
	}
	return version, nil
}

func goTool() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); exists(p) {
		return p
	}
	return "go"
}

// peerVersions returns one line per peer for the report.
func peerVersions() map[string]string {
	out := map[string]string{}
	if b, err := exec.Command(peerBinary("haproxy"), "-v").CombinedOutput(); err == nil {
		out[HAProxy] = firstLine(string(b))
	}
	if b, err := exec.Command(peerBinary("nginx"), "-v").CombinedOutput(); err == nil {
		out[Nginx] = strings.TrimPrefix(firstLine(string(b)), "nginx version: ")
	}
	return out
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(s)
}

// target is one thing the client connects to: a proxy it started, or the backend itself.
type target struct {
	name  string
	addr  string
	admin string // ewgate's admin address
	p     *proc
	pids  []int // whose CPU, RSS and fds count as the proxy's
}

type peerEnv struct {
	dir     string // work directory for configs and logs
	backend string
	workers int
	ewgate  string // binary
}

type tmplData struct {
	Port, AdminPort, Workers int
	SNI, Backend, Dir        string
	StreamModule             string
	Relay                    string // ewgate's relay.engine
}

// startTarget starts the named proxy on fresh ports and waits until it accepts.
func startTarget(ctx context.Context, env peerEnv, name string) (*target, error) {
	if name == Direct {
		return &target{name: Direct, addr: env.backend}, nil
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	d := tmplData{Port: port, AdminPort: admin, Workers: env.workers, SNI: SNI, Backend: env.backend, Dir: env.dir,
		StreamModule: streamModule, Relay: relayEngine[name]}
	file := map[string]string{Ewgate: "ewgate.yaml", EwgateGo: "ewgate.yaml", HAProxy: "haproxy.cfg", Nginx: "nginx.conf"}[name]
	cfg := filepath.Join(env.dir, name+"-"+file)
	if err := render(file+".tmpl", cfg, d); err != nil {
		return nil, err
	}
	var argv []string
	switch name {
	case Ewgate, EwgateGo:
		argv = []string{env.ewgate, "serve", "--config", cfg}
	case HAProxy:
		argv = []string{peerBinary("haproxy"), "-db", "-f", cfg}
	case Nginx:
		argv = []string{peerBinary("nginx"), "-p", env.dir, "-c", cfg}
	}
	p, err := startProc(name, filepath.Join(env.dir, name+".log"), argv...)
	if err != nil {
		return nil, err
	}
	t := &target{name: name, addr: fmt.Sprintf("127.0.0.1:%d", port), p: p}
	ready := func() bool { return canDial(t.addr) }
	if isEwgate(name) {
		t.admin = fmt.Sprintf("127.0.0.1:%d", admin)
		ready = func() bool { return httpOK("http://" + t.admin + "/healthz/ready") }
	}
	if err := waitFor(ctx, p, "ready", 15*time.Second, ready); err != nil {
		p.stop()
		return nil, err
	}
	t.pids = []int{p.pid()}
	if name == Nginx {
		// The master forks its workers before it listens; wait until all of them are there.
		err := waitFor(ctx, p, "workers up", 5*time.Second, func() bool { return len(children(p.pid())) >= env.workers })
		if err != nil {
			p.stop()
			return nil, err
		}
		t.pids = append(t.pids, children(p.pid())...)
	}
	return t, nil
}

func isEwgate(name string) bool { return name == Ewgate || name == EwgateGo }

func (t *target) stop() {
	if t != nil && t.p != nil {
		t.p.stop()
	}
}

func render(name, out string, d tmplData) error {
	src, err := peerFiles.ReadFile("peers/" + name)
	if err != nil {
		return err
	}
	tm, err := template.New(name).Option("missingkey=error").Parse(string(src))
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if err := tm.Execute(&b, d); err != nil {
		return err
	}
	return os.WriteFile(out, b.Bytes(), 0o644)
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

func httpOK(url string) bool {
	resp, err := httpClient.Get(url)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func httpGet(url string) ([]byte, error) { return httpGetTimeout(url, httpClient.Timeout) }

func httpGetTimeout(url string, timeout time.Duration) ([]byte, error) {
	resp, err := (&http.Client{Timeout: timeout}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}
