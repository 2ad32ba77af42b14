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
