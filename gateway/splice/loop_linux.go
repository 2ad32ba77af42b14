package splice

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	events   = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET
	wakeSlot = -1 // the slot of the loop's own eventfd: ops are queued
	// Slots below wakeSlot are listening sockets: -2-i for the loop's Acceptor i (loop.lns).
)

type opKind uint8

const (
	opStart opKind = iota // Splice handed the pair over: relay it
	opCut
	opStop
	opForget // Acceptor.Close: drop a, then close ack
	opResume // an Acceptor's pause after a failed accept is over
)

type op struct {
	kind opKind
	p    *Pair
	a    *Acceptor
	ack  chan struct{}
}

// loop is one event loop: an epoll set, the slot table of its pairs (slots_linux.go), the ops
// other goroutines queue for it, its pipe pool (pipes_linux.go) and idle heap (idle_linux.go).
// Its goroutine (run) waits for events and moves the bytes of relaying pairs (pump_linux.go).
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
	stopped bool        // no pair is taken any more
	free    []int32     // slots to reuse
	lns     []*Acceptor // the listening sockets in the epoll set, by event slot -2-i; nil: free
	back    bool        // stepped back from accepting: lns are out of the epoll set (balance_linux.go)
	nextGn  uint32
	// slots maps the slot in an epoll event to its pair. A pair's slot is filled before its
	// sockets are registered, so their first events find it.
	slots  atomic.Pointer[[]atomic.Pointer[Pair]]
	stopCh chan struct{} // closed when the loop stops: Conns waiting on it give up

	owned atomic.Int32 // pairs with a slot here (balance_linux.go)

	timers []*Pair // min-heap on due
	again  []*Pair
	pool   [][2]int32
	now    int64
	buf    []byte // messages pass through it (see pump); at most the pipe size
	evs    [128]unix.EpollEvent
	taken  []op // ops being run; reused
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
			if ev.Fd < wakeSlot {
				if a := l.acceptor(ev.Fd); a != nil {
					l.accept(a)
					l.balance()
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
		case opForget:
			l.forgetAcceptor(o.a)
			close(o.ack)
		case opResume:
			l.resumeAcceptor(o.a)
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
	done(Result{Up: p.h[0].n, Down: p.h[1].n, Err: err, Reason: reason, ClientEOF: p.h[0].eof})
}
