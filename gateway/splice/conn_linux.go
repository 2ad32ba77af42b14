package splice

import (
	"errors"
	"io"
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

// Acceptor accepts a listener's connections straight onto the engine's loops: the accepted
// socket is registered with one loop's epoll once and stays there until it is closed, so no
// other poller ever sees it.
type Acceptor struct {
	e   *Engine
	f   *os.File // its own descriptor of the listening socket, waited on in Go's netpoller
	rc  syscall.RawConn
	try func(fd uintptr) bool // reused: no closure allocated per accept
	// results of the last accept4; one Accept runs at a time
	fd     int
	remote netip.AddrPort
	errno  syscall.Errno
}

// NewAcceptor returns an Acceptor for ln. It holds its own descriptor of the listening socket
// (a net.TCPListener cannot be waited on from outside package net), so the socket listens until
// both ln and the Acceptor are closed.
func (e *Engine) NewAcceptor(ln *net.TCPListener) (*Acceptor, error) {
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
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(fd), "splice-listener") // non-blocking: pollable
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	a := &Acceptor{e: e, f: f, rc: rc}
	a.try = func(fd uintptr) bool {
		a.fd, a.remote, a.errno = sysAccept(int(fd))
		return a.errno != unix.EAGAIN
	}
	return a, nil
}

// Close closes the Acceptor's descriptor of the listening socket; a waiting Accept returns
// net.ErrClosed.
func (a *Acceptor) Close() error { return a.f.Close() }

// Accept waits for the next connection. Errors of accept4 itself (out of files) come wrapped
// in a *net.OpError; the caller may back off and call again.
func (a *Acceptor) Accept() (*Conn, error) {
	for {
		if err := a.rc.Read(a.try); err != nil {
			if errors.Is(err, os.ErrClosed) {
				err = net.ErrClosed
			}
			return nil, err
		}
		switch a.errno {
		case 0:
		case unix.ECONNABORTED, unix.EINTR: // the client gave up before we took it
			continue
		default:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", a.errno)}
		}
		setNoDelay(a.fd)
		l := a.e.loops[int(a.e.next.Add(1))%len(a.e.loops)]
		c, err := l.newPair(a.fd, a.remote)
		if err != nil {
			sysClose(a.fd)
			return nil, err
		}
		return c, nil
	}
}

// Conn is one socket of a pair while a goroutine uses it: the client from Accept, the upstream
// from Dial. It is a net.Conn whose calls never block a thread: a read or write that would
// block waits for the loop to report the socket ready. Deadlines apply to the waits that start
// after they are set. Splice hands both Conns of a pair to the loop; after that they are
// closed to their goroutines (Close does nothing).
type Conn struct {
	p      *Pair
	side   int
	fd     int
	remote netip.AddrPort

	mu    sync.Mutex // held over each call on fd, so that Close never closes an fd in use
	state uint8      // connOpen, connClosed or connHanded
	// ready holds a token when something happened since the last wait: an event of the socket
	// (readable, writable, hang-up, error) or Close. The waiter then retries its call.
	ready chan struct{}
	rdl   atomic.Int64 // read deadline, unix nanoseconds; 0: none
	wdl   atomic.Int64
	timer *time.Timer // for deadlines; made at the first wait that has one
	// waiting counts the calls waiting for an event (tests wait on it, not on a sleep).
	waiting atomic.Int32
}

const (
	connOpen uint8 = iota
	connClosed
	connHanded
)

func newConn(p *Pair, side, fd int, remote netip.AddrPort) *Conn {
	return &Conn{p: p, side: side, fd: fd, remote: remote, ready: make(chan struct{}, 1)}
}

// wake passes an event of socket side to the goroutine using its Conn (the loop's side).
func (p *Pair) wake(side int32) {
	if c := p.conns[side].Load(); c != nil {
		c.signal()
	}
}

func (c *Conn) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// call runs f on the open socket.
func (c *Conn) call(f func(fd int) syscall.Errno) syscall.Errno {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != connOpen {
		return unix.EBADF
	}
	return f(c.fd)
}

