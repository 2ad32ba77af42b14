package vmcontrol

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
	frameHeaderLen   = 9
	frameTypeGoAway  = 0x7
	frameTypeRST     = 0x3
	errCodeFrameSize = 0x6 // FRAME_SIZE_ERROR: gRPC's reset of a header list over the limit
	errCodeCalm      = 0xb // ENHANCE_YOUR_CALM, RFC 9113 §7
	tooManyPings     = "too_many_pings"
	goAwayKeep       = 8 + len(tooManyPings) // last stream ID, error code, the debug data we compare
)

// calmCreds are the listener's TLS credentials with the plaintext conn of each VM connection
// watched: onCalm is called once per connection that gets a too_many_pings GOAWAY, onReset for
// each RST_STREAM FRAME_SIZE_ERROR gRPC writes (its answer to a request whose header list is
// over limits.max_header_bytes), onFail for a handshake that fails and for a connection whose
// HTTP/2 preface does not arrive (the half-open connection past the handshake timeout).
type calmCreds struct {
	credentials.TransportCredentials
	onCalm  func()
	onReset func()
	onFail  func(raw net.Conn, err error)
}

func (c *calmCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		if c.onFail != nil {
			c.onFail(raw, err)
		}
		return nil, nil, err
	}
	return &goAwayConn{Conn: conn, raw: raw, creds: c}, ai, nil
}

func (c *calmCreds) Clone() credentials.TransportCredentials {
	cp := *c
	cp.TransportCredentials = c.TransportCredentials.Clone()
	return &cp
}

// prefaceLen is the length of the client's HTTP/2 connection preface (RFC 9113 §3.4).
const prefaceLen = 24

// goAwayConn scans what is written to it as a sequence of HTTP/2 frames. A server's side of
// an HTTP/2 connection starts with a frame (its SETTINGS; only the client sends a preface), so
// the scan is in step from the first byte. It reads frame headers only and skips payloads
// without copying, except the first bytes of a GOAWAY or RST_STREAM. On the read side it
// only counts bytes until the client's preface has arrived.
type goAwayConn struct {
	net.Conn
	raw     net.Conn
	creds   *calmCreds
	mu      sync.Mutex // gRPC serializes its writes; this keeps the scanner safe if it did not
	s       frameScanner
	preface int // bytes read, up to prefaceLen (only gRPC's reader goroutine touches it)
}

func (c *goAwayConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.preface < prefaceLen {
		c.preface += n
		if err != nil && c.preface < prefaceLen && c.creds.onFail != nil {
			c.creds.onFail(c.raw, err)
			c.preface = prefaceLen // counted once
		}
	}
	return n, err
}

func (c *goAwayConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.mu.Lock()
	calm, resets := c.s.scan(b[:n])
	c.mu.Unlock()
	if calm && c.creds.onCalm != nil {
		c.creds.onCalm()
	}
	for range resets {
		if c.creds.onReset != nil {
			c.creds.onReset()
		}
	}
	return n, err
}

// frameScanner follows HTTP/2 frame boundaries across writes of any size.
type frameScanner struct {
	hdr    [frameHeaderLen]byte
	nhdr   int    // bytes of the current frame header seen
	left   int    // payload bytes of the current frame still to come
	typ    byte   // the current frame's type
	keep   []byte // the first goAwayKeep payload bytes of a GOAWAY or RST_STREAM
	calmed bool   // a too_many_pings GOAWAY was seen (reported once)
}

// scan consumes b; it reports whether it completed the first GOAWAY ENHANCE_YOUR_CALM
// too_many_pings frame, and how many RST_STREAM FRAME_SIZE_ERROR frames it completed.
func (s *frameScanner) scan(b []byte) (calm bool, resets int) {
	for len(b) > 0 {
		if s.nhdr < frameHeaderLen {
			n := copy(s.hdr[s.nhdr:], b)
			s.nhdr += n
			b = b[n:]
			if s.nhdr < frameHeaderLen {
				return calm, resets
			}
			s.left = int(s.hdr[0])<<16 | int(s.hdr[1])<<8 | int(s.hdr[2])
			s.typ = s.hdr[3]
			s.keep = s.keep[:0]
		}
		n := min(s.left, len(b))
		if (s.typ == frameTypeGoAway || s.typ == frameTypeRST) && len(s.keep) < goAwayKeep {
			s.keep = append(s.keep, b[:min(n, goAwayKeep-len(s.keep))]...)
		}
		s.left -= n
		b = b[n:]
		if s.left == 0 {
			s.nhdr = 0
			switch {
			case s.typ == frameTypeGoAway && !s.calmed && isTooManyPings(s.keep):
				s.calmed, calm = true, true
			case s.typ == frameTypeRST && len(s.keep) == 4 && binary.BigEndian.Uint32(s.keep) == errCodeFrameSize:
				resets++
			}
		}
	}
	return calm, resets
}

// isTooManyPings: a GOAWAY payload is the last stream ID (4 bytes), the error code (4 bytes)
// and debug data; gRPC's server puts "too_many_pings" there (internal/transport, handlePing).
func isTooManyPings(p []byte) bool {
	return len(p) == goAwayKeep && binary.BigEndian.Uint32(p[4:8]) == errCodeCalm && string(p[8:]) == tooManyPings
}
