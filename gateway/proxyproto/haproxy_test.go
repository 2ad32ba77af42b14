package proxyproto

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Headers sent by a real HAProxy 2.6 (testdata/haproxy-*.bin, see capture_haproxy.go), each
// followed by the payload its client sent (none for the health check).
func TestReadHAProxyCaptures(t *testing.T) {
	const payload = "\x16\x03\x01\x00\x05hello"
	tests := []struct {
		file     string
		version  int
		command  string
		addrs    bool
		leftover string
	}{
		{"haproxy-v1.bin", 1, "PROXY", true, payload},
		{"haproxy-v2.bin", 2, "PROXY", true, payload},
		{"haproxy-v2-tlvs.bin", 2, "PROXY", true, payload}, // crc32c and unique-id TLVs
		{"haproxy-v2-local.bin", 2, "LOCAL", false, ""},    // health check: LOCAL, AF_UNSPEC
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			in, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			client, server := net.Pipe()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				client.Write(in)
				client.Close()
			}()
			defer func() { server.Close(); wg.Wait() }()
			h, err := Read(server, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if h.Version != tt.version || h.Command != tt.command {
				t.Fatalf("header %+v", h)
			}
			if tt.addrs {
				src, ok1 := h.Source.(*net.TCPAddr)
				dst, ok2 := h.Dest.(*net.TCPAddr)
				if !ok1 || !ok2 || !src.IP.Equal(net.IPv4(127, 0, 0, 1)) || !dst.IP.Equal(net.IPv4(127, 0, 0, 1)) || src.Port == 0 || dst.Port == 0 {
					t.Fatalf("addresses %v -> %v, want loopback with ports", h.Source, h.Dest)
				}
			} else if h.Source != nil || h.Dest != nil {
				t.Fatalf("addresses %v -> %v, want nil", h.Source, h.Dest)
			}
			rest, err := io.ReadAll(server)
			if err != nil || string(rest) != tt.leftover {
				t.Fatalf("after the header: %q, %v; want %q", rest, err, tt.leftover)
			}
		})
	}
}
