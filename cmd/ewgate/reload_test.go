package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// TestReloadStormUnderRace: SIGHUPs while the file is rewritten, against a binary built with
// the race detector when the tests are (make test): one goroutine owns reloads, so the race
// detector finds nothing (before, the watcher and the signal loop both reloaded and wrote the
// serving config and the last hash), every reload ends in a log line, and SIGTERM still drains
// and exits 0.
func TestReloadStormUnderRace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ewgate.yaml")
	body := func(mark int) []byte {
		return []byte("admin: {address: 127.0.0.1:0}\nreload: {watch_interval: 10ms}\ndrain_timeout: 1s\n" +
			"listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0}\n# mark " + strings.Repeat("x", mark%7) + "\n")
	}
	if err := os.WriteFile(path, body(0), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, path)
	p.addr(t, "mesh")
	for i := 1; i <= 60; i++ {
		if i%2 == 0 {
			p.cmd.Process.Signal(syscall.SIGHUP)
		} else if err := os.WriteFile(path, body(i), 0o600); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			// Let the owner catch up now and then, so the storm spans many reloads.
			n := len(p.find("config reloaded"))
			testkit.Eventually(t, "a reload", func() bool { return len(p.find("config reloaded")) > n })
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.done; err != nil {
		t.Fatalf("ewgate after the reload storm: %v (exit 66 is the race detector's)", err)
	}
	if n := len(p.find("config reloaded")); n < 6 {
		t.Fatalf("%d reloads logged; want at least 6", n)
	}
	if refused := p.find("config reload refused"); len(refused) > 0 {
		t.Fatalf("a reload was refused: %v", refused[0])
	}
}

// A reload that changes a restart-only key applies what it can, keeps the running value of that
// key, and says so: the warning names each key and ewgate_config_reloads_total{result=
// "restart_required"} counts it (before, it logged "config reloaded" and kept the old address
// silently).
func TestReloadNamesRestartOnlyKeys(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ewgate.yaml")
	admin, moved := freeAddr(t), freeAddr(t)
	body := func(adminAddr, listener string) []byte {
		return []byte("admin: {address: " + adminAddr + "}\nreload: {watch_interval: -1s}\ndrain_timeout: 1s\n" +
			"listeners:\n  - {name: " + listener + ", kind: mesh, address: 127.0.0.1:0}\n")
	}
	if err := os.WriteFile(path, body(admin, "mesh"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, path)
	p.addr(t, "mesh")
	if err := os.WriteFile(path, body(moved, "mesh2"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.Eventually(t, "the reload's warning", func() bool { return len(p.find("config reloaded; restart to apply")) == 1 })
	l := p.find("config reloaded; restart to apply")[0]
	if keys, _ := l["keys"].([]any); len(keys) != 1 || keys[0] != "admin.address" {
		t.Fatalf("warning names keys %v; want [admin.address]", l["keys"])
	}
	if l["level"] != "warn" {
		t.Fatalf("warning logged at %v", l["level"])
	}
	p.addr(t, "mesh2") // the rest of the file was applied
	code, metrics := httpGet(t, "http://"+admin+"/metrics")
	if code != 200 || !strings.Contains(metrics, `ewgate_config_reloads_total{result="restart_required"} 1`) {
		t.Fatalf("metrics on the running admin address: %d\n%s", code, metrics)
	}
	// Back to the running value: nothing to restart for.
	if err := os.WriteFile(path, body(admin, "mesh"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd.Process.Signal(syscall.SIGHUP)
	testkit.Eventually(t, "a plain reload", func() bool { return len(p.find("config reloaded")) == 1 })
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-p.done; err != nil {
		t.Fatal(err)
	}
}
