package splice

import (
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

const (
	// budget is what one direction moves per turn before other pairs get theirs.
	budget = 1 << 20
	// messageBuf is the loop's buffer for messages (see pump): a TLS record and then some.
	messageBuf = 32 << 10
)

// pump moves bytes of direction d (source socket d, destination 1-d) until a socket would block,
// the source ends, or the turn's budget is spent (more is then true).
//
// A message that fits the loop's buffer is read with read and written with send: no pipe, and
// a short read ends the turn without a read that only says EAGAIN. What the destination does not
// take goes into a pipe, and the source is not read again until that pipe is drained. A read
// that fills the buffer means a bulk transfer: the direction then splices through a pipe until
// the source is drained.
func (l *loop) pump(p *Pair, d int) (more bool, err error) {
	h := &p.h[d]
	moved := 0
	for {
		var n int
		var stop bool
		switch {
		case h.buffered > 0:
			n, stop, err = l.drainPipe(p, d)
		case h.eof:
			l.shutOnEOF(p, d)
			return false, nil
		case p.ready[d]&canRead == 0:
			return false, nil
		case moved >= budget:
			return true, nil
		case !h.bulk:
			n, stop, err = l.moveMessage(p, d)
		default:
			stop, err = l.fillPipe(p, d)
		}
		if stop || err != nil {
			return false, err
		}
		moved += n
	}
}

// A step of pump returns the bytes it moved that count toward the turn's budget, and stop when
// a socket would block (or err: the pair ends). Otherwise pump takes the next step.

// drainPipe splices what direction d's pipe holds into the destination; a drained pipe goes
// back to the pool.
func (l *loop) drainPipe(p *Pair, d int) (n int, stop bool, err error) {
	h := &p.h[d]
	if p.ready[1-d]&canWrite == 0 {
		return 0, true, nil
	}
	n, errno := splice(int(h.pipe[0]), int(p.fd[1-d]), h.buffered)
	switch {
	case errno == unix.EAGAIN:
		p.ready[1-d] &^= canWrite
		return 0, true, nil
	case errno == unix.EINTR:
		return 0, false, nil
	case errno != 0:
		return 0, true, os.NewSyscallError("splice", errno)
	}
	h.buffered -= n
	h.n += int64(n)
	p.last = l.now
	if h.buffered == 0 {
		l.putPipe(h)
	}
	return n, false, nil
}

// shutOnEOF passes the source's EOF on to the destination, once.
func (l *loop) shutOnEOF(p *Pair, d int) {
	h := &p.h[d]
	if h.shut {
		return
	}
	h.shut = true
	// When the other direction is already shut the pair ends now, and closing sends this FIN:
	// no shutdown call. ENOTCONN: the peer is already gone; the other direction finds out by
	// itself.
	if !p.h[1-d].shut {
		sysShutdown(int(p.fd[1-d]), unix.SHUT_WR)
	}
}

// moveMessage moves one read of the source through the loop's buffer (copyMessage). A read
// that fills the buffer turns the direction to bulk; a short one, unless the socket is to be
// drained, proves the socket empty.
func (l *loop) moveMessage(p *Pair, d int) (n int, stop bool, err error) {
	h := &p.h[d]
	n, err = l.copyMessage(p, d)
	switch {
	case err == unix.EAGAIN:
		p.ready[d] &^= canRead | drain
		return 0, true, nil
	case err == unix.EINTR:
		return 0, false, nil
	case err != nil:
		return 0, true, err
	case n == 0:
		h.eof = true
		return 0, false, nil
	}
	p.last = l.now
	if n == len(l.buf) {
		h.bulk = true
	} else if p.ready[d]&drain == 0 {
		p.ready[d] &^= canRead // a short read emptied the socket
	}
	return n, false, nil
}

// fillPipe splices the source into direction d's pipe (taking one from the pool). Bytes count
// toward the budget when drainPipe writes them. The source drained ends the bulk transfer and
// returns the empty pipe.
func (l *loop) fillPipe(p *Pair, d int) (stop bool, err error) {
	h := &p.h[d]
	if h.pipe[0] < 0 {
		if err := l.getPipe(h); err != nil {
			return true, err
		}
	}
	n, errno := splice(int(p.fd[d]), int(h.pipe[1]), l.e.opts.PipeSize)
	switch {
	case errno == unix.EAGAIN:
		p.ready[d] &^= canRead | drain
		h.bulk = false
		l.putPipe(h)
		return true, nil
	case errno == unix.EINTR:
		return false, nil
	case errno != 0:
		return true, os.NewSyscallError("splice", errno)
	case n == 0:
		h.eof = true
		l.putPipe(h)
		return false, nil
	}
	h.buffered = n
	p.last = l.now
	return false, nil
}

// copyMessage reads what socket d has (up to the loop's buffer) and sends it to the other
// socket; what the other socket does not take goes into a pipe of h (left buffered). It returns
// the bytes read (0: EOF) or the errno of the read (EAGAIN: nothing to read).
func (l *loop) copyMessage(p *Pair, d int) (int, error) {
	h := &p.h[d]
	n, errno := sysRead(int(p.fd[d]), l.buf)
	if errno != 0 {
		if errno == unix.EAGAIN || errno == unix.EINTR {
			return 0, errno
		}
		return 0, os.NewSyscallError("read", errno)
	}
	if n == 0 {
		return 0, nil
	}
	w := 0
	if p.ready[1-d]&canWrite != 0 {
		var errno syscall.Errno
		w, errno = sysSend(int(p.fd[1-d]), l.buf[:n])
		switch errno {
		case 0:
		case unix.EAGAIN:
			w = 0
			p.ready[1-d] &^= canWrite
		default:
			return 0, os.NewSyscallError("sendto", errno)
		}
		h.n += int64(w)
	}
	if w == n {
		return n, nil
	}
	if err := l.getPipe(h); err != nil {
		return 0, err
	}
	// The pipe is empty and holds at least the loop's buffer: the write takes it all.
	k, errno := sysWrite(int(h.pipe[1]), l.buf[w:n])
	h.buffered = max(k, 0) // on error the pair ends, and end disposes of the pipe
	if errno != 0 || k != n-w {
		if errno == 0 {
			errno = unix.EIO // a short write into an empty pipe: not expected, and bytes were lost
		}
		return 0, os.NewSyscallError("write", errno)
	}
	return n, nil
}
