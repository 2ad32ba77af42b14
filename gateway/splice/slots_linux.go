package splice

import (
	"net/netip"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// newPair takes a slot for a pair whose client socket is fd and returns the client's Conn; the
// socket is registered by Conn.Watch or when the pair is spliced. On error nothing is kept (fd
// stays open: the caller closes it).
func (l *loop) newPair(fd int, remote netip.AddrPort) (*Conn, error) {
	p := &Pair{l: l, slot: -1, hidx: -1, fd: [2]int32{int32(fd), -1}, open: 1}
	p.h[0].pipe = [2]int32{-1, -1}
	p.h[1].pipe = [2]int32{-1, -1}
	c := newConn(p, 0, fd, remote)
	p.conns[0].Store(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return nil, ErrClosed
	}
	l.nextGn++
	p.gen = l.nextGn & (1<<31 - 1)
	p.slot = l.slotLocked()
	(*l.slots.Load())[p.slot].Store(p)
	l.owned.Add(1)
	return c, nil
}

// watch registers socket side of the pair (edge-triggered, for good: closing the socket ends
// the registration).
func (p *Pair) watch(side int, fd int) error {
	ev := unix.EpollEvent{Events: events, Fd: p.slot, Pad: int32(p.gen<<1) | int32(side)}
	if e := sysEpollAdd(p.l.epfd, fd, &ev); e != 0 {
		return os.NewSyscallError("epoll_ctl", e) // out of kernel memory or epoll watches
	}
	return nil
}

// releaseLocked frees the pair's slot. l.mu is held.
func (l *loop) releaseLocked(p *Pair) {
	if p.slot < 0 {
		return
	}
	(*l.slots.Load())[p.slot].Store(nil)
	l.free = append(l.free, p.slot)
	p.slot = -1
	l.owned.Add(-1)
}

// slotLocked returns a free slot, growing the table when none is left. l.mu is held.
func (l *loop) slotLocked() int32 {
	if n := len(l.free); n > 0 {
		s := l.free[n-1]
		l.free = l.free[:n-1]
		return s
	}
	old := *l.slots.Load()
	grown := make([]atomic.Pointer[Pair], max(64, 2*len(old)))
	for i := range old {
		grown[i].Store(old[i].Load())
	}
	for i := len(grown) - 1; i > len(old); i-- {
		l.free = append(l.free, int32(i))
	}
	l.slots.Store(&grown)
	return int32(len(old))
}
