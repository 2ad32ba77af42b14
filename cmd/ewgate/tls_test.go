package main

import (
	"crypto/tls"
	"net"
)

// tlsClient is a mesh-style client: Istio ALPN and an outbound_ SNI. The demo backend's
// certificate is self-signed, so it is not verified here; the gateway tests verify chains.
func tlsClient(c net.Conn, sni string) *tls.Conn {
	return tls.Client(c, &tls.Config{ServerName: sni, NextProtos: []string{"istio"}, InsecureSkipVerify: true})
}
