package sni

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Errors returned by ParseClientHello and Peek. They may be wrapped with detail: use errors.Is.
var (
	ErrNotTLS    = errors.New("sni: not a TLS handshake")
	ErrTooLarge  = errors.New("sni: client hello exceeds size cap")
	ErrTruncated = errors.New("sni: client hello truncated")
	ErrTimeout   = errors.New("sni: timed out reading client hello")
	ErrNoSNI     = errors.New("sni: client hello has no server name")
	ErrMalformed = errors.New("sni: malformed client hello")
)

// Hello is what the gateway routes on.
type Hello struct {
	// ServerName is the host_name of the server_name extension, lower-cased, trailing dot removed.
	// It is never "" when the error is nil: a hello without one gives ErrNoSNI.
	ServerName string
	// ALPN holds the protocols of the application_layer_protocol_negotiation extension, in the
	// client's order; nil when the extension is absent.
	ALPN []string
}

// Wire constants (RFC 8446 sections 4, 4.2 and 5.1; RFC 6066 section 3; RFC 7301 section 3.1).
const (
	recordHeaderLen          = 5
	recordTypeHandshake      = 22
	maxRecordPayload         = 1 << 14 // TLSPlaintext.length MUST NOT exceed 2^14
	handshakeHeaderLen       = 4
	handshakeTypeClientHello = 1
	extServerName            = 0
	extALPN                  = 16
	nameTypeHostName         = 0
	maxHostNameLen           = 253
	// minHelloBody is the smallest ClientHello body: version, random, empty session id,
	// one cipher suite, one compression method.
	minHelloBody = 2 + 32 + 1 + 2 + 2 + 1 + 1
)

// ParseClientHello parses a ClientHello from data, which starts at the first TLS record header
// and may hold several TLS handshake records (a hello split across records, RFC 8446 5.1).
// The record carrying the hello's last byte must be complete (a record announcing more than
// data holds is ErrTruncated); bytes after that record are ignored.
//
// It returns ErrTruncated (possibly wrapped) when data is a valid prefix that needs more bytes,
// ErrNotTLS when the first bytes are not a TLS handshake record carrying a ClientHello (an
// SSLv2-compatible hello included), ErrMalformed when the hello is inconsistent or its server name
// is not a host name, and ErrNoSNI, together with a non-nil Hello holding the ALPN list, when it
// has no host_name.
func ParseClientHello(data []byte) (*Hello, error) {
	h, _, err := parse(data)
	return h, err
}

// parse is ParseClientHello that also returns, with ErrTruncated, a lower bound of the number of
// bytes from data[0] the whole hello occupies, so Peek can give up early with ErrTooLarge and size
// its buffer.
func parse(data []byte) (*Hello, int, error) {
	msg, need, err := handshakeMessage(data)
	if err != nil {
		return nil, need, err
	}
	h, err := parseHelloBody(msg[handshakeHeaderLen:])
	return h, 0, err
}

// checkRecordHeader validates the available prefix (up to 5 bytes) of a record header.
// first reports whether this is the record the connection starts with: problems there mean
// "this is not TLS at all" rather than "this is broken TLS".
func checkRecordHeader(hdr []byte, first bool) error {
	bad := ErrMalformed
	if first {
		bad = ErrNotTLS
	}
	if len(hdr) > 0 && hdr[0] != recordTypeHandshake {
		// Includes the SSLv2-compatible hello, whose first byte has the high bit set.
		return fmt.Errorf("%w: record type %d, want %d (handshake)", bad, hdr[0], recordTypeHandshake)
	}
	// legacy_record_version: 0x0300 (SSL 3.0) to 0x0304; real clients send 0x0301 or 0x0303.
	if len(hdr) > 1 && hdr[1] != 3 {
		return fmt.Errorf("%w: record version major %d", bad, hdr[1])
	}
	if len(hdr) > 2 && hdr[2] > 4 {
		return fmt.Errorf("%w: record version 3.%d", bad, hdr[2])
	}
	if len(hdr) >= recordHeaderLen {
		n := int(hdr[3])<<8 | int(hdr[4])
		if n == 0 || n > maxRecordPayload {
			// Zero-length handshake fragments are forbidden (RFC 8446 5.1).
			return fmt.Errorf("%w: record length %d", ErrMalformed, n)
		}
	}
	return nil
}

