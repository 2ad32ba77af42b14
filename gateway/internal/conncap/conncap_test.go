package conncap

import (
	"net"
	"net/netip"
	"testing"
)

func TestCaps(t *testing.T) {
	c := &Caps{Max: 3, PerSource: 2}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for i, want := range []Refusal{Admitted, Admitted, OverPerSource} {
		if got := c.Admit(a); got != want {
			t.Fatalf("admit %d from a: %v, want %v", i, got, want)
		}
	}
	if got := c.Admit(b); got != Admitted {
		t.Fatalf("first from b: %v", got)
	}
	if got := c.Admit(b); got != OverTotal {
		t.Fatalf("fourth in total: %v, want OverTotal", got)
	}
	c.Release(a)
	if got := c.Admit(b); got != Admitted {
		t.Fatalf("after a release: %v, want Admitted", got)
	}
	c.Release(a)
	c.Release(b)
	c.Release(b)
	if c.total != 0 || len(c.sources.n) != 0 {
		t.Fatalf("after every release: total %d, %d sources kept", c.total, len(c.sources.n))
	}
}

// IPv6 sources count per /64; IPv4-mapped ones as their IPv4 address.
func TestSourcesKey(t *testing.T) {
	var s Sources
	if !s.Acquire(netip.MustParseAddr("2001:db8:1:2::1"), 1) {
		t.Fatal("first from the /64 refused")
	}
	if s.Acquire(netip.MustParseAddr("2001:db8:1:2:ffff::9"), 1) {
		t.Fatal("a second address of the same /64 was counted apart")
	}
	if !s.Acquire(netip.MustParseAddr("2001:db8:1:3::1"), 1) {
		t.Fatal("another /64 refused")
	}
	if !s.Acquire(netip.MustParseAddr("::ffff:10.0.0.1"), 1) || s.Acquire(netip.MustParseAddr("10.0.0.1"), 1) {
		t.Fatal("an IPv4-mapped address and its IPv4 form counted apart")
	}
	if got := Source(&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.7"), Port: 1}); got != netip.MustParseAddr("10.0.0.7") {
		t.Fatalf("Source = %v", got)
	}
}
