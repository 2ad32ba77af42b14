package dataplane

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/splice"
)

// relayEngine moves the bytes of routed connections. There are two: the epoll engine (package
// splice, epollEngine), which takes the pair off the connection's goroutine, and copyEngine,
// which copies on it.
type relayEngine interface {
	// relay moves bytes both ways between c.client and c.upstream until both directions end,
	// the pair has been idle for the listener's idle_timeout, or it is cut. Once it has the
	// sockets it hands c what cuts it (c.setRelay); when it has closed both it records the end
	// (c.relayEnded) and calls c.done, before relay returns or later. An error means it did not
	// take the pair and touched nothing: the caller relays it another way.
	relay(c *conn) error
}

var errNotOnEngine = errors.New("dataplane: the connection was not accepted onto the relay engine")

// relay hands the routed pair to the gateway's relay engine. When that is the epoll engine and
// it does not take the pair (a listener it could not accept for, counted when it was bound; a
// pair it refused, counted here), the copy engine, which takes every pair, relays it.
func (c *conn) relay() {
	err := c.g.engine().relay(c)
	if err == nil {
		return
	}
	// net.ErrClosed: the client was cut at the drain deadline, not refused.
	if !errors.Is(err, errNotOnEngine) && !errors.Is(err, net.ErrClosed) {
		c.g.m.relayFallbacks.Inc()
		c.g.log.Warn("relay engine refused a connection; relaying it with goroutines", zap.Error(err))
	}
	copyEngine{}.relay(c)
}

var (
	_ relayEngine = epollEngine{}
	_ relayEngine = copyEngine{}
)

// copyEngine relays a pair on the connection's goroutine and one more (copyRelay). It takes
// every pair.
type copyEngine struct{}

func (copyEngine) relay(c *conn) error {
	r := &copyRelay{client: c.client, upstream: c.upstream, idle: c.table.Listener.IdleTimeout}
	c.setRelay(r)
	up, down, err := r.run()
	c.relayEnded(splice.Reason(r.cutBy.Load()), up, down, err, r.clientEOF.Load())
	c.done()
	return nil
}

// copyRelay moves bytes both ways between a client and an upstream until both directions have
// ended. When both sides are *net.TCPConn, io.Copy reaches TCPConn.ReadFrom and the kernel
// splices (no userspace copy); that is why nothing here wraps either conn.
//
// The idle timeout needs no per-read deadline (a deadline that fires mid-splice would drop the
// bytes in the pipe): a timer samples the kernel's byte counters of both sockets
// (TCP_INFO bytes_received/bytes_acked) every idle period and cuts the pair when none moved, so
// a connection is cut between one and two idle periods after its last byte.
type copyRelay struct {
	client, upstream net.Conn
	idle             time.Duration

	cutBy     atomic.Int32 // a splice.Reason: why ewgate cut the pair short (Ended: it did not)
	done      atomic.Bool
	clientEOF atomic.Bool // the client's direction reached EOF
	closeOnce sync.Once
	errOnce   sync.Once
	err       error // the first error of either direction; the other one then sees a closed conn
	timer     *time.Timer
	last      uint64 // activity signature at the previous idle check; timer goroutine only
}

// run relays until both directions end, and returns the bytes moved client->upstream and
// upstream->client and the first error that was not a clean EOF.
func (r *copyRelay) run() (up, down int64, err error) {
	if r.idle > 0 {
		r.last, _ = activity(r.client, r.upstream)
		r.timer = time.AfterFunc(r.idle, r.checkIdle)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		down = r.copyHalf(r.client, r.upstream)
	}()
	up = r.copyHalf(r.upstream, r.client)
	wg.Wait()
	r.done.Store(true)
	if r.timer != nil {
		r.timer.Stop()
	}
	r.close()
	return up, down, r.err
}

// copyHalf copies src to dst until EOF, then half-closes dst so the peer sees the EOF while
// the other direction goes on, and returns the bytes copied. A read or write error ends the
// whole pair and is kept if it is the first. A failed half-close
// is not an error of the transfer: the peer has already gone (ENOTCONN), and the other
// direction finds that out by itself.
func (r *copyRelay) copyHalf(dst, src net.Conn) int64 {
	n, err := io.Copy(dst, src)
	if err != nil {
		r.errOnce.Do(func() { r.err = err })
		r.close()
		return n
	}
	if src == r.client && finWithoutReset(src) {
		r.clientEOF.Store(true)
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		r.close()
	}
	return n
}

func (r *copyRelay) checkIdle() {
	if r.done.Load() {
		return
	}
	sig, ok := activity(r.client, r.upstream)
	if ok && sig == r.last {
		r.stop(splice.IdleTimeout)
		return
	}
	r.last = sig
	r.timer.Reset(r.idle)
}

// Cut cuts the pair at the drain deadline.
func (r *copyRelay) Cut() { r.stop(splice.Cut) }

// stop cuts the pair for the given reason (the first reason wins).
func (r *copyRelay) stop(reason splice.Reason) {
	r.cutBy.CompareAndSwap(int32(splice.Ended), int32(reason))
	r.close()
}

func (r *copyRelay) close() {
	r.closeOnce.Do(func() {
		r.client.Close()
		r.upstream.Close()
	})
}
