//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// fullDisk mounts a 256 KiB tmpfs on a fresh directory and fills it until a write fails with
// ENOSPC; free removes the filler. It needs root (the tests run as root here and in CI).
func fullDisk(t *testing.T) (dir string, free func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs: run it as root (as CI does)")
	}
	dir = filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("256 KiB tmpfs took more than 4 MB")
		}
		if _, err = f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs ended with %v; want ENOSPC", err)
	}
	// Really full: a small file's content does not fit either.
	if err := os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o600); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing to the full tmpfs: %v; want ENOSPC", err)
	}
	os.Remove(filepath.Join(dir, "probe"))
	return dir, func() {
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFullStoreDiskDegradesOnlyTheVMSide starts the gateway with its file store on a full disk:
// the mesh listener comes up and routes, the status port is ready while /healthz/control is 503
// and ewgate_control_ready 0 with a log line saying what to do; once space returns the groups
// are written, the VM side turns ready and a VM registers.
func TestFullStoreDiskDegradesOnlyTheVMSide(t *testing.T) {
	disk, free := fullDisk(t)
	store := filepath.Join(disk, "store")
	env := newVMTestEnv(t)
	demoAddr := freeAddr(t)
	_, demoPort, _ := net.SplitHostPort(demoAddr)
	cfg := strings.NewReplacer(
		"admin: {address: 127.0.0.1:0}", "admin: {address: 127.0.0.1:0, status_address: 127.0.0.1:0, metrics_address: 127.0.0.1:0}",
		"workload_entries_dir: "+env.dir+"/store", "workload_entries_dir: "+store,
		"services:\n", "services:\n  - {name: demo, namespace: default, hosts: [demo.default.svc.cluster.local], ports: [{number: 8443, name: tls, protocol: TLS}], endpoints: [{address: 127.0.0.1, ports: {tls: "+demoPort+"}, service_account: demo}]}\n",
	).Replace(env.config())
	if !strings.Contains(cfg, store) || !strings.Contains(cfg, "status_address") {
		t.Fatal("the VM test config changed shape; update the replacements")
	}
	path := filepath.Join(env.dir, "ewgate.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	demo := exec.Command(filepath.Join(binDir, "ewgate-demo"), "--listen", demoAddr)
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { demo.Process.Kill(); demo.Wait() })

	p := startServe(t, path)
	status, metrics := "http://"+p.addr(t, "status"), "http://"+p.addr(t, "metrics")
	mesh, control := p.addr(t, "mesh"), p.addr(t, "control")
	testkit.Eventually(t, "ready on the status port", func() bool { code, _ := httpGet(t, status+"/healthz/ready"); return code == 200 })

	// The data plane serves.
	out := sClient(t, "-connect", mesh, "-servername", "outbound_.8443_._.demo.default.svc.cluster.local", "-alpn", "istio")
	if !strings.Contains(out, "hello from the ewgate demo backend") {
		t.Fatalf("mesh traffic with the store's disk full did not reach the backend:\n%s", out)
	}
	// The VM side says it is degraded, and why.
	if code, body := httpGet(t, status+"/healthz/control"); code != 503 || !strings.Contains(body, "degraded") {
		t.Fatalf("/healthz/control with the disk full: %d %q; want 503 degraded", code, body)
	}
	if _, body := httpGet(t, metrics+"/metrics"); !strings.Contains(body, "ewgate_control_ready 0") {
		t.Fatal("ewgate_control_ready is not 0 with the disk full")
	}
	degraded := p.find("VM control side degraded: the workload groups could not be written to the store; " +
		"the mesh listeners serve on, VMs of groups not yet in the store cannot register. " +
		"Free space on the store's volume (or restore access to the API server); ewgate retries with backoff and recovers by itself")
	if len(degraded) == 0 || degraded[0]["store"] != store || !strings.Contains(fmt.Sprint(degraded[0]["error"]), "no space left on device") {
		t.Fatalf("degraded log line %v; want one naming the store and the error", degraded)
	}

	// A reload while degraded is taken (the data plane's part of it at once) and its groups join
	// the retries.
	changed := strings.Replace(cfg, "workload_groups:\n", "workload_groups:\n  - metadata: {name: api, namespace: vms}\n    spec: {template: {serviceAccount: api}}\n", 1)
	if err := os.WriteFile(path, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "reload while degraded", func() bool { return len(p.find("config reloaded")) == 1 })
	if code, _ := httpGet(t, status+"/healthz/control"); code != 503 {
		t.Fatalf("/healthz/control after a reload on a full disk: %d; want 503", code)
	}

	// Space returns: the groups are written and the VM side recovers by itself.
	free()
	testkit.Eventually(t, "/healthz/control 200 after space returned", func() bool { code, _ := httpGet(t, status+"/healthz/control"); return code == 200 })
	// The writes are durable in the store's journal; their files follow shortly (the writer runs
	// once the store is quiet).
	for _, g := range []string{"web", "api"} {
		testkit.Eventually(t, "group "+g+"'s file in the store after recovery", func() bool {
			_, err := os.Stat(filepath.Join(store, "workloadgroups", "vms", g+".yaml"))
			return err == nil
		})
	}
	if _, body := httpGet(t, metrics+"/metrics"); !strings.Contains(body, "ewgate_control_ready 1") {
		t.Fatal("ewgate_control_ready is not 1 after recovery")
	}
	if len(p.find("VM control side recovered: workload groups written to the store")) != 1 {
		t.Fatal("no recovery log line")
	}

	// The VM endpoint serves: a VM of the group registers.
	cc, _, asVM := env.vmClient(t, control)
	registerWebVM(t, cc, asVM, nil)
	testkit.Eventually(t, "the WorkloadEntry's file in the recovered store", func() bool {
		_, err := os.Stat(filepath.Join(store, "workloadentries", "vms", "web-10.1.2.3-vmnet.yaml"))
		return err == nil
	})
}
