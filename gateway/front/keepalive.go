package front

import (
	"encoding/binary"
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// Keepalive enforcement is gRPC's (keepalive.EnforcementPolicy): a VM that pings more often than
// limits.keepalive_min_time gets, on its third offending ping, a GOAWAY with the error code
// ENHANCE_YOUR_CALM and the debug data "too_many_pings", and its connection is closed. gRPC
// offers no hook for it (no stats event, no error a handler sees), so the front counts it
// where it can be seen: in the bytes gRPC's HTTP/2 server writes. Those are encrypted once
// they reach the listener's conn, so the watch sits on the conn the TLS handshake returns, the
// plaintext side that carries nothing but HTTP/2 frames.

const (
	frameHeaderLen  = 9
	frameTypeGoAway = 0x7
	errCodeCalm     = 0xb // ENHANCE_YOUR_CALM, RFC 9113 §7
	tooManyPings    = "too_many_pings"
	goAwayKeep      = 8 + len(tooManyPings) // last stream ID, error code, the debug data we compare
)

// calmCreds are the listener's TLS credentials with the plaintext conn of each VM connection
// watched for a too_many_pings GOAWAY; onCalm is called once per connection that gets one.
type calmCreds struct {
	credentials.TransportCredentials
	onCalm func()
}

func (c *calmCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return &goAwayConn{Conn: conn, onCalm: c.onCalm}, ai, nil
}

func (c *calmCreds) Clone() credentials.TransportCredentials {
	return &calmCreds{TransportCredentials: c.TransportCredentials.Clone(), onCalm: c.onCalm}
}

// goAwayConn scans what is written to it as a sequence of HTTP/2 frames. A server's side of
// an HTTP/2 connection starts with a frame (its SETTINGS; only the client sends a preface), so
// the scan is in step from the first byte. It reads frame headers only and skips payloads
// without copying, except the first bytes of a GOAWAY.
type goAwayConn struct {
	net.Conn
	onCalm func()
	mu     sync.Mutex // gRPC serializes its writes; this keeps the scanner safe if it did not
	s      frameScanner
}

func (c *goAwayConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.mu.Lock()
	calm := c.s.scan(b[:n])
	c.mu.Unlock()
	if calm {
		c.onCalm()
	}
	return n, err
}

// frameScanner follows HTTP/2 frame boundaries across writes of any size.
type frameScanner struct {
	hdr    [frameHeaderLen]byte
	nhdr   int    // bytes of the current frame header seen
	left   int    // payload bytes of the current frame still to come
	goAway bool   // the current frame is a GOAWAY
	keep   []byte // its first goAwayKeep payload bytes
	done   bool   // a too_many_pings GOAWAY was seen: nothing more to look for
}

// scan consumes b and reports whether it completed a GOAWAY ENHANCE_YOUR_CALM too_many_pings
// frame (at most once per scanner).
func (s *frameScanner) scan(b []byte) bool {
	for len(b) > 0 && !s.done {
		if s.nhdr < frameHeaderLen {
			n := copy(s.hdr[s.nhdr:], b)
			s.nhdr += n
			b = b[n:]
			if s.nhdr < frameHeaderLen {
				return false
			}
			s.left = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
			s.goAway = s.hdr[3] == frameTypeGoAway
			s.keep = s.keep[:0]
		}
		n := min(s.left, len(b))
		if s.goAway && len(s.keep) < goAwayKeep {
			s.keep = append(s.keep, b[:min(n, goAwayKeep-len(s.keep))]...)
		}
		s.left -= n
		b = b[n:]
		if s.left == 0 {
			s.nhdr = 0
			if s.goAway && isTooManyPings(s.keep) {
				s.done = true
				return true
			}
		}
	}
	return false
}

// isTooManyPings: a GOAWAY payload is the last stream ID (4 bytes), the error code (4 bytes)
// and debug data; gRPC's server puts "too_many_pings" there (internal/transport, handlePing).
func isTooManyPings(p []byte) bool {
	return len(p) == goAwayKeep && binary.BigEndian.Uint32(p[4:8]) == errCodeCalm && string(p[8:]) == tooManyPings
}
