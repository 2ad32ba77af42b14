package dataplane

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

func TestProxyProtocolDrivesMaglevAndLogs(t *testing.T) {
	pki := newPKI(t)
	var addrs []string
	bes := map[string]*backend{}
	for range 3 {
		be := startBackend(t, pki, reviews)
		addrs = append(addrs, be.addr())
		bes[be.addr()] = be
	}
	g := startGateway(t, meshYAML(", proxy_protocol: {trusted_cidrs: [127.0.0.0/8]}", cluster(reviews, "mesh", "maglev", addrs...)))

	dialVia := func(header string) error {
		c, err := net.Dial("tcp", g.addr("mesh"))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if header != "" {
			if _, err := c.Write([]byte(header)); err != nil {
				return err
			}
		}
		tc := tls.Client(c, pki.clientConfig(reviews, "istio"))
		if err := tc.Handshake(); err != nil {
			return err
		}
		got, err := exchange(tc, []byte("x"))
		if err == nil && string(got) != "x" {
			err = fmt.Errorf("echo %q", got)
		}
		return err
	}
	endpointsOf := func(client string) map[string]bool {
		seen := map[string]bool{}
		for _, e := range g.logs.FilterMessage("connection").All() {
			if m := e.ContextMap(); m["client"] == client {
				seen[m["endpoint"].(string)] = true
			}
		}
		return seen
	}
	clients := []string{"10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6", "10.1.0.7", "10.1.0.8"}
	for _, ip := range clients {
		for range 4 {
			if err := dialVia(fmt.Sprintf("PROXY TCP4 %s 10.0.0.1 40000 15443\r\n", ip)); err != nil {
				t.Fatalf("client %s via PROXY header: %v", ip, err)
			}
		}
	}
	total := g.logs.FilterMessage("connection").Len()
	testkit.Eventually(t, "access log lines", func() bool { total = g.logs.FilterMessage("connection").Len(); return total == len(clients)*4 })
	used := map[string]bool{}
	for _, ip := range clients {
		seen := endpointsOf(ip + ":40000")
		if len(seen) != 1 {
			t.Fatalf("client %s reached %d endpoints under maglev; want exactly one (the PROXY source address is the key)", ip, len(seen))
		}
		for e := range seen {
			used[e] = true
		}
	}
	if len(used) < 2 {
		t.Fatalf("8 clients all hashed to %v; want them spread", used)
	}
	// A trusted peer that sends no PROXY header is refused.
	if err := dialVia(""); err == nil {
		t.Fatal("a trusted source without a PROXY header was served")
	}
	testkit.Eventually(t, "proxy_protocol_error", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"result": "proxy_protocol_error"}) == 1
	})
}

