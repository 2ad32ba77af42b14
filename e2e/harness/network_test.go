package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// Two Networks are apart; AddAddr gives each an address of its own; a peer started with
// NetNSPath runs inside one; Bridge publishes a listener of one network in the other.
func TestNetworksBridgeAndJoin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	na, err := StartNetwork("a")
	if err != nil {
		t.Fatal(err)
	}
	defer na.Stop()
	nb, err := StartNetwork("b")
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Stop()
	if err := na.AddAddr(net.IPv4(10, 1, 0, 15)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // a second AddAddr of the same address keeps the one
		if err := nb.AddAddr(net.IPv4(10, 2, 0, 10)); err != nil {
			t.Fatal(err)
		}
	}
	if addrs, err := nb.Addrs(); err != nil || len(addrs) != 3 || addrs[1] != "10.2.0.10/32" {
		t.Fatalf("network b addresses %v %v, want 127.0.0.1/8 10.2.0.10/32 ::1/128", addrs, err)
	}

	ln, err := nb.Listen("tcp", "10.2.0.10:9000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for i := 0; i < 10; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "from %s\n", c.LocalAddr())
			c.Close()
		}
	}()
	if c, err := na.DialContext(ctx, "tcp", "10.2.0.10:9000"); err == nil {
		c.Close()
		t.Fatal("network a reached b's address directly")
	}
	Bridge(t, na.NetNS, "10.1.0.15:15443", nb.NetNS, "10.2.0.10:9000")
	c, err := na.DialContext(ctx, "tcp", "10.1.0.15:15443")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "from 10.2.0.10:9000\n" {
		t.Fatalf("through the bridge: %q", got)
	}
	p, err := StartProc(ProcSpec{Name: "joined", Path: "/bin/sh", Args: []string{"-c", "exec sleep 60"}, NetNSPath: nb.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(time.Second)
	want, err := os.Readlink(nb.Path())
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitFor(ctx, 10*time.Millisecond, func() error {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", p.PID()))
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("in %s, want %s", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
