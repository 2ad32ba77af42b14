package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// maxAttempts bounds every attacker loop in count as well as by its window.
const maxAttempts = 1_000_000

// attackCounts is what a flood did, for the report.
type attackCounts struct {
	opened, failed atomic.Int64
}

func (a *attackCounts) String() string {
	return fmt.Sprintf("%d connections opened, %d failed", a.opened.Load(), a.failed.Load())
}

// srcIP is the attacker's loopback source address n (127.0.0.n).
func srcIP(n int) net.IP { return net.IPv4(127, 0, 0, byte(n)) }

func dialFrom(ctx context.Context, src net.IP, addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: timeout}
	return d.DialContext(ctx, "tcp", addr)
}

// clientHello returns the bytes of a real crypto/tls ClientHello for sni and alpn.
func clientHello(sni string, alpn []string) ([]byte, error) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go tls.Client(c1, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c2, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(c2, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}

// workers runs n copies of fn until ctx ends and waits for them.
func workers(ctx context.Context, n int, fn func(ctx context.Context, i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { fn(ctx, i) })
	}
	wg.Wait()
}

// holdUntilClosed blocks until the peer closes c or ctx ends, then closes c.
func holdUntilClosed(ctx context.Context, c net.Conn) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	io.Copy(io.Discard, c)
	c.Close()
}

// floodGarbage: conc connections at a time to the mesh listener, each writing 4 KiB of random
// bytes and waiting for the gateway to close it.
func floodGarbage(ctx context.Context, addr string, conc int, a *attackCounts) {
	junk := make([]byte, 4096)
	rand.Read(junk)
	junk[0] = 0x16 // half of them look like a TLS handshake record, half do not
	workers(ctx, conc, func(ctx context.Context, i int) {
		for n := 0; n < maxAttempts && ctx.Err() == nil; n++ {
			c, err := dialFrom(ctx, srcIP(61), addr, time.Second)
			if err != nil {
				a.failed.Add(1)
				continue
			}
			a.opened.Add(1)
			if i%2 == 0 {
				c.Write(junk)
			} else {
				c.Write(junk[1:])
			}
			c.SetDeadline(time.Now().Add(time.Second))
			holdUntilClosed(ctx, c)
		}
	})
}

// floodSlowloris: up to conns connections to the mesh listener, each sending a real hello one
// byte every interval and never its last byte; a connection the gateway closes is reopened.
func floodSlowloris(ctx context.Context, addr string, conns int, interval time.Duration, a *attackCounts) error {
	hello, err := clientHello(SNI, []string{"istio"})
	if err != nil {
		return err
	}
	workers(ctx, conns, func(ctx context.Context, i int) {
		for n := 0; n < maxAttempts && ctx.Err() == nil; n++ {
			c, err := dialFrom(ctx, srcIP(62), addr, time.Second)
			if err != nil {
				a.failed.Add(1)
				continue
			}
			a.opened.Add(1)
			stop := context.AfterFunc(ctx, func() { c.Close() })
			tick := time.NewTicker(interval)
			for j := 0; j < len(hello)-1; j++ {
				if _, err := c.Write(hello[j : j+1]); err != nil {
					break
				}
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
				if ctx.Err() != nil {
					break
				}
			}
			tick.Stop()
			stop()
			c.Close()
		}
	})
	return nil
}

// floodSlowBackend opens up to conns connections to the ingress listener, each sending a valid
// hello routed to the backend that never answers, spread over sources 127.0.0.10-41 (a flood of
// many clients, so it reaches a listener's connection cap rather than a per-source cap), and
// holds them until ctx ends.
func floodSlowBackend(ctx context.Context, addr string, conns int, a *attackCounts) error {
	hello, err := clientHello(slowHost, []string{"h2", "http/1.1"})
	if err != nil {
		return err
	}
	const sources = 32
	workers(ctx, 16, func(ctx context.Context, w int) {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for k := w; k < conns && ctx.Err() == nil; k += 16 {
			c, err := dialFrom(ctx, srcIP(10+k%sources), addr, time.Second)
			if err != nil {
				a.failed.Add(1)
				continue
			}
			a.opened.Add(1)
			c.Write(hello)
			held = append(held, c)
		}
		<-ctx.Done()
	})
	return nil
}

