package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	ewgateOnce sync.Once
	ewgateBin  string
	ewgateErr  error
)

// EwgateBinary builds ewgate from the main module (the repository root, the parent of this
// module) once per test process, as `make build` would, and returns the binary's path.
func EwgateBinary(t testing.TB) string {
	t.Helper()
	ewgateOnce.Do(func() {
		dir := filepath.Join(TempRoot(), "ewgate-bin")
		if ewgateErr = os.MkdirAll(dir, 0o755); ewgateErr != nil {
			return
		}
		ewgateBin = filepath.Join(dir, "ewgate")
		cmd := exec.Command("go", "build", "-trimpath", "-o", ewgateBin, "./cmd/ewgate")
		if cmd.Dir, ewgateErr = repoRoot(); ewgateErr != nil {
			return
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			ewgateErr = fmt.Errorf("building ewgate: %v\n%s", err, out)
		}
	})
	if ewgateErr != nil {
		t.Fatal(ewgateErr)
	}
	return ewgateBin
}

// Ewgate is a running `ewgate serve`.
type Ewgate struct {
	Proc   *Proc
	Admin  string // http://host:port of the admin listener
	NetNS  *NetNS // the replica's own network (StartEwgatePod); nil: the test's
	config string // the config file it was started with
	client *http.Client
}

// StartEwgate writes config (YAML) into a new directory, starts `ewgate serve` on it and waits
// until its admin listener answers (readiness is the caller's to wait for: it may depend on a
// control plane). The process is stopped when the test ends (its log tail printed if the test
// failed).
func StartEwgate(t testing.TB, adminAddr, config string) *Ewgate {
	t.Helper()
	dir := newEwgateDir(t)
	path := filepath.Join(dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return startEwgate(t, ProcSpec{Name: "ewgate", Dir: dir}, path, adminAddr)
}

// Pod is an ewgate replica as Kubernetes runs one: its own host name (the pod name, which ewgate
// takes as its xds.node.name when the config gives none) and its own network namespace (so
// replicas share one config file, listen addresses included), with Forward's addresses of the
// test's loopback (istiod, backends) reachable at the same address inside it.
type Pod struct {
	Name    string   // host name
	Config  string   // path of the config file, shared by replicas (WriteEwgateConfig)
	Admin   string   // admin address in the config, as reached inside the pod
	Forward []string // host:port on the test's loopback to make reachable in the pod
}

// WriteEwgateConfig writes config (YAML) to a new file for StartEwgatePod, as a ConfigMap
// mounted into every replica.
func WriteEwgateConfig(t testing.TB, config string) string {
	t.Helper()
	path := filepath.Join(newEwgateDir(t), "ewgate.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartEwgatePod starts `ewgate serve` as the pod p and waits until its admin listener answers
// inside the pod's network.
func StartEwgatePod(t testing.TB, p Pod) *Ewgate {
	t.Helper()
	spec := ProcSpec{Name: "ewgate-" + p.Name, Dir: newEwgateDir(t), Hostname: p.Name, PrivateNet: true}
	return startEwgate(t, spec, p.Config, p.Admin, p.Forward...)
}

// StartEwgateIn starts `ewgate serve` on config (YAML) inside the existing network namespace
// net (a Network of a MultiCluster: the gateway stands in that network, next to its backends),
// with forward's addresses of the test's loopback (istiod) reachable at the same address inside,
// and waits until its admin listener (adminAddr, inside net) answers.
func StartEwgateIn(t testing.TB, net *NetNS, name, config, adminAddr string, forward ...string) *Ewgate {
	t.Helper()
	dir := newEwgateDir(t)
	path := filepath.Join(dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return startEwgate(t, ProcSpec{Name: name, Dir: dir, NetNSPath: net.Path()}, path, adminAddr, forward...)
}

func newEwgateDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(TempRoot(), "ewgate-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func startEwgate(t testing.TB, spec ProcSpec, config, adminAddr string, forward ...string) *Ewgate {
	t.Helper()
	spec.Path, spec.Args = EwgateBinary(t), []string{"serve", "--config", config}
	p, err := StartProc(spec)
	if err != nil {
		t.Fatal(err)
	}
	StopOnCleanup(t, p)
	e := &Ewgate{Proc: p, Admin: "http://" + adminAddr, config: config, client: http.DefaultClient}
	if spec.PrivateNet || spec.NetNSPath != "" {
		path := spec.NetNSPath
		if path == "" {
			path = fmt.Sprintf("/proc/%d/ns/net", p.PID())
		}
		if e.NetNS, err = openNetNSPath(path); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.NetNS.Close() })
		e.client = &http.Client{Transport: &http.Transport{DialContext: e.NetNS.DialContext, DisableKeepAlives: true}}
		for _, a := range forward {
			e.NetNS.Forward(t, a)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitFor(ctx, 20*time.Millisecond, func() error {
		_, err := e.Get(ctx, "/metrics")
		return err
	}); err != nil {
		t.Fatalf("ewgate admin %s: %v\n%s", adminAddr, err, p.Tail(40))
	}
	return e
}

// Dial opens a TCP connection to addr as a client next to this replica reaches it: inside its
// network namespace for a pod, else on the test's own network.
func (e *Ewgate) Dial(ctx context.Context, addr string) (net.Conn, error) {
	if e.NetNS != nil {
		return e.NetNS.DialContext(ctx, "tcp", addr)
	}
	return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
}

// Get fetches an admin path and returns the body; a status other than 200 is an error.
func (e *Ewgate) Get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.Admin+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// WaitRoutes waits until /debug/routes satisfies cond.
func (e *Ewgate) WaitRoutes(ctx context.Context, what string, cond func(routes string) bool) error {
	var last string
	err := e.Proc.WaitFor(ctx, 50*time.Millisecond, func() error {
		body, err := e.Get(ctx, "/debug/routes")
		if err != nil {
			return err
		}
		last = body
		if !cond(body) {
			return fmt.Errorf("not yet: %s", what)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w\nlast /debug/routes:\n%s", err, strings.TrimSpace(last))
	}
	return nil
}