// handshakeMessage returns the first handshake message (header included) carried by the records at
// the start of data. When the message lies inside the first record it is a sub-slice of data;
// otherwise the fragments are copied into one new buffer.
func handshakeMessage(data []byte) (msg []byte, need int, err error) {
	var (
		hdr      [handshakeHeaderLen]byte // the handshake header, which may itself be split
		hdrN     int                      // bytes of hdr filled
		msgLen   = -1                     // 4 + body length, once known
		streamN  int                      // handshake bytes seen so far
		off      int                      // offset of the current record header in data
		records  int
		overhead int // record header bytes so far
	)
	for {
		rest := data[off:]
		if err := checkRecordHeader(rest, records == 0); err != nil {
			return nil, 0, err
		}
		if len(rest) < recordHeaderLen {
			// A record carries at least one byte (checked above).
			return nil, truncatedNeed(off+recordHeaderLen+1, overhead, msgLen), ErrTruncated
		}
		records++
		overhead += recordHeaderLen
		recLen := int(rest[3])<<8 | int(rest[4])
		frag := rest[recordHeaderLen:]
		complete := len(frag) >= recLen
		if complete {
			frag = frag[:recLen]
		}
		// While the header is incomplete every handshake byte seen so far is in hdr
		// (streamN == hdrN), so the rest of it starts at frag[0].
		for i := 0; hdrN < handshakeHeaderLen && i < len(frag); i++ {
			hdr[hdrN] = frag[i]
			hdrN++
			if hdrN == 1 && hdr[0] != handshakeTypeClientHello { // records are non-empty: this is the first
				return nil, 0, fmt.Errorf("%w: handshake type %d, want %d (client_hello)", ErrNotTLS, hdr[0], handshakeTypeClientHello)
			}
		}
		if hdrN == handshakeHeaderLen && msgLen < 0 {
			body := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
			if body < minHelloBody {
				return nil, 0, fmt.Errorf("%w: client hello length %d", ErrMalformed, body)
			}
			msgLen = handshakeHeaderLen + body
		}
		streamN += len(frag)
		// The hello counts only once the record carrying its end is complete: a record header
		// announcing more than the client sends must not be routed (a TLS server, and Envoy's
		// inspector, read whole records); the caller waits for the rest until its deadline.
		if msgLen >= 0 && streamN >= msgLen && complete {
			if records == 1 {
				return frag[:msgLen], 0, nil
			}
			return gather(data, msgLen), 0, nil
		}
		if !complete {
			return nil, truncatedNeed(off+recordHeaderLen+recLen, overhead, msgLen), ErrTruncated
		}
		off += recordHeaderLen + recLen
	}
}

// truncatedNeed is a lower bound of the bytes the whole hello takes: known, the end of what the
// record framing announces, and, with the message length known, every handshake byte plus the
// record headers seen.
func truncatedNeed(known, overhead, msgLen int) int {
	if msgLen >= 0 {
		return max(known, overhead+msgLen)
	}
	return known
}

// gather copies the first msgLen handshake bytes out of the (already validated) records in data,
// which hold at least that many.
func gather(data []byte, msgLen int) []byte {
	msg := make([]byte, 0, msgLen)
	for off := 0; len(msg) < msgLen; {
		recLen := int(data[off+3])<<8 | int(data[off+4])
		end := min(off+recordHeaderLen+recLen, len(data)) // the last record may be partial
		frag := data[off+recordHeaderLen : end]
		if len(frag) > msgLen-len(msg) {
			frag = frag[:msgLen-len(msg)]
		}
		msg = append(msg, frag...)
		off += recordHeaderLen + recLen
	}
	return msg
}

// helloAlloc puts a Hello and the backing array of a short ALPN list in one allocation.
type helloAlloc struct {
	Hello
	alpn [4]string
}

// parseHelloBody parses a ClientHello body (RFC 8446 4.1.2; the TLS 1.2 form of RFC 5246 7.4.1.2,
// where extensions may be absent, is the same layout).
func parseHelloBody(b cryptobyte.String) (*Hello, error) {
	var (
		vers                     uint16
		sessionID, suites, comps cryptobyte.String
	)
	if !b.ReadUint16(&vers) || !b.Skip(32) ||
		!b.ReadUint8LengthPrefixed(&sessionID) ||
		!b.ReadUint16LengthPrefixed(&suites) ||
		!b.ReadUint8LengthPrefixed(&comps) {
		return nil, fmt.Errorf("%w: short client hello", ErrMalformed)
	}
	if vers>>8 != 3 {
		return nil, fmt.Errorf("%w: client version %#04x", ErrMalformed, vers)
	}
	if len(sessionID) > 32 || len(suites) < 2 || len(suites)%2 != 0 || len(comps) < 1 {
		return nil, fmt.Errorf("%w: bad session id, cipher suites or compression methods", ErrMalformed)
	}
	ha := new(helloAlloc)
	h := &ha.Hello
	if b.Empty() {
		return h, ErrNoSNI // no extensions at all (TLS 1.2 and earlier allow it)
	}
	var exts cryptobyte.String
	if !b.ReadUint16LengthPrefixed(&exts) || !b.Empty() {
		return nil, fmt.Errorf("%w: bad extensions block", ErrMalformed)
	}
	var sawSNI, sawALPN bool
	for !exts.Empty() {
		var (
			typ uint16
			ext cryptobyte.String
		)
		if !exts.ReadUint16(&typ) || !exts.ReadUint16LengthPrefixed(&ext) {
			return nil, fmt.Errorf("%w: bad extension framing", ErrMalformed)
		}
		var err error
		switch typ {
		case extServerName:
			if sawSNI {
				return nil, fmt.Errorf("%w: duplicate server_name extension", ErrMalformed)
			}
			sawSNI = true
			h.ServerName, err = parseServerName(ext)
		case extALPN:
			if sawALPN {
				return nil, fmt.Errorf("%w: duplicate ALPN extension", ErrMalformed)
			}
			sawALPN = true
			h.ALPN, err = parseALPN(ext, ha.alpn[:0])
		}
		if err != nil {
			return nil, err
		}
	}
	if h.ServerName == "" {
		return h, ErrNoSNI
	}
	return h, nil
}

