// Package splice relays pairs of TCP sockets on a few epoll event loops, moving bytes with
// splice(2) through pipes that a pair holds only while bytes are in flight.
//
// The goroutine shape of a TCP proxy (two goroutines per connection blocked in io.Copy, each
// with its own splice pipe for the connection's whole life) costs about 20 KiB and 6 file
// descriptors per idle connection. Here an idle pair holds its two sockets and one small struct:
// no goroutine, no pipe, no timer. A pair takes a pipe from its loop's pool when a socket has
// bytes to read and gives it back as soon as the pipe is drained into the other socket; a slow
// reader therefore makes the engine hold at most one pipe per direction (backpressure: the other
// side is not read further until the pipe is drained). Idle timeouts live in a per-loop heap
// keyed by deadline; activity only stamps the pair, and the heap is corrected lazily when an
// entry comes due.
//
// Sockets enter the engine at accept and stay registered with one loop's epoll until closed.
// An Acceptor puts the listening socket in every loop's epoll set; the loop that accepts a
// connection runs the Acceptor's handler with it, on the loop's goroutine. The handler can read
// what the client sent (TryRead), dial the upstream on the same loop and send it those bytes
// (DialNoWait), and start relaying (SpliceOnLoop), all without waiting; a step that would wait
// continues on a goroutine, which uses the sockets as Conns (net.Conns whose waits are served
// by the loop, not Go's netpoller) and hands the pair to the loop with Splice. So a connection
// costs no netpoller registration, no duplicated descriptors and no blocked thread, and in the
// common case no goroutine at all. Routing is the caller's: the engine never parses what it
// reads.
//
// It does not run on systems without epoll and splice (New returns ErrUnsupported; the caller
// accepts, dials and relays with package net and goroutines).
//
//	e, err := splice.New(splice.Options{})
//	if err != nil { /* package net and io.Copy instead */ }
//	defer e.Close()
//	a, err := e.NewAcceptor(ln, h) // h.Accepted(c) runs on the loop for each connection
//	// in h.Accepted, on the loop:
//	n, err := c.TryRead(hello)                        // the ClientHello, if it is there
//	u, sent, err := c.DialNoWait(upstream, hello[:n]) // on c's loop; sends hello first
//	p, err := e.SpliceOnLoop(c, u, time.Minute, func(r splice.Result) { log(r.Up, r.Down, r.Err) })
//	// when a step would wait: c.Watch(), then on a goroutine Read, Dial and Splice
//	...
//	p.Cut() // at a drain deadline: done runs with Reason == Cut
//
// Example (example_test.go) is the same, compiled.
package splice

import (
	"errors"
	"runtime"
)

// Reason says why a pair ended.
type Reason uint8

const (
	// Ended: both directions reached EOF, or an error (Result.Err) ended the pair.
	Ended Reason = iota
	// IdleTimeout: no byte moved either way for the pair's idle timeout.
	IdleTimeout
	// Cut: Pair.Cut or Engine.Close ended it.
	Cut
)

// Result is what a pair reports when it ends.
type Result struct {
	Up   int64 // bytes written to the upstream (read from the client)
	Down int64 // bytes written to the client (read from the upstream)
	// Err is the first error other than a clean EOF (a reset, a broken pipe), wrapped in an
	// *os.SyscallError; nil when Reason is not Ended.
	Err    error
	Reason Reason
	// ClientEOF: the client's direction had reached EOF (the client had sent all it would)
	// when the pair ended.
	ClientEOF bool
}

// Options tune an Engine. The zero value is the default.
type Options struct {
	// Loops is the number of event loops. Zero: GOMAXPROCS.
	Loops int
	// PipeSize is the capacity asked of each pipe (F_SETPIPE_SZ). Zero: DefaultPipeSize.
	PipeSize int
	// MaxIdlePipes is how many drained pipes a loop keeps for reuse. Zero: 64.
	MaxIdlePipes int
}

// DefaultPipeSize is the pipe capacity when Options.PipeSize is zero: the most a direction moves
// per splice pair of calls.
const DefaultPipeSize = 256 << 10

var (
	// ErrUnsupported: the system has no epoll or splice; relay with goroutines instead.
	ErrUnsupported = errors.New("splice: relay engine not supported on this system")
	// ErrClosed: the engine is closed.
	ErrClosed = errors.New("splice: engine closed")
	// ErrNotReady: the socket has nothing to read yet (TryRead), or the upstream is still
	// connecting (DialNoWait).
	ErrNotReady = errors.New("splice: not ready")
)

// Stats are gauges of an engine.
type Stats struct {
	Pairs       int64 // pairs being relayed
	PipesInUse  int64 // pipes holding bytes in flight
	PipesPooled int64 // drained pipes kept for reuse
}

func (o Options) withDefaults() Options {
	if o.Loops <= 0 {
		o.Loops = runtime.GOMAXPROCS(0)
	}
	if o.PipeSize <= 0 {
		o.PipeSize = DefaultPipeSize
	}
	if o.MaxIdlePipes <= 0 {
		o.MaxIdlePipes = 64
	}
	return o
}
