package gateway

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewgate/ewgate/gateway/splice"
)

// relay moves bytes both ways between a client and an upstream until both directions have
// ended. When both sides are *net.TCPConn, io.Copy reaches TCPConn.ReadFrom and the kernel
// splices (no userspace copy); that is why nothing here wraps either conn.
//
// The idle timeout needs no per-read deadline (a deadline that fires mid-splice would drop the
// bytes in the pipe): a timer samples the kernel's byte counters of both sockets
// (TCP_INFO bytes_received/bytes_acked) every idle period and cuts the pair when none moved, so
// a connection is cut between one and two idle periods after its last byte.
type relay struct {
	client, upstream net.Conn
	idle             time.Duration

	cut       atomic.Int32 // a splice.Reason: why ewgate cut the pair short (Ended: it did not)
	done      atomic.Bool
	closeOnce sync.Once
	errOnce   sync.Once
	err       error // the first error of either direction; the other one then sees a closed conn
	timer     *time.Timer
	last      uint64 // activity signature at the previous idle check; timer goroutine only
}

// run relays until both directions end, and returns the bytes moved client->upstream and
// upstream->client and the first error that was not a clean EOF.
func (r *relay) run() (up, down int64, err error) {
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
func (r *relay) copyHalf(dst, src net.Conn) int64 {
	n, err := io.Copy(dst, src)
	if err != nil {
		r.errOnce.Do(func() { r.err = err })
		r.close()
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		r.close()
	}
	return n
}

func (r *relay) checkIdle() {
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

// stop cuts the pair for the given reason (the first reason wins).
func (r *relay) stop(reason splice.Reason) {
	r.cut.CompareAndSwap(int32(splice.Ended), int32(reason))
	r.close()
}

func (r *relay) close() {
	r.closeOnce.Do(func() {
		r.client.Close()
		r.upstream.Close()
	})
}
