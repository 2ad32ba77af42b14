package dataplane

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// blackHole is a loopback address whose connects hang: a listening socket with a backlog of 0
// that never accepts, its queue filled by the test, so the kernel drops further SYNs.
func blackHole(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "black hole")
	t.Cleanup(func() { f.Close() })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}).String()
	for i := 0; ; i++ { // fill the accept queue until a connect times out
		if i == 8 {
			t.Fatalf("%s still takes connections after %d", addr, i)
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return addr
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

// A connect that does not fail at once but times out (the upstream registered on the relay
// engine's loop, then given up) still leaves the client socket able to carry the alert.
func TestConnectTimeoutIsAnInternalErrorAlert(t *testing.T) {
	pki := newPKI(t)
	g := startGateway(t, "listeners:\n  - {name: mesh, kind: mesh, address: 127.0.0.1:0, routes_from: xds}\n")
	if err := g.SetMeshClusters("mesh", []ClusterSpec{{Name: reviews, ConnectTimeout: 300 * time.Millisecond,
		Endpoints: []EndpointSpec{{Address: blackHole(t)}}}}); err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio"))
	if err == nil {
		c.Close()
		t.Fatal("handshake succeeded; want a refusal")
	}
	if !strings.Contains(err.Error(), "remote error: tls: internal error") {
		t.Fatalf("client error %q; want the TLS alert internal_error", err)
	}
	testkit.Eventually(t, "connect_failed counted", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "cluster": reviews, "result": "connect_failed"}) == 1
	})
	for _, e := range g.logs.FilterMessage("connection").All() {
		if err, _ := e.ContextMap()["error"].(string); !strings.Contains(err, "timeout") {
			t.Fatalf("connect_failed logged with %q; want the connect's timeout", err)
		}
	}
}
