package sni

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrNotIstioName is returned by ParseIstioName for anything that is not an Istio cluster name.
var ErrNotIstioName = errors.New("sni: not an Istio cluster name")

// Direction is the first part of an Istio cluster name.
type Direction string

// Directions. Only outbound names are routable on an east-west gateway; inbound names parse but
// are never routed (Istio's AUTO_PASSTHROUGH routes outbound clusters only; docs/config.md).
const (
	Outbound Direction = "outbound"
	Inbound  Direction = "inbound"
)

// IstioName is an Istio cluster name as used for SNI on port 15443 (AUTO_PASSTHROUGH):
// <direction>_.<port>_.<subset>_.<host>, for example outbound_.9080_.v2_.reviews.default.svc.cluster.local,
// or outbound_.9080_._.reviews.default.svc.cluster.local for the default (empty) subset.
// Istio builds it in model.BuildDNSSrvSubsetKey.
type IstioName struct {
	Direction Direction
	Port      int    // 1..65535
	Subset    string // "" for the default subset, else a DNS-1123 label
	Host      string // a DNS name, lower-case, no trailing dot
}

const istioSep = "_."

// ParseIstioName parses an Istio cluster name. Names are case-insensitive: the result is lower-case,
// and a trailing dot on the host is dropped. Anything else (another direction, a bad port, a subset
// that is not a DNS label, a host that is not a DNS name, missing parts) gives ErrNotIstioName.
func ParseIstioName(s string) (IstioName, error) {
	bad := func(why string) (IstioName, error) {
		return IstioName{}, fmt.Errorf("%w: %q: %s", ErrNotIstioName, s, why)
	}
	ls := strings.ToLower(s) // returns s itself when already lower-case
	dir, rest, ok := strings.Cut(ls, istioSep)
	if !ok {
		return bad("no direction")
	}
	var n IstioName
	switch Direction(dir) {
	case Outbound:
		n.Direction = Outbound
	case Inbound:
		n.Direction = Inbound
	default:
		return bad("direction is neither outbound nor inbound")
	}
	port, rest, ok := strings.Cut(rest, istioSep)
	if !ok {
		return bad("no port")
	}
	p, ok := parsePort(port)
	if !ok {
		return bad("port is not a number in 1..65535")
	}
	n.Port = p
	subset, host, ok := strings.Cut(rest, istioSep)
	if !ok {
		return bad("no subset")
	}
	if subset != "" && !isDNSLabel(subset) {
		return bad("subset is not a DNS label")
	}
	n.Subset = subset
	host = strings.TrimSuffix(host, ".")
	if !isDNSName(host) {
		return bad("host is not a DNS name")
	}
	n.Host = host
	return n, nil
}

// parsePort parses a decimal port in 1..65535 without sign or leading zeros, so that the name
// round-trips.
func parsePort(s string) (int, bool) {
	if len(s) == 0 || len(s) > 5 || s[0] == '0' {
		return 0, false
	}
	p := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		p = p*10 + int(c-'0')
	}
	return p, p <= 65535
}

// String formats n back into the cluster name; ParseIstioName(n.String()) == n for a parsed n.
// Subset and host are lower-cased, so the result compares equal to a Hello.ServerName.
func (n IstioName) String() string {
	return string(n.Direction) + istioSep + strconv.Itoa(n.Port) + istioSep +
		strings.ToLower(n.Subset) + istioSep + strings.ToLower(strings.TrimSuffix(n.Host, "."))
}

// OutboundName returns the outbound cluster name of a service port and subset (empty for the
// default subset), lower-cased: OutboundName(9080, "", "reviews.default.svc.cluster.local") is
// "outbound_.9080_._.reviews.default.svc.cluster.local".
func OutboundName(port int, subset, host string) string {
	return IstioName{Direction: Outbound, Port: port, Subset: subset, Host: host}.String()
}

// IstioALPNs are the ALPN protocols of Istio's mTLS between sidecars. A connection to the
// AUTO_PASSTHROUGH port is accepted only if the client offers one of them; a plain "h2" client does
// not match, which keeps anything but Istio mTLS peers out of the mesh port.
var IstioALPNs = []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}

// HasIstioALPN reports whether alpn contains one of IstioALPNs (exact, case-sensitive match as
// RFC 7301 compares protocol ids byte by byte).
func HasIstioALPN(alpn []string) bool {
	for _, p := range alpn {
		switch p {
		case "istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2":
			return true
		}
	}
	return false
}

// isDNSLabel reports whether s is a DNS-1123 label: 1-63 of [a-z0-9-], not starting or ending
// with '-'. Istio validates subset names this way.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isDNSName reports whether s (lower-case, no trailing dot) is a DNS name of at most 253 bytes
// made of DNS-1123 labels.
func isDNSName(s string) bool {
	if len(s) == 0 || len(s) > maxHostNameLen {
		return false
	}
	for {
		label, rest, more := strings.Cut(s, ".")
		if !isDNSLabel(label) {
			return false
		}
		if !more {
			return true
		}
		s = rest // "a." leaves "", an empty label: rejected above on the next turn
	}
}
