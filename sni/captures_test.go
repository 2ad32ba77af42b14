package sni

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// captures are ClientHellos recorded from real clients (testdata/README.md says how), each as it
// came on the wire, from the first record header.
var captures = []struct {
	file string
	sni  string
	alpn []string
}{
	{"go.bin", "outbound_.9080_._.reviews.default.svc.cluster.local", []string{"istio-peer-exchange", "istio"}},
	{"openssl-tls12.bin", "api.example.com", []string{"istio", "h2"}},
	{"openssl-tls13.bin", "outbound_.8080_.v1_.ratings.default.svc.cluster.local", []string{"istio"}},
	{"curl.bin", "curl.example.com", []string{"h2", "http/1.1"}},
	{"gnutls-cli.bin", "gnutls.example.com", []string{"istio-h2", "h2"}}, // sent as GnuTLS.Example.com
	{"chromium.bin", "chromium.test", []string{"h2", "http/1.1"}},
}

func readCapture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCaptures(t *testing.T) {
	files, err := filepath.Glob("testdata/*.bin")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(captures) {
		t.Fatalf("testdata has %d captures, the table %d: keep them in step", len(files), len(captures))
	}
	for _, c := range captures {
		t.Run(c.file, func(t *testing.T) {
			wire := readCapture(t, c.file)
			check := func(how string, h *Hello, err error) {
				t.Helper()
				if err != nil {
					t.Fatalf("%s: %v", how, err)
				}
				if h.ServerName != c.sni || !slices.Equal(h.ALPN, c.alpn) {
					t.Fatalf("%s: got %q %q, want %q %q", how, h.ServerName, h.ALPN, c.sni, c.alpn)
				}
			}
			h, err := ParseClientHello(wire)
			check("as captured", h, err)

			// Re-framed into small records, as RFC 8446 5.1 allows.
			msg := handshakeStream(t, wire)
			for _, size := range []int{1, 7, 100, 512} {
				h, err := ParseClientHello(frame(msg, size))
				check("records of "+strconv.Itoa(size), h, err)
			}
			// Every strict prefix is ErrTruncated.
			for i := range wire {
				if _, err := ParseClientHello(wire[:i]); !errors.Is(err, ErrTruncated) {
					t.Fatalf("prefix %d: err = %v, want ErrTruncated", i, err)
				}
			}
			// Over a pipe, one byte at a time, re-framed in 50-byte records.
			split := frame(msg, 50)
			client, server := net.Pipe()
			defer server.Close()
			feed(t, client, false, bytewise(split)...)
			h, peeked, err := Peek(server, PeekOptions{})
			check("peek one byte at a time", h, err)
			if string(peeked) != string(split) {
				t.Fatalf("peeked %d bytes, want %d", len(peeked), len(split))
			}
		})
	}
}
