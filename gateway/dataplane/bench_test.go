package dataplane

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewgate/ewgate/sni"
)

func BenchmarkRouteMesh10k(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("listeners: [{name: mesh, kind: mesh, address: 127.0.0.1:0}]\nclusters:\n")
	for i := range 10000 {
		fmt.Fprintf(&sb, "  - {name: %s, listener: mesh, endpoints: [{address: 10.0.0.1:%d}]}\n",
			sni.OutboundName(8000+i%1000, "", fmt.Sprintf("svc%d.ns.svc.cluster.local", i)), 1000+i%60000)
	}
	f, err := parseConfig([]byte(sb.String()), "bench.yaml")
	if err != nil {
		b.Fatal(err)
	}
	s := buildSnapshot(f, nil, &states{}, 1, time.Now())
	t := s.Table("mesh")
	h := &sni.Hello{ServerName: sni.OutboundName(8777, "", "svc7777.ns.svc.cluster.local"), ALPN: []string{"istio"}}
	b.ReportAllocs()
	for b.Loop() {
		if c, err := t.Route(h, netip.Addr{}); err != nil || c == nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxyThroughput measures the relay alone: one connection through the gateway to a
// backend that discards, 1 MiB per op. The client sends a real ClientHello first, then raw
// bytes (the gateway never decrypts, so they need not be TLS records).
func BenchmarkProxyThroughput(b *testing.B) {
	var received atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	g := startGateway(b, meshYAML("", cluster(reviews, "mesh", "round_robin", ln.Addr().String())))
	c, err := net.Dial("tcp", g.addr("mesh"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	hello := helloBytes(b, reviews, []string{"istio"})
	if _, err := c.Write(hello); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	b.SetBytes(int64(len(chunk)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	want := int64(len(hello)) + int64(b.N)*int64(len(chunk))
	for deadline := time.Now().Add(30 * time.Second); received.Load() < want; {
		if time.Now().After(deadline) {
			b.Fatalf("backend got %d of %d bytes", received.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
}

// BenchmarkConnection measures one connection's whole life through the gateway, one at a time:
// accept, peek, route, dial, the hello relayed to an echoing backend and back, both ends
// closed. It is the per-connection path that BenchmarkProxyThroughput (one connection) leaves
// out.
func BenchmarkConnection(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var echoes sync.WaitGroup
	echoes.Add(1)
	go func() {
		defer echoes.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			echoes.Add(1)
			go func() {
				defer echoes.Done()
				io.Copy(c, c) // until the client's EOF, relayed by the gateway
				c.Close()
			}()
		}
	}()
	defer func() {
		ln.Close()
		echoes.Wait()
	}()
	g := startGateway(b, meshYAML("", cluster(reviews, "mesh", "round_robin", ln.Addr().String())))
	hello := helloBytes(b, reviews, []string{"istio"})
	got := make([]byte, len(hello)+1)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", g.addr("mesh"))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(hello); err != nil {
			b.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, err := io.ReadFull(c, got)
		if n != len(hello) || !errors.Is(err, io.ErrUnexpectedEOF) {
			b.Fatalf("read %d of the %d bytes echoed, then %v (want EOF)", n, len(hello), err)
		}
		c.Close()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
}
