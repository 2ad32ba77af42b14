package splice

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Engine owns a fixed set of event loops; pairs are spread over them round robin.
type Engine struct {
	opts  Options
	loops []*loop
	next  atomic.Uint32
	wg    sync.WaitGroup
	start time.Time // the loops' clock is nanoseconds since start (monotonic)

	pairs, inUse, pooled atomic.Int64
}

// Pair is one client connection and its upstream, from accept to close. Until Splice hands it
// to its loop, its sockets belong to the goroutines using their Conns, and the loop only wakes
// those goroutines; from then on its fields belong to the loop's goroutine.
type Pair struct {
	l        *loop
	fd       [2]int32                // client, upstream
	conns    [2]atomic.Pointer[Conn] // before relaying: whom an event of each socket wakes
	open     int8                    // Conns neither closed nor handed to the loop (l.mu)
	relaying bool                    // the loop owns the pair (after Splice)
	// seen: per socket, the readiness its events reported before relaying (the loop sets it; a
	// Conn's read clears canRead first). Relaying starts from it, so a socket the goroutine
	// left empty is not read just to hear EAGAIN.
	seen   [2]atomic.Uint32
	ready  [2]uint8 // per socket: canRead|canWrite|drain
	h      [2]half  // h[0]: client -> upstream, h[1]: upstream -> client
	slot   int32    // index in l.slots; -1 when not registered
	gen    uint32   // tells a stale epoll event from one for this pair
	hidx   int32    // index in l.timers; -1 when not in the heap
	again  bool     // in l.again: its budget ran out with bytes still to move
	closed bool
	idle   int64 // nanoseconds; 0: none
	last   int64 // when a byte last moved
	due    int64 // the heap key: when the idle timeout may fire
	done   func(Result)
}

// half is one direction. Bytes are counted when written to the destination.
type half struct {
	pipe     [2]int32 // read end, write end; -1 when the half holds no pipe
	buffered int      // bytes in the pipe
	n        int64
	bulk     bool // a read filled the loop's buffer: splice until the source is drained
	eof      bool // the source said EOF
	shut     bool // the destination was shut for writing
}

const (
	canRead  = 1
	canWrite = 2
	// drain: read the socket until EAGAIN; a short read does not prove it empty (its FIN may be
	// queued behind the data, or it had bytes before the loop owned it). Without it a short
	// read does: bytes arriving later raise a new edge.
	drain = 4

	events   = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
	wakeSlot = -1
	// budget is what one direction moves per turn before other pairs get theirs.
	budget = 1 << 20
	// messageBuf is the loop's buffer for messages (see pump): a TLS record and then some.
	messageBuf = 32 << 10
)

type opKind uint8

const (
	opStart opKind = iota // Splice handed the pair over: relay it
	opCut
	opStop
)

type op struct {
	kind opKind
	p    *Pair
}

type loop struct {
	e      *Engine
	epfd   int
	wakefd int
	// The loop waits in Go's netpoller, not in a blocking epoll_wait: its epoll fd is itself
	// pollable and registered there through ep. A blocked thread per loop would make the
	// scheduler hand its P off and back on every wake-up (twice the context switches).
	ep       *os.File
	rc       syscall.RawConn
	wait     func(fd uintptr) bool // reused: no closure allocated per wake-up
	n        int                   // events the last wait returned
	deadline int64                 // the read deadline set on ep; 0: none

	mu      sync.Mutex
	ops     []op
	stopped bool    // no pair is taken any more
	free    []int32 // slots to reuse
	nextGn  uint32
	// slots maps the slot in an epoll event to its pair. A pair's slot is filled before its
	// sockets are registered, so their first events find it.
	slots  atomic.Pointer[[]atomic.Pointer[Pair]]
	stopCh chan struct{} // closed when the loop stops: Conns waiting on it give up

	timers []*Pair // min-heap on due
	again  []*Pair
	pool   [][2]int32
	now    int64
	buf    []byte // messages pass through it (see pump); at most the pipe size
	evs    [128]unix.EpollEvent
	taken  []op // ops being run; reused
}

// New starts the event loops.
func New(o Options) (*Engine, error) {
	o = o.withDefaults()
	e := &Engine{opts: o, start: time.Now()}
	for range o.Loops {
		l, err := newLoop(e)
		if err != nil {
			for _, l := range e.loops {
				l.closeFDs()
			}
			return nil, err
		}
		e.loops = append(e.loops, l)
	}
	for _, l := range e.loops {
		e.wg.Add(1)
		go l.run()
	}
	return e, nil
}

