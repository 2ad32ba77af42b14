// Package proxyproto reads the PROXY protocol header (versions 1 and 2, as specified by HAProxy in
// "The PROXY protocol", doc/proxy-protocol.txt) that a trusted load balancer puts in front of a
// connection to tell the real client and destination addresses.
//
// Read consumes exactly the header and nothing after it, so the TLS ClientHello that follows is
// left on the socket for sni.Peek, and splice still works on the bare connection afterwards:
//
//	hdr, err := proxyproto.Read(conn, 3*time.Second)
//	if err != nil {
//		return err // errors.Is(err, proxyproto.ErrNotProxy), ...
//	}
//	client := conn.RemoteAddr()
//	if hdr.Source != nil {
//		client = hdr.Source
//	}
//
// It does not decide whom to trust: only call Read on connections from load balancer addresses,
// since anyone else could claim any source. It does not write headers, and it skips TLVs without
// interpreting them.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Errors returned by Read, possibly wrapped with detail: use errors.Is.
var (
	// ErrNotProxy: the connection does not start with a PROXY protocol signature.
	ErrNotProxy = errors.New("proxyproto: not a PROXY protocol header")
	// ErrMalformed: the signature is there but the header is invalid.
	ErrMalformed = errors.New("proxyproto: malformed PROXY header")
	// ErrTooLarge: a v1 line longer than 107 bytes, or a v2 header longer than MaxV2Len.
	ErrTooLarge = errors.New("proxyproto: PROXY header too large")
	// ErrUnsupported: a valid v2 header for a family other than TCP over IPv4/IPv6 (UDP, unix).
	ErrUnsupported = errors.New("proxyproto: unsupported PROXY address family")
	// ErrTruncated: EOF before the end of the header.
	ErrTruncated = errors.New("proxyproto: PROXY header truncated")
	// ErrTimeout: the header did not arrive before the deadline.
	ErrTimeout = errors.New("proxyproto: timed out reading PROXY header")
)

// Commands.
const (
	CommandProxy = "PROXY"
	CommandLocal = "LOCAL"
)

// Header is the decoded PROXY header. Source/Dest are nil for LOCAL (v2) / UNKNOWN (v1), and for a
// v2 PROXY header of family AF_UNSPEC: the caller then uses the connection's own addresses.
type Header struct {
	Version int    // 1 or 2
	Command string // "PROXY" or "LOCAL" (v2 only; a v1 header is always "PROXY")
	// Source and Dest are *net.TCPAddr, or both nil.
	Source, Dest net.Addr
}

const (
	v1Prefix = "PROXY "
	// v1MaxLen is the longest v1 line, CRLF included (spec section 2.1).
	v1MaxLen = 107
	// MaxV2Len caps the length field of a v2 header: addresses plus TLVs. The spec allows 65535;
	// load balancers send far less (AWS and GCP TLVs are tens of bytes), and the cap bounds what a
	// broken peer can make us read.
	MaxV2Len   = 4096
	v2FixedLen = 16
)

// v2Sig is the 12-byte signature of a v2 header (spec section 2.2).
var v2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// Read reads exactly one PROXY header from conn (v1 text or v2 binary, detected by signature),
// consuming no byte beyond the header (so the TLS ClientHello that follows is left unread on the
// socket), under the given deadline (zero or negative: none), cleared before returning.
//
// A v1 header is read byte by byte up to CRLF; a v2 header as its 16-byte fixed part, then exactly
// the announced length. Bytes that cannot start either signature fail at once with ErrNotProxy.
func Read(conn net.Conn, timeout time.Duration) (*Header, error) {
	if timeout > 0 {
		if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return nil, fmt.Errorf("proxyproto: setting read deadline: %w", err)
		}
		// Clearing can only fail on a closed conn, which the caller finds out on its next use.
		defer conn.SetReadDeadline(time.Time{})
	}
	var first [1]byte
	if err := readFull(conn, first[:], 0); err != nil {
		return nil, err
	}
	switch first[0] {
	case v1Prefix[0]:
		return readV1(conn)
	case v2Sig[0]:
		return readV2(conn)
	}
	return nil, fmt.Errorf("%w: first byte %#02x", ErrNotProxy, first[0])
}