// wait parks until the loop reports an event of the socket or Close was called (the caller
// retries its call, which then finds the Conn closed), the deadline passes, or the engine stops.
func (c *Conn) wait(deadline *atomic.Int64) error {
	c.waiting.Add(1)
	defer c.waiting.Add(-1)
	d := deadline.Load()
	if d == 0 {
		select {
		case <-c.ready:
			return nil
		case <-c.p.l.stopCh:
			return ErrClosed
		}
	}
	left := time.Until(time.Unix(0, d))
	if left <= 0 {
		return os.ErrDeadlineExceeded
	}
	if c.timer == nil {
		c.timer = time.NewTimer(left)
	} else {
		c.timer.Reset(left)
	}
	defer c.timer.Stop()
	select {
	case <-c.ready:
		return nil
	case <-c.p.l.stopCh:
		return ErrClosed
	case <-c.timer.C:
		return os.ErrDeadlineExceeded
	}
}

func (c *Conn) opError(op string, err error) error {
	if err == nil {
		return nil
	}
	if errno, ok := err.(syscall.Errno); ok {
		if errno == unix.EBADF {
			err = net.ErrClosed
		} else {
			err = os.NewSyscallError(op, errno)
		}
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Read reads what the socket has, waiting for the loop when it has nothing.
func (c *Conn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	seen := &c.p.seen[c.side]
	for {
		var n int
		// Cleared before the call: an event processed after this sets it again, and bytes
		// arriving after the call raise an event. drain stays: a FIN once seen is still there.
		seen.And(^uint32(canRead))
		errno := c.call(func(fd int) (e syscall.Errno) {
			n, e = sysRead(fd, b)
			return e
		})
		switch errno {
		case 0:
			if n == 0 {
				return 0, io.EOF
			}
			if n == len(b) {
				seen.Or(canRead) // more may be waiting
			}
			return n, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if err := c.wait(&c.rdl); err != nil {
				return 0, c.opError("read", err)
			}
		default:
			return 0, c.opError("read", errno)
		}
	}
}

// Write writes all of b, waiting for the loop while the socket's buffer is full.
func (c *Conn) Write(b []byte) (int, error) {
	written := 0
	for written < len(b) {
		var n int
		rest := b[written:]
		errno := c.call(func(fd int) (e syscall.Errno) {
			n, e = sysSend(fd, rest)
			return e
		})
		switch errno {
		case 0:
			written += n
		case unix.EINTR:
		case unix.EAGAIN:
			if err := c.wait(&c.wdl); err != nil {
				return written, c.opError("write", err)
			}
		default:
			return written, c.opError("write", errno)
		}
	}
	return written, nil
}

// CloseWrite shuts the socket for writing: the peer reads EOF.
func (c *Conn) CloseWrite() error {
	return c.errnoError("shutdown", c.call(func(fd int) syscall.Errno {
		return sysShutdown(fd, unix.SHUT_WR)
	}))
}

// SetLinger sets SO_LINGER (0: Close resets the connection).
func (c *Conn) SetLinger(sec int) error {
	return c.errnoError("setsockopt", c.call(func(fd int) syscall.Errno {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: int32(sec)}); err != nil {
			return err.(syscall.Errno)
		}
		return 0
	}))
}

func (c *Conn) errnoError(op string, e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return c.opError(op, e)
}

// Close closes the socket and wakes a goroutine waiting on it. After Splice it does nothing.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.state != connOpen {
		c.mu.Unlock()
		return nil
	}
	c.state = connClosed
	c.p.conns[c.side].Store(nil)
	sysClose(c.fd) // also ends its epoll registration
	c.mu.Unlock()
	c.signal()
	l := c.p.l
	l.mu.Lock()
	if c.p.open--; c.p.open == 0 {
		l.releaseLocked(c.p)
	}
	l.mu.Unlock()
	return nil
}

// LocalAddr asks the kernel for the socket's address.
func (c *Conn) LocalAddr() net.Addr {
	var rsa unix.RawSockaddrAny
	c.call(func(fd int) syscall.Errno {
		n := uint32(unsafe.Sizeof(rsa))
		_, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)))
		return e
	})
	return net.TCPAddrFromAddrPort(fromRaw(&rsa))
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// RemoteAddrPort is the peer's address.
func (c *Conn) RemoteAddrPort() netip.AddrPort { return c.remote }

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline bounds the read waits that start after it (zero: none).
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rdl.Store(unixNano(t))
	return nil
}