func newLoop(e *Engine) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	l := &loop{e: e, epfd: epfd, wakefd: wakefd, stopCh: make(chan struct{}), buf: make([]byte, min(messageBuf, e.opts.PipeSize))}
	l.slots.Store(&[]atomic.Pointer[Pair]{})
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeSlot}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		l.closeFDs()
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		l.closeFDs()
		return nil, os.NewSyscallError("fcntl", err)
	}
	l.ep = os.NewFile(uintptr(epfd), "splice-epoll") // pollable: epfd is non-blocking
	rc, err := l.ep.SyscallConn()
	if err != nil {
		l.closeFDs()
		return nil, err
	}
	l.rc = rc
	l.wait = func(fd uintptr) bool {
		l.n = epollWait(int(fd), l.evs[:])
		return l.n > 0
	}
	return l, nil
}

func (l *loop) closeFDs() {
	if l.ep != nil {
		l.ep.Close()
	} else {
		unix.Close(l.epfd)
	}
	unix.Close(l.wakefd)
}

// epollWait returns the ready events without blocking (0 when none).
func epollWait(epfd int, evs []unix.EpollEvent) int {
	for {
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
		switch e {
		case 0:
			return int(r)
		case unix.EINTR:
			continue
		default:
			panic(os.NewSyscallError("epoll_pwait", e)) // EBADF, EFAULT, EINVAL: a bug here
		}
	}
}

// newPair takes a slot for a pair whose client socket is fd, registers the socket and returns
// the client's Conn. On error nothing is kept (fd stays open: the caller closes it).
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
	if err := p.watch(0, fd); err != nil {
		l.releaseLocked(p)
		return nil, err
	}
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

// Cut ends the pair (Reason Cut) if it is still relaying; done runs on its loop.
func (p *Pair) Cut() { p.l.post(op{kind: opCut, p: p}) }

// Close cuts every relaying pair (their done runs with Reason Cut), stops the loops and waits
// for them. Accept and Splice return ErrClosed afterwards, and so does the next wait of a Conn
// still open (its socket stays open until its Close).
func (e *Engine) Close() {
	for _, l := range e.loops {
		l.post(op{kind: opStop})
	}
	e.wg.Wait()
}

// Stats returns the engine's gauges.
func (e *Engine) Stats() Stats {
	return Stats{Pairs: e.pairs.Load(), PipesInUse: e.inUse.Load(), PipesPooled: e.pooled.Load()}
}

func (l *loop) post(o op) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return // a stopped loop has ended every pair
	}
	l.postLocked(o)
}

// postLocked queues o and wakes the loop if o is the first op since the loop last took them.
func (l *loop) postLocked(o op) {
	l.ops = append(l.ops, o)
	if len(l.ops) == 1 {
		var one = [8]byte{1}
		sysWrite(l.wakefd, one[:])
	}
}

func (l *loop) clock() int64 { return int64(time.Since(l.e.start)) }

func (l *loop) run() {
	defer l.e.wg.Done()
	defer l.closeFDs()
	l.now = l.clock()
	for {
		if len(l.again) > 0 {
			l.n = epollWait(l.epfd, l.evs[:]) // pairs still have bytes to move: do not wait
		} else {
			l.setDeadline()
			if err := l.rc.Read(l.wait); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				panic(err) // the loop's own file closed under it: a bug here
			}
		}
		l.now = l.clock()
		slots := *l.slots.Load() // includes every pair registered before the wait returned
		for i := range l.n {
			ev := &l.evs[i]
			if ev.Fd == wakeSlot {
				if l.takeOps() {
					return
				}
				continue
			}
			p := slots[ev.Fd].Load()
			if p == nil || p.closed || p.gen != uint32(ev.Pad)>>1 {
				// An event of a pair that ended earlier in this batch (slots may be a table
				// that has since grown: it can still hold the ended pair).
				continue
			}
			side := ev.Pad & 1
			if !p.relaying {
				p.seen[side].Or(uint32(readiness(ev.Events)))
				p.wake(side)
				continue
			}
			p.ready[side] |= readiness(ev.Events)
			if !p.again {
				l.progress(p)
			}
		}
		l.n = 0
		l.runAgain()
		l.expire()
	}
}

// readiness maps epoll events to the readiness bits of a socket.
func readiness(events uint32) uint8 {
	var r uint8
	if events&unix.EPOLLIN != 0 {
		r |= canRead
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r |= canRead | drain
	}
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r |= canWrite
	}
	return r
}

// setDeadline makes the next wait end at the earliest idle deadline (none when no pair has an
// idle timeout).
func (l *loop) setDeadline() {
	var due int64
	if len(l.timers) > 0 {
		due = max(l.timers[0].due, 1)
	}
	if due == l.deadline {
		return
	}
	l.deadline = due
	if due == 0 {
		l.ep.SetReadDeadline(time.Time{})
		return
	}
	l.ep.SetReadDeadline(l.e.start.Add(time.Duration(due)))
}

