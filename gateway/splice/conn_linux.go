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

	mu      sync.Mutex // held over each call on fd, so that Close never closes an fd in use
	state   uint8      // connOpen, connClosed or connHanded
	watched bool       // the socket is in its loop's epoll set (Watch; an upstream from the start)
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
func (c *Conn) Read(b []byte) (int, error) { return c.read(b, true) }

// TryRead reads what the socket has without waiting: ErrNotReady when it has nothing yet.
// An Acceptor's handler uses it on the loop.
func (c *Conn) TryRead(b []byte) (int, error) { return c.read(b, false) }

func (c *Conn) read(b []byte, wait bool) (int, error) {
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
			if !wait {
				return 0, ErrNotReady
			}
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

// Watch registers the socket with its loop's epoll set, so that the loop wakes calls waiting on
// it. An accepted Conn needs it before any call that waits (see AcceptHandler); it is done at
// most once.
func (c *Conn) Watch() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watchLocked()
}

func (c *Conn) watchLocked() error {
	if c.state != connOpen {
		return c.opError("epoll_ctl", net.ErrClosed)
	}
	if c.watched {
		return nil
	}
	if err := c.p.watch(c.side, c.fd); err != nil {
		return c.opError("epoll_ctl", err)
	}
	c.watched = true
	return nil
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
	u, sent, err := c.DialNoWait(addr, first)
	if err != nil {
		return nil, err
	}
	if err := u.FinishDial(first[sent:], deadline); err != nil {
		return nil, err
	}
	return u, nil
}

// DialNoWait is Dial without waiting: it connects and sends what the new socket takes at once
// (on loopback the connect is over by then, and all of first goes). The caller finishes a dial
// that sent less with FinishDial. An Acceptor's handler uses it on the loop.
func (c *Conn) DialNoWait(addr netip.AddrPort, first []byte) (u *Conn, sent int, err error) {
	p := c.p
	if p.conns[1].Load() != nil {
		return nil, 0, errBusy
	}
	if len(first) == 0 {
		return nil, 0, errNoFirst
	}
	fd, op, e := sysConnect(addr)
	if e != 0 {
		return nil, 0, dialError(addr, op, e)
	}
	u = newConn(p, 1, fd, addr)
	l := p.l
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		sysClose(fd)
		return nil, 0, ErrClosed
	}
	p.fd[1] = int32(fd)
	p.conns[1].Store(u)
	p.open++
	u.watched = true
	if err := p.watch(1, fd); err != nil {
		l.mu.Unlock()
		u.Close()
		return nil, 0, err
	}
	l.mu.Unlock()
	sent, err = u.sendNoWait(first)
	if err != nil && err != ErrNotReady {
		u.Close()
		return nil, 0, dialError(addr, "connect", err)
	}
	return u, sent, nil
}

// FinishDial sends rest, what DialNoWait did not send, waiting for the connect until deadline
// (zero: none). On failure it closes u and the dial failed.
func (u *Conn) FinishDial(rest []byte, deadline time.Time) error {
	if len(rest) == 0 {
		return nil
	}
	u.wdl.Store(unixNano(deadline))
	for len(rest) > 0 {
		n, err := u.sendNoWait(rest)
		rest = rest[n:]
		if err == ErrNotReady {
			err = u.wait(&u.wdl)
		}
		if err != nil {
			u.Close()
			return dialError(u.remote, "connect", err)
		}
	}
	u.wdl.Store(0)
	return nil
}

// sendNoWait sends what the socket, which may still be connecting, takes of b: ErrNotReady
// when it takes no more now. A send on a socket still connecting says EAGAIN, and the
// connect's error once it failed (EPIPE if it ended without one).
func (c *Conn) sendNoWait(b []byte) (int, error) {
	sent := 0
	for sent < len(b) {
		n, e := sysSend(c.fd, b[sent:])
		switch e {
		case 0:
			sent += n
		case unix.EINTR:
		case unix.EAGAIN:
			return sent, ErrNotReady
		case unix.EPIPE:
			return sent, unix.ECONNREFUSED
		default:
			return sent, e
		}
	}
	return sent, nil
}

func dialError(addr netip.AddrPort, op string, err error) error {
	if e, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError(op, e)
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
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
	return e.splice(client, upstream, idle, done, false)
}

// SpliceOnLoop is Splice from an Acceptor's handler, on the pair's loop: the loop starts
// relaying before the handler returns, with no hand-over.
func (e *Engine) SpliceOnLoop(client, upstream *Conn, idle time.Duration, done func(Result)) (*Pair, error) {
	return e.splice(client, upstream, idle, done, true)
}

func (e *Engine) splice(client, upstream *Conn, idle time.Duration, done func(Result), onLoop bool) (*Pair, error) {
	p := client.p
	if client.side != 0 || upstream.p != p || upstream.side != 1 {
		return nil, errNotPair
	}
	if err := e.handOver(p, client, upstream, idle, done, onLoop); err != nil {
		return nil, err
	}
	if onLoop {
		p.l.start(p)
	}
	return p, nil
}

// handOver gives the pair's sockets to the loop: the Conns are closed to their goroutines, and
// unless onLoop the loop is asked to start relaying.
func (e *Engine) handOver(p *Pair, client, upstream *Conn, idle time.Duration, done func(Result), onLoop bool) error {
	for _, c := range [2]*Conn{client, upstream} {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.state != connOpen {
			return net.ErrClosed
		}
	}
	if err := client.watchLocked(); err != nil {
		return err
	}
	l := p.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return ErrClosed
	}
	for _, c := range [2]*Conn{client, upstream} {
		c.state = connHanded
		p.conns[c.side].Store(nil)
		p.open--
	}
	p.idle, p.done = int64(idle), done
	e.pairs.Add(1)
	if !onLoop {
		l.postLocked(op{kind: opStart, p: p})
	}
	return nil
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
