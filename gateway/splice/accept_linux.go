package splice

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Acceptor accepts a listener's connections on the engine's loops: the listening socket is in
// the epoll set of every loop that has not stepped back from accepting (balance_linux.go), and
// the loop that accepts a connection runs the Acceptor's handler with it at once, on the loop's
// goroutine. The socket then stays with that loop until it is closed. No goroutine takes part
// unless the handler starts one.
type Acceptor struct {
	e      *Engine
	fd     int // its own descriptor of the listening socket
	h      AcceptHandler
	closed atomic.Bool
	once   sync.Once
}

// AcceptHandler is what an Acceptor does with the connections it accepts.
type AcceptHandler interface {
	// Accepted runs on the loop that accepted c and must not block. It may read what c
	// already has (TryRead), dial and send without waiting (DialNoWait) and hand the pair to
	// the loop (SpliceOnLoop), or close c. Before c is used from another goroutine (any call
	// that waits), Accepted must call c.Watch.
	Accepted(c *Conn)
	// AcceptFailed runs on a loop when accept4 fails with an error that is not the client's
	// (out of files, out of memory); the loop stops accepting from this listener for the
	// returned delay.
	AcceptFailed(err error) (retry time.Duration)
}

// acceptBatch is the most connections a loop accepts in one turn before serving its events.
const acceptBatch = 16

// NewAcceptor registers ln with every loop, with h for its connections. It holds its own
// descriptor of the listening socket (closed by Close), so the socket listens until both ln
// and the Acceptor are closed. The socket is set TCP_NODELAY, which accepted sockets inherit.
func (e *Engine) NewAcceptor(ln *net.TCPListener, h AcceptHandler) (*Acceptor, error) {
	raw, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("fcntl", derr)
	}
	setNoDelay(fd)
	a := &Acceptor{e: e, fd: fd, h: h}
	for _, l := range e.loops {
		if err := l.addAcceptor(a); err != nil {
			a.Close()
			return nil, err
		}
	}
	return a, nil
}

// Close stops accepting: each loop forgets the listener (or has stopped) before the
// Acceptor's descriptor is closed. Connections already accepted are not touched.
func (a *Acceptor) Close() error {
	a.once.Do(func() {
		a.closed.Store(true)
		var wg sync.WaitGroup
		for _, l := range a.e.loops {
			done := make(chan struct{})
			l.post(op{kind: opForget, a: a, ack: done})
			wg.Go(func() {
				select {
				case <-done:
				case <-l.stopCh: // a stopped loop accepts nothing
				}
			})
		}
		wg.Wait()
		unix.Close(a.fd)
	})
	return nil
}

// addAcceptor gives a an index in the loop's table and registers its socket.
func (l *loop) addAcceptor(a *Acceptor) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return ErrClosed
	}
	i := int32(len(l.lns))
	for j, x := range l.lns {
		if x == nil {
			i = int32(j)
			break
		}
	}
	if int(i) == len(l.lns) {
		l.lns = append(l.lns, a)
	} else {
		l.lns[i] = a
	}
	if l.back {
		return nil // registered when the loop steps forward
	}
	if err := l.armAcceptor(i, a); err != nil {
		l.lns[i] = nil
		return err
	}
	return nil
}

// armAcceptor adds a's socket to the loop's epoll set under event slot -2-i.
func (l *loop) armAcceptor(i int32, a *Acceptor) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLEXCLUSIVE, Fd: -2 - i}
	if e := sysEpollAdd(l.epfd, a.fd, &ev); e != 0 {
		return os.NewSyscallError("epoll_ctl", e)
	}
	return nil
}

func (l *loop) disarmAcceptor(a *Acceptor) {
	unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(l.epfd), unix.EPOLL_CTL_DEL, uintptr(a.fd), 0, 0, 0)
}

// acceptor returns the Acceptor of an event's slot, nil when it was forgotten.
func (l *loop) acceptor(slot int32) *Acceptor {
	i := int(-2 - slot)
	l.mu.Lock()
	defer l.mu.Unlock()
	if i < len(l.lns) {
		return l.lns[i]
	}
	return nil
}

// accept takes up to acceptBatch connections from a's socket and runs the handler on each.
func (l *loop) accept(a *Acceptor) {
	for range acceptBatch {
		if a.closed.Load() {
			return
		}
		fd, remote, errno := sysAccept(a.fd)
		switch errno {
		case 0:
		case unix.EAGAIN:
			return
		case unix.ECONNABORTED, unix.EINTR: // the client gave up before we took it
			continue
		default:
			l.pauseAcceptor(a, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)})
			return
		}
		c, err := l.newPair(fd, remote)
		if err != nil {
			sysClose(fd)
			return
		}
		a.h.Accepted(c)
	}
}

// pauseAcceptor stops this loop accepting from a for the delay its handler asks for.
func (l *loop) pauseAcceptor(a *Acceptor, err error) {
	delay := a.h.AcceptFailed(err)
	l.disarmAcceptor(a)
	time.AfterFunc(delay, func() { l.post(op{kind: opResume, a: a}) })
}

// resumeAcceptor registers a's socket again after a pause, unless it was closed since.
func (l *loop) resumeAcceptor(a *Acceptor) {
	if a.closed.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.back {
		return // registered when the loop steps forward
	}
	for i, x := range l.lns {
		if x == a {
			l.armAcceptor(int32(i), a)
			return
		}
	}
}

// forgetAcceptor removes a from the loop (its socket from the epoll set first).
func (l *loop) forgetAcceptor(a *Acceptor) {
	l.disarmAcceptor(a)
	l.mu.Lock()
	for i, x := range l.lns {
		if x == a {
			l.lns[i] = nil
		}
	}
	l.mu.Unlock()
}

// sysAccept accepts a connection (non-blocking, close-on-exec) and returns its peer's address.
func sysAccept(lfd int) (int, netip.AddrPort, syscall.Errno) {
	var rsa unix.RawSockaddrAny
	n := uint32(unsafe.Sizeof(rsa))
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(r), fromRaw(&rsa), 0
}
