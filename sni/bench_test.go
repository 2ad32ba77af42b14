package sni

import (
	"net"
	"testing"
)

func benchmarkParse(b *testing.B, wire []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		h, err := ParseClientHello(wire)
		if err != nil || h.ServerName == "" {
			b.Fatal(h, err)
		}
	}
}

func BenchmarkParseClientHello(b *testing.B) {
	for _, c := range []string{"chromium.bin", "go.bin", "curl.bin"} {
		wire := readCapture(b, c)
		b.Run(c, func(b *testing.B) { benchmarkParse(b, wire) })
	}
	// Chromium's hello split into 100-byte records: the reassembly path.
	wire := frame(handshakeStream(b, readCapture(b, "chromium.bin")), 100)
	b.Run("chromium.bin/records-of-100", func(b *testing.B) { benchmarkParse(b, wire) })
}

// BenchmarkPeek measures Peek over net.Pipe with the hello in one write (goroutine hand-off
// included, so it is an upper bound of the parser's share).
func BenchmarkPeek(b *testing.B) {
	wire := readCapture(b, "chromium.bin")
	client, server := net.Pipe()
	defer server.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := client.Write(wire); err != nil {
				return
			}
		}
	}()
	b.ReportAllocs()
	b.SetBytes(int64(len(wire)))
	for b.Loop() {
		h, _, err := Peek(server, PeekOptions{})
		if err != nil || h.ServerName != "chromium.test" {
			b.Fatal(h, err)
		}
	}
	client.Close()
	<-done
}

func BenchmarkMatchHost(b *testing.B) {
	cases := []struct{ name, pattern, host string }{
		{"exact", "app.example.com", "APP.example.com"},
		{"wildcard", "*.example.com", "a.b.example.com"},
		{"miss", "*.example.com", "a.example.org"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				MatchHost(c.pattern, c.host)
			}
		})
	}
}

func BenchmarkParseIstioName(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseIstioName("outbound_.9080_.v2_.reviews.default.svc.cluster.local"); err != nil {
			b.Fatal(err)
		}
	}
}
