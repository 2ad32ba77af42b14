//go:build !linux

package splice

import (
	"net"
	"net/netip"
	"time"
)

// Engine is unavailable here: New returns ErrUnsupported, so none of these types is ever made.
type Engine struct{}

// Pair is unavailable here.
type Pair struct{}

// Acceptor is unavailable here.
type Acceptor struct{}

// Conn is unavailable here; its methods make it a net.Conn like the Linux one.
type Conn struct{ net.TCPConn }

// New returns ErrUnsupported: the engine needs Linux's epoll and splice.
func New(Options) (*Engine, error) { return nil, ErrUnsupported }

// AcceptHandler is what an Acceptor does with the connections it accepts.
type AcceptHandler interface {
	Accepted(c *Conn)
	AcceptFailed(err error) (retry time.Duration)
}

// NewAcceptor returns ErrUnsupported.
func (*Engine) NewAcceptor(*net.TCPListener, AcceptHandler) (*Acceptor, error) {
	return nil, ErrUnsupported
}

// TryRead returns ErrUnsupported.
func (*Conn) TryRead([]byte) (int, error) { return 0, ErrUnsupported }

// Watch returns ErrUnsupported.
func (*Conn) Watch() error { return ErrUnsupported }

// DialNoWait returns ErrUnsupported.
func (*Conn) DialNoWait(netip.AddrPort, []byte) (*Conn, int, error) { return nil, 0, ErrUnsupported }

// FinishDial returns ErrUnsupported.
func (*Conn) FinishDial([]byte, time.Time) error { return ErrUnsupported }

// SpliceOnLoop returns ErrUnsupported.
func (*Engine) SpliceOnLoop(_, _ *Conn, _ time.Duration, _ func(Result)) (*Pair, error) {
	return nil, ErrUnsupported
}

// Close does nothing.
func (*Acceptor) Close() error { return nil }

// Dial returns ErrUnsupported.
func (*Conn) Dial(netip.AddrPort, time.Time, []byte) (*Conn, error) { return nil, ErrUnsupported }

// Splice returns ErrUnsupported.
func (*Engine) Splice(_, _ *Conn, _ time.Duration, _ func(Result)) (*Pair, error) {
	return nil, ErrUnsupported
}

// Close does nothing.
func (*Engine) Close() {}

// Stats returns zeros.
func (*Engine) Stats() Stats { return Stats{} }

// Cut does nothing.
func (*Pair) Cut() {}

// RemoteAddrPort returns the zero AddrPort.
func (*Conn) RemoteAddrPort() netip.AddrPort { return netip.AddrPort{} }