// floodHalfOpen holds up to conns TCP connections to 15012 from one source that send nothing; a
// connection the gateway closes is reopened.
func floodHalfOpen(ctx context.Context, addr string, conns int, a *attackCounts) {
	workers(ctx, 32, func(ctx context.Context, w int) {
		var mine []net.Conn
		defer func() {
			for _, c := range mine {
				c.Close()
			}
		}()
		for k := w; k < conns && ctx.Err() == nil; k += 32 {
			c, err := dialFrom(ctx, srcIP(50), addr, time.Second)
			if err != nil {
				a.failed.Add(1)
				continue
			}
			a.opened.Add(1)
			mine = append(mine, c)
		}
		<-ctx.Done()
	})
}

// floodHeaders: conns connections to 15012 at a time, each TLS + HTTP/2 and one request whose
// header block (HEADERS + CONTINUATION frames, golang.org/x/net/http2's Framer) carries total
// bytes of header fields before any credential is looked at; a connection the gateway closes is
// reopened.
func floodHeaders(ctx context.Context, addr string, cfg *tls.Config, conns, total int, a *attackCounts) {
	block := headerBlock(addr, total)
	workers(ctx, conns, func(ctx context.Context, i int) {
		for n := 0; n < maxAttempts && ctx.Err() == nil; n++ {
			if err := sendHeaders(ctx, addr, cfg, block); err != nil {
				a.failed.Add(1)
			} else {
				a.opened.Add(1)
			}
		}
	})
}

// headerBlock is the HPACK encoding of a gRPC request to CreateCertificate padded with 16 KiB
// literal fields (never indexed) up to total bytes.
func headerBlock(authority string, total int) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	enc.SetMaxDynamicTableSizeLimit(0)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"}, {Name: ":authority", Value: authority},
		{Name: ":path", Value: "/istio.v1.auth.IstioCertificateService/CreateCertificate"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	} {
		enc.WriteField(f)
	}
	val := strings.Repeat("x", 16<<10)
	for i := 0; buf.Len() < total; i++ {
		enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: val, Sensitive: true})
	}
	return buf.Bytes()
}

// sendHeaders opens one connection, writes the block, and waits until the gateway closes it or
// ctx ends. It fails when the connection ends before the whole block is written (the gateway
// refused it early, or the flood's window closed).
func sendHeaders(ctx context.Context, addr string, cfg *tls.Config, block []byte) error {
	raw, err := dialFrom(ctx, srcIP(51), addr, time.Second)
	if err != nil {
		return err
	}
	c := tls.Client(raw, cfg)
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	defer raw.Close()
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.HandshakeContext(hctx); err != nil {
		return err
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		return err
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { // the gateway's SETTINGS, acks, GOAWAY; ends when the gateway or ctx closes raw
		io.Copy(io.Discard, c)
		close(done)
	}()
	defer func() { raw.Close(); <-done }()
	const frame = 16 << 10
	first := min(frame, len(block))
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:first], EndHeaders: first == len(block)}); err != nil {
		return err
	}
	for off := first; off < len(block); off += frame {
		end := min(off+frame, len(block))
		if err := fr.WriteContinuation(1, end == len(block), block[off:end]); err != nil {
			return err
		}
	}
	// Held open: what the gateway keeps of this request it keeps until it closes the connection.
	<-done
	return nil
}

// floodBadTokens: conc callers from one source, each on its own connection, calling
// CreateCertificate as fast as they can with a well-formed token signed by a key the issuer
// does not have.
func (e *floodEnv) floodBadTokens(ctx context.Context, conc int, a *attackCounts) error {
	wrong, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	bad, err := signToken(wrong)
	if err != nil {
		return err
	}
	workers(ctx, conc, func(ctx context.Context, i int) {
		cc, err := e.vmDial(srcIP(70))
		if err != nil {
			a.failed.Add(1)
			return
		}
		defer cc.Close()
		cli := securityv1alpha1.NewIstioCertificateServiceClient(cc)
		for n := 0; n < 1_000_000 && ctx.Err() == nil; n++ {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			cctx = metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+bad, "ClusterID", floodCluster)
			_, err := cli.CreateCertificate(cctx, &securityv1alpha1.IstioCertificateRequest{Csr: e.csrPEM})
			cancel()
			if err == nil {
				a.failed.Add(1) // accepted: counted, and the table's note shows it
			} else {
				a.opened.Add(1)
			}
		}
	})
	return nil
}
