package splice

import (
	"os"

	"golang.org/x/sys/unix"
)

// getPipe gives h a pipe: a drained one from the loop's pool, or a new one of the engine's pipe
// size.
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
