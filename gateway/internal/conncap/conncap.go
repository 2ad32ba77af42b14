// Package conncap counts a listener's open connections against its caps: in total and per
// source address, where IPv6 sources count per /64 (what one subscriber commonly gets). The data
// plane's listeners, the VM control endpoint and the admin servers all count this way, at
// accept, before a byte of the connection is read.
package conncap

import (
	"net"
	"net/netip"
	"sync"
)

// Sources counts open connections per source. The zero value is ready to use.
type Sources struct {
	mu sync.Mutex
	n  map[netip.Addr]int // sources with open connections only
}

// Key is what a source address counts as: itself, or its /64 for IPv6.
func Key(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Acquire counts a connection from a and reports true, or reports false when a already holds
// max connections.
func (s *Sources) Acquire(a netip.Addr, max int) bool {
	k := Key(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[k] >= max {
		return false
	}
	if s.n == nil {
		s.n = map[netip.Addr]int{}
	}
	s.n[k]++
	return true
}

// Release gives back a connection Acquire counted.
func (s *Sources) Release(a netip.Addr) {
	k := Key(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[k]--; s.n[k] <= 0 {
		delete(s.n, k)
	}
}

// Refusal says which cap refused a connection.
type Refusal int

const (
	Admitted      Refusal = iota
	OverTotal             // the listener holds its maximum
	OverPerSource         // the source holds its maximum
)

// Caps is a total cap and a per-source cap. Set Max and PerSource before use.
type Caps struct {
	Max, PerSource int

	mu      sync.Mutex
	total   int
	sources Sources
}

// Admit counts a connection from a, or says which cap refuses it.
func (c *Caps) Admit(a netip.Addr) Refusal {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.total >= c.Max {
		return OverTotal
	}
	if !c.sources.Acquire(a, c.PerSource) {
		return OverPerSource
	}
	c.total++
	return Admitted
}

// Release gives back a connection Admit counted.
func (c *Caps) Release(a netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	c.sources.Release(a)
}

// Source is the address of a connection's peer (IPv4-mapped addresses unmapped).
func Source(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap.Addr().Unmap()
}

// Refuse closes a connection refused at accept with a reset: the client learns at once, and no
// TIME_WAIT piles up under a flood.
func Refuse(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		l.SetLinger(0)
	}
	c.Close()
}
