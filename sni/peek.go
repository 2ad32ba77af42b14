package sni

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Defaults of PeekOptions.
const (
	DefaultTimeout = 5 * time.Second
	DefaultMaxSize = 64 << 10
)

// initialBuf is the first read buffer: enough for every hello seen in practice except those with a
// post-quantum key share, whose announced length then sizes the buffer exactly.
const initialBuf = 2 << 10

// PeekOptions bound Peek. The zero value is ready to use.
type PeekOptions struct {
	// Timeout is the deadline for the whole hello, not per read, so a client trickling one byte at a
	// time cannot hold the connection open longer. Zero (or negative) means DefaultTimeout (5s).
	Timeout time.Duration
	// MaxSize caps the bytes read. Zero (or negative) means DefaultMaxSize (64 KiB), the cap of
	// Envoy's TLS inspector: legal hellos of 16-64 KiB (large PSKs or ALPN lists, split over
	// several records) pass; a larger announced hello fails early with ErrTooLarge.
	MaxSize int
	// Buf, when its capacity is not zero, is the first buffer read into (up to its capacity, and
	// MaxSize), so a caller can reuse buffers; the bytes Peek returns may alias it. A hello
	// that does not fit moves to a larger buffer of Peek's own. Nil: Peek allocates 2 KiB.
	Buf []byte
	// Have is how many bytes at the start of Buf the caller already read from conn (its own
	// first read, made without waiting): Peek parses them before reading more.
	Have int
}

// Peek reads from conn until a complete ClientHello is parsed (or error), setting and then clearing a
// read deadline on conn. It returns the hello and every byte it consumed from conn (the caller forwards
// them upstream verbatim before relaying the rest); bytes the client sent after the hello in the same
// reads are included. On error it still returns the bytes read so far, and with ErrNoSNI also the
// Hello (its ALPN list).
//
// It works with hellos arriving one byte at a time and split across several TLS records. A read
// timeout gives ErrTimeout, an EOF before the end of the hello ErrTruncated (both also wrap the
// underlying error); other read errors are returned wrapped.
func Peek(conn net.Conn, opts PeekOptions) (*Hello, []byte, error) {
	timeout, maxSize := opts.Timeout, opts.MaxSize
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	// A closed connection (net.Pipe also says so when only its peer closed) cannot take a
	// deadline, and needs none: the read below reports the EOF or the close.
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil &&
		!errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, net.ErrClosed) {
		return nil, nil, fmt.Errorf("sni: setting read deadline: %w", err)
	}
	// Clearing can only fail on a closed conn, which the caller finds out on its next use.
	defer conn.SetReadDeadline(time.Time{})

	buf := opts.Buf[:0:min(cap(opts.Buf), maxSize)]
	if cap(buf) == 0 {
		buf = make([]byte, 0, min(initialBuf, maxSize))
	}
	buf = buf[:min(max(opts.Have, 0), cap(buf))]
	want := 0 // lower bound of the hello's size, from the parser
	if len(buf) > 0 {
		h, need, done, err := check(buf, maxSize)
		if done {
			return h, buf, err
		}
		want = need
	}
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= maxSize {
				return nil, buf, fmt.Errorf("%w: no complete hello in %d bytes", ErrTooLarge, len(buf))
			}
			nb := make([]byte, len(buf), min(max(2*cap(buf), want), maxSize))
			copy(nb, buf)
			buf = nb
		}
		n, rerr := conn.Read(buf[len(buf):cap(buf)])
		if n > 0 {
			buf = buf[:len(buf)+n]
			h, need, done, err := check(buf, maxSize)
			if done {
				return h, buf, err
			}
			want = need
		}
		if rerr != nil {
			return nil, buf, readError(rerr, len(buf))
		}
	}
}

// check parses what Peek has read: done when the hello is whole or cannot be (err says why);
// otherwise need is a lower bound of the bytes the hello takes.
func check(buf []byte, maxSize int) (h *Hello, need int, done bool, err error) {
	h, need, err = parse(buf)
	switch {
	case err == nil:
		return h, 0, true, nil
	case err != ErrTruncated: // parse returns ErrTruncated unwrapped
		return h, 0, true, err
	case need > maxSize:
		return nil, 0, true, fmt.Errorf("%w: hello needs at least %d bytes, cap is %d", ErrTooLarge, need, maxSize)
	}
	return nil, need, false, nil
}

func readError(err error, n int) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w after %d bytes: %w", ErrTimeout, n, err)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: EOF after %d bytes: %w", ErrTruncated, n, err)
	default:
		return fmt.Errorf("sni: reading client hello after %d bytes: %w", n, err)
	}
}

// replayConn returns the peeked bytes before reading from the connection.
type replayConn struct {
	net.Conn
	mu     sync.Mutex
	peeked []byte
}

// NewReplayConn wraps c so that Read first returns peeked, then reads from c.
// (The gateway does not use it on the splice path; it is for callers that want a net.Conn.)
//
// The result also has WriteTo, so io.Copy from it still reaches c's own WriteTo (splice for a
// *net.TCPConn) once the peeked bytes are written, CloseWrite, which half-closes c when c supports
// it, and NetConn, which returns c.
func NewReplayConn(c net.Conn, peeked []byte) net.Conn {
	return &replayConn{Conn: c, peeked: peeked}
}

// takePeeked removes and returns up to n peeked bytes (all when n < 0).
func (c *replayConn) takePeeked(n int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n < 0 || n > len(c.peeked) {
		n = len(c.peeked)
	}
	p := c.peeked[:n]
	c.peeked = c.peeked[n:]
	if len(c.peeked) == 0 {
		c.peeked = nil
	}
	return p
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if p := c.takePeeked(len(b)); len(p) > 0 {
		return copy(b, p), nil
	}
	return c.Conn.Read(b)
}

// WriteTo writes the peeked bytes, then copies the rest of c with io.Copy, which uses the underlying
// connection's WriteTo or w's ReadFrom (splice between two *net.TCPConn on Linux).
func (c *replayConn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if p := c.takePeeked(-1); len(p) > 0 {
		n, err := w.Write(p)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}

// CloseWrite half-closes the underlying connection if it supports it.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("sni: %T does not support CloseWrite", c.Conn)
}

// NetConn returns the wrapped connection.
func (c *replayConn) NetConn() net.Conn { return c.Conn }