// parseServerName returns the host_name of a server_name extension (RFC 6066 3), or "" when the
// list has no host_name entry.
func parseServerName(ext cryptobyte.String) (string, error) {
	var list cryptobyte.String
	if !ext.ReadUint16LengthPrefixed(&list) || !ext.Empty() || list.Empty() {
		return "", fmt.Errorf("%w: bad server_name extension", ErrMalformed)
	}
	var host []byte
	seen := false
	for !list.Empty() {
		var (
			typ  uint8
			name cryptobyte.String
		)
		if !list.ReadUint8(&typ) || !list.ReadUint16LengthPrefixed(&name) {
			return "", fmt.Errorf("%w: bad server_name list", ErrMalformed)
		}
		if typ != nameTypeHostName {
			continue // other name types are unknown; skip them as RFC 6066 lets servers do
		}
		if seen {
			// "The ServerNameList MUST NOT contain more than one name of the same name_type."
			return "", fmt.Errorf("%w: two host_name entries", ErrMalformed)
		}
		seen = true
		host = name
	}
	if !seen {
		return "", nil
	}
	return normalizeHostName(host)
}

// normalizeHostName checks that b is a DNS host name (letters, digits, '-', '_', non-empty labels
// of at most 63 bytes) and returns it lower-cased without a trailing dot, in one allocation.
// '_' is allowed because Istio's cluster names (outbound_.9080_._.reviews...) carry it.
func normalizeHostName(b []byte) (string, error) {
	if n := len(b); n > 0 && b[n-1] == '.' {
		b = b[:n-1]
	}
	if len(b) == 0 || len(b) > maxHostNameLen {
		return "", fmt.Errorf("%w: server name length %d", ErrMalformed, len(b))
	}
	var buf [maxHostNameLen]byte
	label := 0
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case c == '.':
			if label == 0 {
				return "", fmt.Errorf("%w: server name has an empty label", ErrMalformed)
			}
			label = -1
		default:
			return "", fmt.Errorf("%w: server name has byte %#02x", ErrMalformed, c)
		}
		label++
		if label > 63 {
			return "", fmt.Errorf("%w: server name label longer than 63", ErrMalformed)
		}
		buf[i] = c
	}
	return string(buf[:len(b)]), nil
}

// parseALPN returns the protocol list of an ALPN extension (RFC 7301 3.1), appended to dst.
// Well-known protocols are returned as constants; the others share one allocated string.
func parseALPN(ext cryptobyte.String, dst []string) ([]string, error) {
	var list cryptobyte.String
	if !ext.ReadUint16LengthPrefixed(&list) || !ext.Empty() || list.Empty() {
		return nil, fmt.Errorf("%w: bad ALPN extension", ErrMalformed)
	}
	allKnown := true
	for l := list; !l.Empty(); {
		var p cryptobyte.String
		if !l.ReadUint8LengthPrefixed(&p) || p.Empty() {
			return nil, fmt.Errorf("%w: bad ALPN protocol list", ErrMalformed)
		}
		if knownALPN(p) == "" {
			allKnown = false
		}
	}
	var backing string
	if !allKnown {
		backing = string(list)
	}
	for off := 0; off < len(list); {
		n := int(list[off])
		p := list[off+1 : off+1+n]
		s := knownALPN(p)
		if s == "" {
			s = backing[off+1 : off+1+n]
		}
		dst = append(dst, s)
		off += 1 + n
	}
	return dst, nil
}

// knownALPN returns the constant for a common protocol id, or "".
func knownALPN(p []byte) string {
	switch string(p) {
	case "h2":
		return "h2"
	case "http/1.1":
		return "http/1.1"
	case "http/1.0":
		return "http/1.0"
	case "istio":
		return "istio"
	case "istio-peer-exchange":
		return "istio-peer-exchange"
	case "istio-http/1.0":
		return "istio-http/1.0"
	case "istio-http/1.1":
		return "istio-http/1.1"
	case "istio-h2":
		return "istio-h2"
	case "h3":
		return "h3"
	case "grpc-exp":
		return "grpc-exp"
	}
	return ""
}