// takeOps runs the queued ops; it reports whether the loop must stop.
func (l *loop) takeOps() (stop bool) {
	var buf [8]byte
	sysRead(l.wakefd, buf[:])
	l.mu.Lock()
	l.taken, l.ops = l.ops, l.taken[:0]
	for _, o := range l.taken {
		if o.kind == opStop {
			l.stopped = true
		}
	}
	l.mu.Unlock()
	for i, o := range l.taken {
		switch o.kind {
		case opStart:
			l.start(o.p)
		case opCut:
			if !o.p.closed {
				l.end(o.p, Cut, nil)
			}
		case opStop:
			stop = true
		}
		l.taken[i] = op{}
	}
	if stop {
		close(l.stopCh)
		for i := range *l.slots.Load() { // no pair is added now: l.stopped
			// Pairs not relaying yet belong to their Conns' goroutines, which close them.
			if p := (*l.slots.Load())[i].Load(); p != nil && p.relaying {
				l.end(p, Cut, nil)
			}
		}
		for _, pp := range l.pool {
			unix.Close(int(pp[0]))
			unix.Close(int(pp[1]))
		}
		l.e.pooled.Add(-int64(len(l.pool)))
		l.pool = nil
	}
	return stop
}

// start takes over a pair Splice handed over: its idle clock starts, and each socket is read if
// an event said it had bytes (or a FIN) since its goroutine last found it empty. Writing is
// tried on both.
func (l *loop) start(p *Pair) {
	p.relaying = true
	p.last = l.now
	if p.idle > 0 {
		p.due = p.last + p.idle
		l.push(p)
	}
	for s := range p.ready {
		r := canWrite | uint8(p.seen[s].Load())
		if r&drain != 0 { // a FIN came: it is still to be read, behind whatever the goroutine left
			r |= canRead
		}
		p.ready[s] = r
	}
	l.progress(p)
}

// progress moves what it can in both directions and ends the pair when both are done or one
// failed. The directions use different readiness bits (one reads the client and writes the
// upstream, the other the reverse), so one pass over each is enough.
func (l *loop) progress(p *Pair) {
	more := false
	for d := range 2 {
		m, err := l.pump(p, d)
		if err != nil {
			l.end(p, Ended, err)
			return
		}
		more = more || m
	}
	if p.h[0].shut && p.h[1].shut {
		l.end(p, Ended, nil)
		return
	}
	if more && !p.again {
		p.again = true
		l.again = append(l.again, p)
	}
}

// runAgain gives the pairs whose budget ran out another turn.
func (l *loop) runAgain() {
	n := len(l.again)
	for i := 0; i < n; i++ {
		p := l.again[i]
		p.again = false
		if !p.closed {
			l.progress(p) // may append to l.again again
		}
	}
	rest := copy(l.again, l.again[n:])
	clear(l.again[rest:])
	l.again = l.again[:rest]
}

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
	src, dst := int(p.fd[d]), int(p.fd[1-d])
	moved := 0
	for {
		if h.buffered > 0 {
			if p.ready[1-d]&canWrite == 0 {
				return false, nil
			}
			n, err := splice(int(h.pipe[0]), dst, h.buffered)
			switch {
			case err == unix.EAGAIN:
				p.ready[1-d] &^= canWrite
				return false, nil
			case err == unix.EINTR:
				continue
			case err != 0:
				return false, os.NewSyscallError("splice", err)
			}
			h.buffered -= n
			h.n += int64(n)
			moved += n
			p.last = l.now
			if h.buffered == 0 {
				l.putPipe(h)
			}
			continue
		}
		if h.eof {
			if !h.shut {
				h.shut = true
				// When the other direction is already shut the pair ends now, and closing sends
				// this FIN: no shutdown call. ENOTCONN: the peer is already gone; the other
				// direction finds out by itself.
				if !p.h[1-d].shut {
					sysShutdown(dst, unix.SHUT_WR)
				}
			}
			return false, nil
		}
		if p.ready[d]&canRead == 0 {
			return false, nil
		}
		if moved >= budget {
			return true, nil
		}
		if !h.bulk {
			n, err := l.copyMessage(p, d)
			switch {
			case err == unix.EAGAIN:
				p.ready[d] &^= canRead | drain
				return false, nil
			case err == unix.EINTR:
				continue
			case err != nil:
				return false, err
			case n == 0:
				h.eof = true
				continue
			}
			moved += n
			p.last = l.now
			if n == len(l.buf) {
				h.bulk = true
			} else if p.ready[d]&drain == 0 {
				p.ready[d] &^= canRead // a short read emptied the socket
			}
			continue
		}
		if h.pipe[0] < 0 {
			if err := l.getPipe(h); err != nil {
				return false, err
			}
		}
		n, err := splice(src, int(h.pipe[1]), l.e.opts.PipeSize)
		switch {
		case err == unix.EAGAIN:
			p.ready[d] &^= canRead | drain
			h.bulk = false
			l.putPipe(h)
			return false, nil
		case err == unix.EINTR:
			continue
		case err != 0:
			return false, os.NewSyscallError("splice", err)
		case n == 0:
			h.eof = true
			l.putPipe(h)
			continue
		}
		h.buffered = n
		p.last = l.now
	}
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

