package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// TestFileBudgetCountsControlAndAdmin runs the binary under a 4096-file limit: a VM control
// endpoint whose connection cap cannot fit beside the reserve is refused at start with an
// error naming it; one that fits serves, and the mesh listener (max_connections unset) gets a
// share of what the control endpoint and the admin server leave, not a share of the whole limit.
func TestFileBudgetCountsControlAndAdmin(t *testing.T) {
	env := newVMTestEnv(t)
	write := func(controlConns string) string {
		cfg := strings.Replace(env.config(), "  address: 127.0.0.1:0\n  tls:",
			"  address: 127.0.0.1:0\n  limits: {max_connections: "+controlConns+"}\n  tls:", 1)
		path := filepath.Join(t.TempDir(), "ewgate.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	limited := func(args ...string) *exec.Cmd {
		return exec.Command("prlimit", append([]string{"--nofile=4096:4096", filepath.Join(binDir, "ewgate")}, args...)...)
	}

	refused := startProcess(t, limited("serve", "--config", write("5000")))
	var stopped map[string]any
	testkit.Eventually(t, "serve to stop or start", func() bool {
		if len(refused.find("ewgate serving")) > 0 {
			t.Fatal("serve started with a control cap of 5000 connections under a 4096-file limit")
		}
		if l := refused.find("ewgate stopped"); len(l) > 0 {
			stopped = l[0]
			return true
		}
		return false
	})
	if err := <-refused.done; err == nil {
		t.Fatal("serve refused its config but exited 0")
	}
	msg, _ := stopped["error"].(string)
	for _, want := range []string{"do not fit in the open-file limit", "control endpoint (5000 connections)", "admin server"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal does not say %q: %s", want, msg)
		}
	}

	p := startProcess(t, limited("serve", "--config", write("1000")))
	testkit.Eventually(t, "the open-file budget line", func() bool { return len(p.find("open-file budget")) > 0 })
	line := p.find("open-file budget")[0]
	t.Logf("budget: %v", line)
	// 4096 - reserve 256 - control (1000 + listener + 2 upstream connections) - admin (64 + 1)
	// leaves 2772 files: 1386 connections at 2 files each on the epoll engine.
	_, metrics := httpGet(t, "http://"+p.addr(t, "admin")+"/metrics")
	if want := `ewgate_listener_max_connections{listener="mesh",scope="listener"} 1386` + "\n"; !strings.Contains(metrics, want) {
		t.Fatalf("mesh listener's derived cap: want %q (the limit less the reserve, the control endpoint and admin, at 2 files each) in\n%.3000s", want, metrics)
	}
}
