// Command ewgate-demo is the small TLS backend that `make run` puts behind the gateway: it
// makes a self-signed certificate at start and, for every TLS session, says which SNI and ALPN
// reached it. Clients that negotiate an Istio ALPN (openssl s_client -alpn istio) get a
// greeting and an echo of every line they type; HTTP clients (curl) get the greeting as an HTTP
// response.
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:18443", "address to listen on")
	flag.Parse()
	cert, err := selfSigned([]string{"demo.default.svc.cluster.local", "demo.example.com", "*.demo.example.com", "localhost"})
	if err != nil {
		log.Fatal(err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"istio", "istio-peer-exchange", "istio-http/1.1", "istio-h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
	ln, err := tls.Listen("tcp", *addr, cfg)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "ewgate-demo: TLS backend listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c.(*tls.Conn))
	}
}

func serve(c *tls.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	if err := c.Handshake(); err != nil {
		return
	}
	st := c.ConnectionState()
	greeting := fmt.Sprintf("hello from the ewgate demo backend: TLS session with SNI %q, ALPN %q, through the gateway untouched\n",
		st.ServerName, st.NegotiatedProtocol)
	if st.NegotiatedProtocol == "http/1.1" || st.NegotiatedProtocol == "" {
		serveHTTP(c, greeting)
		return
	}
	fmt.Fprint(c, greeting)
	fmt.Fprint(c, "type a line and it comes back\n")
	r := bufio.NewScanner(c)
	for r.Scan() {
		fmt.Fprintf(c, "echo: %s\n", r.Text())
	}
}

func serveHTTP(c net.Conn, body string) {
	r := bufio.NewReader(c)
	if _, err := http.ReadRequest(r); err != nil {
		return
	}
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
}

func selfSigned(names []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0], Organization: []string{"ewgate demo"}},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
