package proxyproto

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// bytesConn is a net.Conn reading from a byte slice, for the fuzzer (net.Pipe is too slow).
type bytesConn struct {
	net.Conn // nil: only Read and SetReadDeadline are used
	r        *bytes.Reader
}

func (c *bytesConn) Read(b []byte) (int, error)      { return c.r.Read(b) }
func (c *bytesConn) SetReadDeadline(time.Time) error { return nil }

func FuzzRead(f *testing.F) {
	for _, s := range [][]byte{
		[]byte("PROXY TCP4 192.0.2.1 198.51.100.7 54321 443\r\n"),
		[]byte("PROXY TCP6 2001:db8::1 2001:db8::2 12345 15443\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		v2(0x21, 0x11, ip4Block),
		v2(0x21, 0x21, ip6Block),
		v2(0x21, 0x11, ip4Block, tlv(0x01, "h2"), tlv(0x20, "\x01\x00\x00\x00\x00")),
		v2(0x20, 0x00),
		v2(0x21, 0x12, ip4Block),
	} {
		f.Add(append(s, "\x16\x03\x01"...))
	}
	if files, err := filepath.Glob("testdata/haproxy-*.bin"); err == nil && len(files) == 0 {
		f.Fatal("no HAProxy captures in testdata")
	} else {
		for _, name := range files {
			b, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &bytesConn{r: bytes.NewReader(in)}
		h, err := Read(c, time.Second)
		consumed := len(in) - c.r.Len()
		if err != nil {
			if h != nil {
				t.Fatalf("header %+v with error %v", h, err)
			}
			return
		}
		switch h.Version {
		case 1:
			if consumed > v1MaxLen || !bytes.HasSuffix(in[:consumed], []byte("\r\n")) {
				t.Fatalf("v1 header consumed %d bytes: %q", consumed, in[:consumed])
			}
		case 2:
			if want := v2FixedLen + int(binary.BigEndian.Uint16(in[14:16])); consumed != want {
				t.Fatalf("v2 header consumed %d bytes, want %d", consumed, want)
			}
		default:
			t.Fatalf("version %d", h.Version)
		}
		if (h.Source == nil) != (h.Dest == nil) {
			t.Fatalf("one address nil: %+v", h)
		}
		if h.Source != nil {
			_, ok1 := h.Source.(*net.TCPAddr)
			_, ok2 := h.Dest.(*net.TCPAddr)
			if !ok1 || !ok2 || h.Command != CommandProxy {
				t.Fatalf("bad header %+v", h)
			}
		}
	})
}