// SetWriteDeadline bounds the write waits that start after it (zero: none).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wdl.Store(unixNano(t))
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(t.UnixNano(), 1)
}

// Dial connects the upstream of c's pair to addr, on c's loop, and sends first (the bytes the
// client sent so far; not empty), giving up at deadline (zero: none). A failure before all of
// first is sent is the dial's: the caller may try another address. A pair has one upstream: a
// failed Dial leaves none, and c can dial again.
func (c *Conn) Dial(addr netip.AddrPort, deadline time.Time, first []byte) (*Conn, error) {
	p := c.p
	if p.conns[1].Load() != nil {
		return nil, errBusy
	}
	if len(first) == 0 {
		return nil, errNoFirst
	}
	fail := func(op string, err error) error {
		if e, ok := err.(syscall.Errno); ok {
			err = os.NewSyscallError(op, e)
		}
		return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
	}
	fd, op, e := sysConnect(addr)
	if e != 0 {
		return nil, fail(op, e)
	}
	u := newConn(p, 1, fd, addr)
	u.wdl.Store(unixNano(deadline))
	l := p.l
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		sysClose(fd)
		return nil, ErrClosed
	}
	p.fd[1] = int32(fd)
	p.conns[1].Store(u)
	p.open++
	if err := p.watch(1, fd); err != nil {
		l.mu.Unlock()
		u.Close()
		return nil, err
	}
	l.mu.Unlock()
	if err := u.sendFirst(first); err != nil {
		u.Close()
		return nil, fail("connect", err)
	}
	u.wdl.Store(0)
	return u, nil
}

// sendFirst sends first on a socket that may still be connecting, waiting until the write
// deadline. A send on a socket still connecting says EAGAIN, and the connect's error once it
// failed (EPIPE if it ended without one). On loopback the handshake is usually over by now, so
// the first send goes out without a wait and without asking the socket's state.
func (c *Conn) sendFirst(first []byte) error {
	for len(first) > 0 {
		n, e := sysSend(c.fd, first)
		switch e {
		case 0:
			first = first[n:]
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
		case unix.EPIPE:
			return unix.ECONNREFUSED
		default:
			return e
		}
		if err := c.wait(&c.wdl); err != nil {
			return err
		}
	}
	return nil
}

var (
	errBusy    = &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", unix.EISCONN)}
	errNoFirst = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("splice: Dial needs the first bytes to send")}
)

// Splice hands client and its dialled upstream to their loop, which relays between them until
// both directions end, the pair has been idle for idle (zero: never), or it is cut. done runs
// once, on the loop's goroutine, after both sockets are closed; it must not block. The Conns
// are the engine's from here (their Close does nothing). On error the Conns are untouched.
func (e *Engine) Splice(client, upstream *Conn, idle time.Duration, done func(Result)) (*Pair, error) {
	p := client.p
	if client.side != 0 || upstream.p != p || upstream.side != 1 {
		return nil, errNotPair
	}
	for _, c := range [2]*Conn{client, upstream} {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.state != connOpen {
			return nil, net.ErrClosed
		}
	}
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return nil, ErrClosed
	}
	for _, c := range [2]*Conn{client, upstream} {
		c.state = connHanded
		p.conns[c.side].Store(nil)
		p.open--
	}
	p.idle, p.done = int64(idle), done
	e.pairs.Add(1)
	l.postLocked(op{kind: opStart, p: p})
	return p, nil
}

var errNotPair = &net.OpError{Op: "splice", Net: "tcp", Err: os.NewSyscallError("splice", unix.EINVAL)}

// SyscallConn lets Control run on the socket (to read socket options); Read and Write are not
// supported: the loop waits for the socket.
func (c *Conn) SyscallConn() (syscall.RawConn, error) { return rawConn{c}, nil }

type rawConn struct{ c *Conn }

func (r rawConn) Control(f func(fd uintptr)) error {
	if r.c.call(func(fd int) syscall.Errno { f(uintptr(fd)); return 0 }) != 0 {
		return net.ErrClosed
	}
	return nil
}

func (rawConn) Read(func(uintptr) bool) error  { return errors.ErrUnsupported }
func (rawConn) Write(func(uintptr) bool) error { return errors.ErrUnsupported }
