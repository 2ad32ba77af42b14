package vmcontrol

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"go.uber.org/zap"

	"github.com/ewgate/ewgate/gateway/internal/conncap"
)

// Connection limits are enforced where a connection is accepted, before the TLS handshake and
// before gRPC sees it: an attacker's half-open connections, slow handshakes and oversized
// headers all hold a connection (a file descriptor and some memory) first. A connection over
// limits.max_connections or limits.max_connections_per_source is closed at once (with a reset,
// so no TIME_WAIT is kept for it), counted in ewgate_control_limits_total and logged, sampled.

// capListener is the 15012 listener with the connection caps, the accept failures counted and
// every connection's handshake watched.
type capListener struct {
	net.Listener
	f         *Front
	caps      conncap.Caps
	mu        sync.Mutex
	closed    bool
	closeOnce sync.Once
}

func newCapListener(ln net.Listener, f *Front) *capListener {
	l := f.cfg.Limits
	return &capListener{Listener: ln, f: f, caps: conncap.Caps{Max: l.MaxConnections, PerSource: l.MaxConnectionsPerSource}}
}

// Accept returns the next connection within the caps; connections over a cap are closed here
// and the loop goes on (each turn consumes one accepted connection, so it cannot spin).
func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.acceptFailed(err)
			return nil, err
		}
		src := conncap.Source(c.RemoteAddr())
		if limit := capLimits[l.caps.Admit(src)]; limit != "" {
			conncap.Refuse(c)
			l.f.m.limits.WithLabelValues(limit).Inc()
			l.f.logEvent(limit, "control connection refused", zap.String("source", c.RemoteAddr().String()), zap.String("limit", limit))
			continue
		}
		l.f.m.conns.Inc()
		return &cappedConn{Conn: c, l: l, src: src}, nil
	}
}

// acceptFailed counts and logs (sampled) an accept error, unless the listener was closed.
func (l *capListener) acceptFailed(err error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed || errors.Is(err, net.ErrClosed) {
		return
	}
	reason := "other"
	switch {
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		reason = "fd_limit"
	case errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
		reason = "memory"
	}
	l.f.m.accepts.WithLabelValues(reason).Inc()
	l.f.logEvent("accept_"+reason, "control accept failed", zap.String("reason", reason), zap.Error(err))
}

func (l *capListener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	return l.Listener.Close()
}

// capLimits are the ewgate_control_limits_total labels of the caps' refusals.
var capLimits = map[conncap.Refusal]string{conncap.OverTotal: "max_connections", conncap.OverPerSource: "max_connections_per_source"}

// cappedConn gives its slot back when closed (once, whoever closes it).
type cappedConn struct {
	net.Conn
	l    *capListener
	src  netip.Addr
	once sync.Once
}

func (c *cappedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.caps.Release(c.src)
		c.l.f.m.conns.Dec()
	})
	return err
}

// Handshake failure reasons (ewgate_control_handshake_failures_total).
const (
	// hsTimeout: the TLS handshake or the client's HTTP/2 preface did not finish within
	// limits.handshake_timeout: a half-open (slowloris) connection.
	hsTimeout = "timeout"
	// hsClosed: the client closed or reset the connection before finishing (port scans,
	// load balancer health checks that only open TCP).
	hsClosed = "closed"
	// hsNotTLS: the first bytes were not a TLS record (plain HTTP, garbage).
	hsNotTLS = "not_tls"
	// hsTLS: TLS refused the client (no common version or cipher, a client certificate
	// refused with client_certs: require, a bad message).
	hsTLS = "tls"
)

// handshakeReason classifies a failed TLS handshake or preface read.
func handshakeReason(err error) string {
	var ne net.Error
	var rh tls.RecordHeaderError
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		return hsTimeout
	case errors.As(err, &rh):
		return hsNotTLS
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.EPIPE):
		return hsClosed
	}
	return hsTLS
}

// handshakeFailed counts and logs (sampled) a connection that never got to HTTP/2.
func (f *Front) handshakeFailed(raw net.Conn, err error) {
	reason := handshakeReason(err)
	f.m.handshakes.WithLabelValues(reason).Inc()
	f.logEvent("handshake_"+reason, "control handshake failed", zap.String("source", raw.RemoteAddr().String()),
		zap.String("reason", reason), zap.String("error", capMsg(err.Error())))
}

// logEvent writes a line of an event an attacker can repeat at will, sampled per key.
func (f *Front) logEvent(key, msg string, fields ...zap.Field) {
	ok, dropped := f.sample.Allow(key)
	if !ok {
		return
	}
	if dropped > 0 {
		fields = append(fields, zap.Uint64("dropped", dropped))
	}
	f.log.Info(msg, fields...)
}
