//go:build !linux

package splice

import (
	"net"
	"time"
)

// Engine is unavailable here: New returns ErrUnsupported.
type Engine struct{}

// Pair is unavailable here.
type Pair struct{}

// New returns ErrUnsupported: the engine needs Linux's epoll and splice.
func New(Options) (*Engine, error) { return nil, ErrUnsupported }

// Relay returns ErrUnsupported.
func (*Engine) Relay(_, _ *net.TCPConn, _ time.Duration, _ func(Result)) (*Pair, error) {
	return nil, ErrUnsupported
}

// Close does nothing.
func (*Engine) Close() {}

// Stats returns zeros.
func (*Engine) Stats() Stats { return Stats{} }

// Cut does nothing.
func (*Pair) Cut() {}
