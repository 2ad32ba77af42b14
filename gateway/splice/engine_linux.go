package splice

// The engine's files: engine_linux.go (Engine, Pair), loop_linux.go (the event loop and its
// ops), slots_linux.go (a loop's slot table: epoll event to pair), pump_linux.go (moving a
// direction's bytes), pipes_linux.go (the pipe pool), idle_linux.go (the idle heap),
// conn_linux.go (Acceptor and Conn: the sockets before Splice), sys_linux.go (raw syscalls).

import (
	"sync"
	"sync/atomic"
	"time"
)

// Engine owns a fixed set of event loops; a pair belongs to the loop that accepted its client,
// and the loops take turns accepting so that they own about as many pairs (balance_linux.go).
type Engine struct {
	opts  Options
	loops []*loop
	// balanceMu: one loop at a time steps back from accepting (balance_linux.go).
	balanceMu sync.Mutex
	wg        sync.WaitGroup
	start     time.Time // the loops' clock is nanoseconds since start (monotonic)

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

// Readiness of a socket, as the loop last learnt it (Pair.ready, Pair.seen).
const (
	canRead  = 1
	canWrite = 2
	// drain: read the socket until EAGAIN; a short read does not prove it empty (its FIN may be
	// queued behind the data, or it had bytes before the loop owned it). Without it a short
	// read does: bytes arriving later raise a new edge.
	drain = 4
)

// half is one direction. Bytes are counted when written to the destination.
type half struct {
	pipe     [2]int32 // read end, write end; -1 when the half holds no pipe
	buffered int      // bytes in the pipe
	n        int64
	bulk     bool // a read filled the loop's buffer: splice until the source is drained
	eof      bool // the source said EOF
	shut     bool // the destination was shut for writing
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
