// Package sni reads the TLS ClientHello at the start of a connection without terminating TLS, so a
// passthrough gateway can route on the server name (SNI, RFC 6066 section 3) and the ALPN protocols
// (RFC 7301) the client offers.
//
// It handles what real clients send: hellos larger than one TCP segment (a post-quantum key share
// makes Chromium's about 1.8 KB), arriving a byte at a time, and split across several TLS records
// (RFC 8446 section 5.1 allows it). Reading is bounded by a size cap and a deadline on the whole hello.
//
// It also knows the names Istio uses as SNI on an east-west gateway (outbound_.<port>_.<subset>_.<fqdn>),
// Istio's mTLS ALPN protocols, and exact/wildcard host patterns.
//
// It does not decrypt anything, verify anything, log, or read configuration; it does not parse
// encrypted ClientHellos (ECH): the outer hello's public name is what it reports.
//
// Typical use on an accepted connection:
//
//	hello, peeked, err := sni.Peek(conn, sni.PeekOptions{})
//	if err != nil {
//		return err // errors.Is(err, sni.ErrTimeout), sni.ErrNotTLS, ...
//	}
//	up, err := dial(hello.ServerName, hello.ALPN)
//	...
//	up.Write(peeked) // forward the hello verbatim, then relay the rest
//
// Errors are sentinels (ErrNotTLS, ErrTooLarge, ErrTruncated, ErrTimeout, ErrNoSNI, ErrMalformed),
// possibly wrapped with detail; test them with errors.Is.
package sni