// readFull reads exactly len(b) bytes; got is how many header bytes were read before, for errors.
func readFull(conn net.Conn, b []byte, got int) error {
	n, err := io.ReadFull(conn, b)
	if err == nil {
		return nil
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w after %d bytes: %w", ErrTimeout, got+n, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: EOF after %d bytes", ErrTruncated, got+n)
	default:
		return fmt.Errorf("proxyproto: reading header after %d bytes: %w", got+n, err)
	}
}

// readV1 reads the rest of a v1 line ("PROXY TCP4 1.2.3.4 5.6.7.8 1234 443\r\n") after its 'P',
// one byte at a time so that nothing past the CRLF is consumed.
func readV1(conn net.Conn) (*Header, error) {
	var line [v1MaxLen]byte
	line[0] = v1Prefix[0]
	n := 1
	for {
		if n == len(line) {
			return nil, fmt.Errorf("%w: v1 line without CRLF in %d bytes", ErrTooLarge, n)
		}
		if err := readFull(conn, line[n:n+1], n); err != nil {
			return nil, err
		}
		n++
		if n <= len(v1Prefix) && line[n-1] != v1Prefix[n-1] {
			return nil, fmt.Errorf("%w: %q", ErrNotProxy, line[:n])
		}
		if line[n-1] == '\n' {
			if line[n-2] != '\r' {
				return nil, fmt.Errorf("%w: v1 line ends in LF without CR", ErrMalformed)
			}
			return parseV1(line[len(v1Prefix) : n-2])
		}
	}
}

// parseV1 parses the fields of a v1 line after "PROXY " and before CRLF.
func parseV1(b []byte) (*Header, error) {
	h := &Header{Version: 1, Command: CommandProxy}
	proto, rest, _ := bytes.Cut(b, []byte{' '})
	switch string(proto) {
	case "UNKNOWN":
		// "the receiver must ignore anything presented before the CRLF" (section 2.1).
		return h, nil
	case "TCP4", "TCP6":
	default:
		return nil, fmt.Errorf("%w: v1 protocol %q", ErrMalformed, proto)
	}
	f := bytes.Split(rest, []byte{' '})
	if len(f) != 4 {
		return nil, fmt.Errorf("%w: v1 %s line has %d address fields, want 4", ErrMalformed, proto, len(f))
	}
	want4 := string(proto) == "TCP4"
	var addrs [2]*net.TCPAddr
	for i := range addrs {
		ip, err := netip.ParseAddr(string(f[i]))
		// TCP4 takes dotted quads; TCP6 takes IPv6 text (an IPv4-mapped form is IPv6 text too).
		if err != nil || ip.Zone() != "" || ip.Is4() != want4 {
			return nil, fmt.Errorf("%w: v1 %s address %q", ErrMalformed, proto, f[i])
		}
		port, ok := parseV1Port(f[2+i])
		if !ok {
			return nil, fmt.Errorf("%w: v1 port %q", ErrMalformed, f[2+i])
		}
		addrs[i] = net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, port))
	}
	h.Source, h.Dest = addrs[0], addrs[1]
	return h, nil
}

// parseV1Port parses a decimal port 0..65535 without sign or leading zeros.
func parseV1Port(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || (b[0] == '0' && len(b) > 1) {
		return 0, false
	}
	p, err := strconv.ParseUint(string(b), 10, 16)
	if err != nil || b[0] == '+' {
		return 0, false
	}
	return uint16(p), true
}

