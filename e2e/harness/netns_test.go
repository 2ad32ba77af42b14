package harness

import (
	"context"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// A peer with Hostname and PrivateNet has its own host name and network: what listens there is
// reachable through its NetNS only, and Forward brings one of the test's addresses into it.
func TestProcPodNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CLONE_NEWUTS, CLONE_NEWNET, setns)")
	}
	before, _ := os.Hostname()
	p, err := StartProc(ProcSpec{Name: "pod", Path: "/bin/sh", Args: []string{"-c", "hostname; exec sleep 60"},
		Hostname: "ewgate-abc12", PrivateNet: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitLog(ctx, "ewgate-abc12"); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.Hostname(); after != before {
		t.Fatalf("the machine's host name changed: %q -> %q", before, after)
	}
	ns, err := OpenNetNS(p.PID())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()

	inside, err := ns.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if c, err := net.DialTimeout("tcp", inside.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("a listener in the pod's network answered on the test's loopback")
	}
	c, err := ns.DialContext(ctx, "tcp", inside.Addr().String())
	if err != nil {
		t.Fatalf("dial inside the pod's network: %v", err)
	}
	c.Close()

	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	go func() {
		if c, err := host.Accept(); err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	ns.Forward(t, host.Addr().String())
	c, err = ns.DialContext(ctx, "tcp", host.Addr().String())
	if err != nil {
		t.Fatalf("dial the forwarded address inside the pod: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the forward: %q %v", buf, err)
	}
}
