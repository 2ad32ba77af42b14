// Package deploy_test checks the packaging under deploy/ that needs no cluster: the systemd unit,
// and the container image in real OCI tools (image_test.go).
// The Kubernetes manifests are rendered and dry-run against a real apiserver in the e2e suite
// (e2e/scenarios/deploy_test.go), where kubectl is guaranteed.
package deploy_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const unitPath = "systemd/ewgate.service"

// unit is a parsed systemd unit file: section -> key -> values (a key may repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %q", path, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u unit) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func TestSystemdUnitKeys(t *testing.T) {
	u := parseUnit(t, unitPath)
	want := map[string]string{
		"Restart":         "on-failure",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
		"PrivateDevices":  "yes",
		"DynamicUser":     "yes",
		"StateDirectory":  "ewgate",
		"KillSignal":      "SIGTERM",
	}
	for k, v := range want {
		if got := u.get("Service", k); got != v {
			t.Errorf("[Service] %s=%q, want %q", k, got, v)
		}
	}
	if got := u.get("Service", "CapabilityBoundingSet"); got != "" {
		t.Errorf("CapabilityBoundingSet=%q, want empty (no capability at all)", got)
	}
	// systemd runs ExecReload lines in order and stops at the first that fails: the check
	// first, so `systemctl reload` fails on an invalid file instead of reporting success.
	reload := u["Service"]["ExecReload"]
	if len(reload) != 2 || reload[0] != u.get("Service", "ExecStartPre") || !strings.Contains(reload[0], "ewgate check --config /etc/ewgate/ewgate.yaml") ||
		!strings.Contains(reload[1], "-HUP $MAINPID") {
		t.Errorf("ExecReload=%q, want `ewgate check --config /etc/ewgate/ewgate.yaml` (as ExecStartPre) then a SIGHUP to $MAINPID", reload)
	}
	if got := u.get("Service", "ExecStart"); !strings.HasSuffix(got, "ewgate serve --config /etc/ewgate/ewgate.yaml") {
		t.Errorf("ExecStart=%q", got)
	}
	// Up to 6 fds per proxied connection (the goroutine relay; 2 on the epoll engine): the limit
	// must allow the default max_connections of a mesh and an ingress listener (2 x 10000) on
	// either engine, plus headroom.
	nofile, err := strconv.Atoi(u.get("Service", "LimitNOFILE"))
	if err != nil || nofile < 6*2*10000+1000 {
		t.Errorf("LimitNOFILE=%q, want a number >= %d", u.get("Service", "LimitNOFILE"), 6*2*10000+1000)
	}
	// The stop timeout must cover the default drain_timeout (30s).
	stop, err := time.ParseDuration(u.get("Service", "TimeoutStopSec"))
	if err != nil || stop <= 30*time.Second {
		t.Errorf("TimeoutStopSec=%q, want longer than the 30s drain_timeout", u.get("Service", "TimeoutStopSec"))
	}
	if u.get("Install", "WantedBy") != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%q", u.get("Install", "WantedBy"))
	}
}

// TestSystemdUnitVerify runs systemd's own checker on the unit in a throw-away root holding the
// system's units and stand-ins for the executables the unit names. Any output (an unknown key,
// a value systemd cannot parse: it ignores those and exits 0) is a failure. On a machine
// without systemd-analyze only TestSystemdUnitKeys checks the unit, and this test says so.
func TestSystemdUnitVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not found: the unit is checked by TestSystemdUnitKeys only (apt-get install systemd)")
		return
	}
	units := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(units, "sysinit.target")); err != nil {
		t.Fatalf("systemd-analyze is installed but %s has no sysinit.target: %v", units, err)
	}
	root := t.TempDir()
	u := parseUnit(t, unitPath)
	var execs []string
	for _, k := range []string{"ExecStartPre", "ExecStart", "ExecReload"} {
		for _, v := range u["Service"][k] {
			execs = append(execs, strings.Fields(strings.TrimLeft(v, "-@:+!"))[0])
		}
	}
	for _, e := range execs {
		write(t, filepath.Join(root, e), "#!/bin/sh\n", 0o755)
	}
	body, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "etc/systemd/system/ewgate.service"), string(body), 0o644)
	copyTree(t, units, filepath.Join(root, units))
	out, err := exec.Command(analyze, "verify", "--root="+root, "ewgate.service").CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func write(t *testing.T, path, body string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

// copyTree copies the system's unit directory into the test root, symlinks as symlinks (systemd
// resolves them inside the root).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case d.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case d.Type().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o644)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSystemdReloadChecksFirst runs the unit's ExecReload lines as systemd does (in order, the
// first failure ends the reload and fails it), with the real ewgate binary and a stand-in main
// process: on an invalid file the reload fails and no SIGHUP is sent; on a valid one the main
// process gets its SIGHUP. (Before, the lone kill -HUP made systemctl report success for an
// invalid file.)
func TestSystemdReloadChecksFirst(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ewgate")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ewgate").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "ewgate.yaml")
	reload := func(t *testing.T, mainPID int) error {
		for _, line := range parseUnit(t, unitPath)["Service"]["ExecReload"] {
			line = strings.NewReplacer("/usr/local/bin/ewgate", bin, "/etc/ewgate/ewgate.yaml", cfg,
				"$MAINPID", strconv.Itoa(mainPID)).Replace(line)
			f := strings.Fields(line)
			if out, err := exec.Command(f[0], f[1:]...).CombinedOutput(); err != nil {
				return fmt.Errorf("%s: %v\n%s", line, err, out)
			}
		}
		return nil
	}
	for _, tc := range []struct {
		name, config string
		wantHUP      bool
	}{
		{"invalid", "listeners:\n  - {name: mesh, kind: mesh, address: nowhere}\n", false},
		{"valid", "listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0}\n", true},
	} {
		write(t, cfg, tc.config, 0o644)
		main := exec.Command("sleep", "300") // the stand-in main process: SIGHUP ends it
		if err := main.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- main.Wait() }()
		err := reload(t, main.Process.Pid)
		if (err == nil) != tc.wantHUP {
			t.Errorf("%s file: reload error %v; want failure %v", tc.name, err, !tc.wantHUP)
		}
		if !tc.wantHUP {
			main.Process.Kill()
			if werr := <-done; !strings.Contains(fmt.Sprint(werr), "killed") {
				t.Errorf("%s file: the main process got a signal before the kill: %v", tc.name, werr)
			}
			continue
		}
		if werr := <-done; !strings.Contains(fmt.Sprint(werr), "hangup") {
			t.Errorf("%s file: main process ended with %v; want the SIGHUP", tc.name, werr)
		}
	}
}