func (l *loop) getPipe(h *half) error {
	if n := len(l.pool); n > 0 {
		h.pipe = l.pool[n-1]
		l.pool = l.pool[:n-1]
		l.e.pooled.Add(-1)
		l.e.inUse.Add(1)
		return nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return os.NewSyscallError("pipe2", err)
	}
	// A smaller pipe than asked (over fs.pipe-max-size, or the user's pipe pages spent) only
	// means more calls per byte.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, l.e.opts.PipeSize)
	h.pipe = [2]int32{int32(fds[0]), int32(fds[1])}
	l.e.inUse.Add(1)
	return nil
}

// putPipe takes back h's pipe, which must be empty; beyond the pool's size it is closed.
func (l *loop) putPipe(h *half) {
	if h.pipe[0] < 0 {
		return
	}
	l.e.inUse.Add(-1)
	if len(l.pool) < l.e.opts.MaxIdlePipes {
		l.pool = append(l.pool, h.pipe)
		l.e.pooled.Add(1)
	} else {
		sysClose(int(h.pipe[0]))
		sysClose(int(h.pipe[1]))
	}
	h.pipe = [2]int32{-1, -1}
}

// end closes the pair's sockets and reports it.
func (l *loop) end(p *Pair, reason Reason, err error) {
	p.closed = true
	for d := range p.h {
		h := &p.h[d]
		if h.buffered > 0 { // bytes that will never be delivered: the pipe is not reusable
			sysClose(int(h.pipe[0]))
			sysClose(int(h.pipe[1]))
			h.pipe = [2]int32{-1, -1}
			h.buffered = 0
			l.e.inUse.Add(-1)
		}
		l.putPipe(h)
	}
	sysClose(int(p.fd[0])) // closing the last reference also drops the epoll registration
	sysClose(int(p.fd[1]))
	l.mu.Lock()
	l.releaseLocked(p)
	l.mu.Unlock()
	l.e.pairs.Add(-1)
	if p.hidx >= 0 {
		l.remove(p)
	}
	done := p.done
	p.done = nil
	if reason != Ended {
		err = nil
	}
	done(Result{Up: p.h[0].n, Down: p.h[1].n, Err: err, Reason: reason})
}

// expire ends the pairs idle for their timeout. Activity does not touch the heap; an entry
// that comes due for a pair that moved bytes since is pushed back to its new deadline.
func (l *loop) expire() {
	for len(l.timers) > 0 && l.timers[0].due <= l.now {
		p := l.timers[0]
		if p.last+p.idle <= l.now {
			l.end(p, IdleTimeout, nil)
			continue
		}
		p.due = p.last + p.idle
		l.down(0)
	}
}

// The idle heap: a binary min-heap on due, each pair knowing its index.

func (l *loop) push(p *Pair) {
	p.hidx = int32(len(l.timers))
	l.timers = append(l.timers, p)
	l.up(int(p.hidx))
}

func (l *loop) remove(p *Pair) {
	i, last := int(p.hidx), len(l.timers)-1
	if i != last {
		l.swap(i, last)
	}
	l.timers[last] = nil
	l.timers = l.timers[:last]
	p.hidx = -1
	if i != last {
		l.down(i)
		l.up(i)
	}
}

func (l *loop) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if l.timers[parent].due <= l.timers[i].due {
			return
		}
		l.swap(i, parent)
		i = parent
	}
}

func (l *loop) down(i int) {
	n := len(l.timers)
	for {
		c := 2*i + 1
		if c >= n {
			return
		}
		if r := c + 1; r < n && l.timers[r].due < l.timers[c].due {
			c = r
		}
		if l.timers[i].due <= l.timers[c].due {
			return
		}
		l.swap(i, c)
		i = c
	}
}

func (l *loop) swap(i, j int) {
	l.timers[i], l.timers[j] = l.timers[j], l.timers[i]
	l.timers[i].hidx = int32(i)
	l.timers[j].hidx = int32(j)
}
