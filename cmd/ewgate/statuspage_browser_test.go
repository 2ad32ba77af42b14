//go:build browser

// The status page in a real browser: `make test` runs this file (go test -tags browser) after
// installing Chromium (make tools); `make unit` leaves it out, a browser start being the slowest
// step of the package. Run it alone with
//
//	go test -tags browser -count=1 -run TestStatusPageInChromium ./cmd/ewgate
//
// and add -update-screenshot to rewrite docs/images/status-page.png from it.

package main

import (
	"bytes"
	"context"
	"flag"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the status page's screenshot to docs/images/status-page.png")

// chromium returns Chromium's path, installing Debian's package through apt when it is missing
// (as make tools does).
func chromium(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Log("chromium missing: installing Debian's package through apt-get")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "chromium"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("chromium is needed and could not be installed (apt-get %s: %v); install Debian's package chromium, or run make tools as root\n%s",
				strings.Join(args, " "), err, out)
		}
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("apt-get installed chromium but it is not on PATH: %v", err)
	}
	return p
}

// headless runs Chromium headless with a private profile under the test's temp dir on url with
// extra flags, and returns its standard output. Chromium and the processes it starts are in a
// process group of their own, killed by its id when the run ends (a browser that hangs is
// killed when the context's bound passes).
func headless(t *testing.T, bin, url string, extra ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
		"--user-data-dir=" + filepath.Join(t.TempDir(), "profile")}, extra...)
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // its helpers, if any outlived it
	if err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(extra, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

// TestStatusPageInChromium loads the status page of a running ewgate with traffic in Chromium and
// checks the rendered DOM: the listener with its open connection, the clusters, the refusal by
// reason, the xDS stream, the issuer, the registered VM and the version. Then it takes the
// screenshot docs/operations.md shows.
func TestStatusPageInChromium(t *testing.T) {
	bin := chromium(t)
	g := startBusyGateway(t)
	out, err := ewgate("version").Output()
	if err != nil {
		t.Fatal(err)
	}
	version := strings.Fields(string(out))[1]

	dom := string(headless(t, bin, g.admin+"/", "--dump-dom"))
	checks := []struct{ what, re string }{
		{"the version", `<span id="version">` + regexp.QuoteMeta(version) + `</span>`},
		{"ready", `<span id="ready"><b class="ok">ready</b></span>`},
		{"the mesh listener with its one open connection", `<tr class="listener"><td class="name">mesh</td><td>mesh</td><td>` +
			regexp.QuoteMeta(g.mesh) + `</td><td>xds</td><td class="n">\d+</td><td class="n">\d+</td><td class="n active">1</td>`},
		{"the routed cluster, healthy, with the open connection", `<tr class="cluster"><td>mesh</td><td class="name">` + regexp.QuoteMeta(g.sni) +
			`</td><td class="n">1</td><td class="n">1</td><td class="n ok">1</td><td class="n">0</td><td class="n active">1</td></tr>`},
		{"the refusal by reason", `<tr class="refusal"><td>mesh</td><td class="reason">unknown_sni</td><td class="n count">1</td></tr>`},
		{"the xDS stream", `<table id="xds">.*<span class="ok">connected</span>`},
		{"the issuer with its key", `<table id="issuers">.*<td>https://issuer.ewgate.test</td><td>cluster1</td><td class="n ok">1</td>`},
		{"the VM registered", `<tr class="vm"><td>spiffe://cluster.local/ns/vms/sa/web</td><td>cluster1</td><td>vms/web</td><td>` + g.vmEntry +
			`</td><td class="w">sidecar~10.1.2.3~web-1.vms~vms.svc.cluster.local</td><td>10.1.2.3</td><td class="state">registered</td>`},
		{"the control endpoint ready", `<b id="control" class="ok">ready</b>`},
	}
	for _, c := range checks {
		if !regexp.MustCompile("(?s)" + c.re).MatchString(dom) {
			t.Errorf("the rendered page lacks %s (/%s/)", c.what, c.re)
		}
	}
	if t.Failed() {
		t.Fatalf("rendered DOM:\n%s", dom)
	}

	shot := filepath.Join(t.TempDir(), "status-page.png")
	headless(t, bin, g.admin+"/", "--screenshot="+shot, "--window-size=1280,900", "--hide-scrollbars")
	f, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(f))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 900 {
		t.Fatalf("screenshot is %v; want 1280x900", b.Size())
	}
	if *updateScreenshot {
		if err := os.WriteFile("../../docs/images/status-page.png", f, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