func TestConnectFailureMovesOnAndEjects(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	dead := deadAddr(t)
	y := meshYAML("", fmt.Sprintf(`  - name: %s
    listener: mesh
    outlier_detection: {consecutive_failures: 2, base_ejection_time: 1h, max_ejection_time: 2h}
    endpoints: [{address: %s}, {address: %s}]
`, reviews, dead, be.addr()))
	g := startGateway(t, y)
	for i := range 6 {
		c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio"))
		if err != nil {
			t.Fatalf("connection %d failed although one endpoint is up: %v", i, err)
		}
		c.Close()
	}
	if v := g.counter("ewgate_upstream_connect_failures_total", map[string]string{"cluster": reviews}); v != 2 {
		t.Fatalf("connect failures = %v; want 2 (then the dead endpoint is ejected and skipped)", v)
	}
	if v := g.counter("ewgate_endpoint_ejections_total", map[string]string{"cluster": reviews}); v != 1 {
		t.Fatalf("ejections = %v, want 1", v)
	}
	view := g.RoutesView().Listeners["mesh"].Routes[0]
	for _, e := range view.Endpoints {
		if (e.Address == dead) != (e.EjectedUntil != nil) {
			t.Fatalf("/debug/routes endpoint %+v: only the dead one should show as ejected", e)
		}
	}
	// The status page's and `ewgate status`'s summary of the same view.
	st := g.Status()
	if len(st.Clusters) != 1 || st.Clusters[0].Endpoints != 2 || st.Clusters[0].Ejected != 1 ||
		len(st.Ejected) != 1 || st.Ejected[0].Address != dead || st.Ejected[0].Cluster != reviews || !st.Ejected[0].Until.After(time.Now()) {
		t.Fatalf("status clusters %+v ejected %+v; want the dead endpoint ejected, 1 of 2", st.Clusters, st.Ejected)
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestAdminEndpoints(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewAdminServer(g.AdminHandler(g.reg, true, nil))
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		bufio.NewReader(resp.Body).WriteTo(&b)
		return resp.StatusCode, b.String()
	}
	if code, _ := get("/healthz/ready"); code != 200 {
		t.Fatalf("ready = %d, want 200", code)
	}
	if code, body := get("/debug/routes"); code != 200 || !strings.Contains(body, reviews) || !strings.Contains(body, be.addr()) {
		t.Fatalf("/debug/routes = %d %s", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "ewgate_route_snapshot_version 1") {
		t.Fatalf("/metrics = %d, missing the snapshot version", code)
	} else if !strings.Contains(body, "ewgate_open_files_limit") {
		t.Fatal("/metrics lacks ewgate_open_files_limit")
	}
	if code, _ := get("/debug/pprof/"); code != 200 {
		t.Fatalf("pprof = %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g.Shutdown(ctx)
	if code, _ := get("/healthz/ready"); code != 503 {
		t.Fatalf("ready while shut down = %d, want 503", code)
	}
}

// TestRealClientsAndServers puts openssl s_server behind the mesh listener and drives it with
// openssl s_client (TLS 1.2 and 1.3), and sends curl through the ingress listener.
func TestRealClientsAndServers(t *testing.T) {
	for _, tool := range []string{"openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required (make test installs it): %v", tool, err)
		}
	}
	pki := newPKI(t)
	dir := t.TempDir()
	certFile, keyFile, caFile := writePEMs(t, pki, dir, reviews, "app.example.com")
	port := freePort(t)
	srv := exec.Command("openssl", "s_server", "-accept", "127.0.0.1:"+port, "-cert", certFile, "-key", keyFile,
		"-alpn", "istio", "-rev", "-quiet")
	var srvOut lockedBuffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Process.Kill()
		srv.Wait()
		if t.Failed() {
			t.Logf("openssl s_server output:\n%s", srvOut.String())
		}
	})
	waitListening(t, "127.0.0.1:"+port)

	web := startHTTPSBackend(t, pki, "app.example.com")
	y := fmt.Sprintf(`listeners:
  - {name: mesh, kind: mesh, address: 127.0.0.1:0}
  - {name: ingress, kind: ingress, address: 127.0.0.1:0, routes: [{hosts: [app.example.com], cluster: web}]}
clusters:
  - {name: %s, listener: mesh, endpoints: [{address: 127.0.0.1:%s}]}
  - {name: web, listener: ingress, endpoints: [{address: %s}]}
`, reviews, port, web)
	g := startGateway(t, y)

	for _, ver := range []string{"-tls1_2", "-tls1_3"} {
		out, err := sClient(t, "ewgate", "etagwe", ver, "-connect", g.addr("mesh"), "-servername", reviews,
			"-alpn", "istio", "-CAfile", caFile, "-verify_return_error", "-brief")
		// s_server -rev answers each line reversed: the bytes went to the real server and back.
		if err != nil {
			t.Fatalf("openssl s_client %s through the mesh listener: %v\n%s", ver, err, out)
		}
	}
	_, gport, _ := net.SplitHostPort(g.addr("ingress"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "10", "--cacert", caFile,
		"--resolve", "app.example.com:"+gport+":127.0.0.1", "https://app.example.com:"+gport+"/hello").CombinedOutput()
	if err != nil || string(out) != "hello from app.example.com /hello" {
		t.Fatalf("curl through the ingress listener: %v\n%s", err, out)
	}
	// curl at the mesh listener (no Istio ALPN) is refused.
	_, mport, _ := net.SplitHostPort(g.addr("mesh"))
	if out, err := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "10", "--cacert", caFile,
		"--resolve", reviews+":"+mport+":127.0.0.1", "https://"+reviews+":"+mport+"/").CombinedOutput(); err == nil {
		t.Fatalf("curl with ALPN h2/http1.1 got through the mesh listener: %s", out)
	}
}

func writePEMs(t *testing.T, pki *testPKI, dir string, names ...string) (cert, key, ca string) {
	t.Helper()
	cert, key = pki.Server(t, names...).WriteFiles(t, dir, "cert")
	return cert, key, testkit.WriteFile(t, dir, "ca.pem", pki.PEM())
}

func freePort(t *testing.T) string {
	a := deadAddr(t)
	_, p, _ := net.SplitHostPort(a)
	return p
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	testkit.Eventually(t, addr+" to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// startHTTPSBackend is a crypto/tls HTTPS server answering "hello from <host> <path>".
func startHTTPSBackend(t *testing.T, pki *testPKI, name string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{pki.leaf(t, name)},
		NextProtos:   []string{"http/1.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s %s", r.TLS.ServerName, r.URL.Path)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// sClient runs openssl s_client with args, types line, and waits (bounded) until want appears in
// its output; then it closes stdin so s_client ends. It returns the output.
func sClient(t *testing.T, line, want string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", append([]string{"s_client"}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", err
	}
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer cmd.Wait()
	defer stdin.Close()
	if _, err := io.WriteString(stdin, line+"\n"); err != nil {
		return out.String(), err
	}
	for wait := time.Millisecond; !strings.Contains(out.String(), want); wait = min(2*wait, 50*time.Millisecond) {
		if ctx.Err() != nil {
			return out.String(), fmt.Errorf("no %q from s_client in time", want)
		}
		time.Sleep(wait)
	}
	return out.String(), nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