// readV2 reads the rest of a v2 header after its first byte: the fixed part, then exactly the
// announced length.
func readV2(conn net.Conn) (*Header, error) {
	var fixed [v2FixedLen]byte
	fixed[0] = v2Sig[0]
	// The other 15 bytes of the fixed part at once: all of them belong to the header. (A peer that
	// sent a lone CR and waits gets the deadline.)
	if err := readFull(conn, fixed[1:], 1); err != nil {
		return nil, err
	}
	if !bytes.Equal(fixed[:len(v2Sig)], v2Sig) {
		return nil, fmt.Errorf("%w: bad v2 signature", ErrNotProxy)
	}
	verCmd, famProto := fixed[12], fixed[13]
	length := int(binary.BigEndian.Uint16(fixed[14:16]))
	if verCmd>>4 != 2 {
		return nil, fmt.Errorf("%w: v2 version %d", ErrMalformed, verCmd>>4)
	}
	h := &Header{Version: 2}
	switch verCmd & 0xf {
	case 0:
		h.Command = CommandLocal
	case 1:
		h.Command = CommandProxy
	default:
		return nil, fmt.Errorf("%w: v2 command %d", ErrMalformed, verCmd&0xf)
	}
	if length > MaxV2Len {
		return nil, fmt.Errorf("%w: v2 length %d, cap %d", ErrTooLarge, length, MaxV2Len)
	}
	body := make([]byte, length)
	if err := readFull(conn, body, v2FixedLen); err != nil {
		return nil, err
	}
	return parseV2Body(h, famProto, body)
}

// v2 address families (high nibble) and transports (low nibble) of byte 14 (spec 2.2).
const (
	famUnspec = 0x0
	famInet   = 0x1
	famInet6  = 0x2
	famUnix   = 0x3

	protoUnspec = 0x0
	protoStream = 0x1
	protoDgram  = 0x2
)

func parseV2Body(h *Header, famProto byte, body []byte) (*Header, error) {
	fam, proto := famProto>>4, famProto&0xf
	if fam > famUnix || proto > protoDgram {
		return nil, fmt.Errorf("%w: v2 family/protocol %#02x", ErrMalformed, famProto)
	}
	if h.Command == CommandLocal || fam == famUnspec {
		// LOCAL: the connection is the balancer's own (a health check); the address block, if
		// any, must be ignored. PROXY with AF_UNSPEC: use the real connection endpoints.
		return h, nil
	}
	var alen int
	switch {
	case fam == famInet && proto == protoStream:
		alen = 12
	case fam == famInet6 && proto == protoStream:
		alen = 36
	default:
		return nil, fmt.Errorf("%w: v2 family/protocol %#02x (only TCP over IPv4/IPv6)", ErrUnsupported, famProto)
	}
	if len(body) < alen {
		return nil, fmt.Errorf("%w: v2 length %d below the %d bytes of the addresses", ErrMalformed, len(body), alen)
	}
	ipLen := (alen - 4) / 2
	src, _ := netip.AddrFromSlice(body[:ipLen])
	dst, _ := netip.AddrFromSlice(body[ipLen : 2*ipLen])
	sport := binary.BigEndian.Uint16(body[2*ipLen:])
	dport := binary.BigEndian.Uint16(body[2*ipLen+2:])
	h.Source = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, sport))
	h.Dest = net.TCPAddrFromAddrPort(netip.AddrPortFrom(dst, dport))
	if err := checkTLVs(body[alen:]); err != nil {
		return nil, err
	}
	return h, nil
}

// checkTLVs checks that b, the bytes after the addresses, is a sequence of TLVs (type, 16-bit
// length, value; spec 2.2.7), which Read skips.
func checkTLVs(b []byte) error {
	for len(b) > 0 {
		if len(b) < 3 {
			return fmt.Errorf("%w: v2 TLV header truncated", ErrMalformed)
		}
		n := int(binary.BigEndian.Uint16(b[1:3]))
		if len(b) < 3+n {
			return fmt.Errorf("%w: v2 TLV type %#02x overruns the header", ErrMalformed, b[0])
		}
		b = b[3+n:]
	}
	return nil
}
