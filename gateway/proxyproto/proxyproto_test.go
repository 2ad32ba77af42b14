package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// v2 builds a v2 header: verCmd byte, family/protocol byte, then body.
func v2(verCmd, famProto byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	out := append([]byte{}, v2Sig...)
	out = append(out, verCmd, famProto)
	out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
	return append(out, b...)
}

func tlv(typ byte, val string) []byte {
	return append(binary.BigEndian.AppendUint16([]byte{typ}, uint16(len(val))), val...)
}

var (
	ip4Block = []byte{192, 0, 2, 1, 198, 51, 100, 7, 0xd4, 0x31, 0x01, 0xbb} // 192.0.2.1:54321 -> 198.51.100.7:443
	ip6Block = append(append(append([]byte{},
		net.ParseIP("2001:db8::1")...), net.ParseIP("2001:db8::2")...), 0x30, 0x39, 0x3b, 0x9b) // :12345 -> :15259
)

// The bytes that follow the header in every case: they must be left unread.
const after = "\x16\x03\x01 the TLS hello that follows"

type want struct {
	version  int
	command  string
	src, dst string // "" for nil
}

func TestRead(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		want    want
		wantErr error
	}{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.1 198.51.100.7 54321 443\r\n"), want{1, "PROXY", "192.0.2.1:54321", "198.51.100.7:443"}, nil},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 12345 15443\r\n"), want{1, "PROXY", "[2001:db8::1]:12345", "[2001:db8::2]:15443"}, nil},
		{"v1 tcp6 v4-mapped", []byte("PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n"), want{1, "PROXY", "192.0.2.1:1", "[::1]:2"} /* net.IP prints a v4-mapped address as IPv4 */, nil},
		{"v1 port 0 and max", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n"), want{1, "PROXY", "1.2.3.4:0", "5.6.7.8:65535"}, nil},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), want{1, "PROXY", "", ""}, nil},
		{"v1 unknown with addresses", []byte("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"), want{1, "PROXY", "", ""}, nil},
		{"v1 longest", []byte("PROXY UNKNOWN " + strings.Repeat("x", 107-16) + "\r\n"), want{1, "PROXY", "", ""}, nil},
		{"v1 too long", []byte("PROXY UNKNOWN " + strings.Repeat("x", 107-15) + "\r\n"), want{}, ErrTooLarge},
		{"v1 no crlf", []byte("PROXY TCP4 " + strings.Repeat("1", 200)), want{}, ErrTooLarge},
		{"v1 lf only", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), want{}, ErrMalformed},
		{"v1 tcp4 with v6 address", []byte("PROXY TCP4 ::1 ::1 1 2\r\n"), want{}, ErrMalformed},
		{"v1 tcp6 with v4 address", []byte("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), want{}, ErrMalformed},
		{"v1 zone", []byte("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"), want{}, ErrMalformed},
		{"v1 bad address", []byte("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), want{}, ErrMalformed},
		{"v1 port too big", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), want{}, ErrMalformed},
		{"v1 port leading zero", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"), want{}, ErrMalformed},
		{"v1 port sign", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n"), want{}, ErrMalformed},
		{"v1 missing port", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n"), want{}, ErrMalformed},
		{"v1 extra field", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 80 81 82\r\n"), want{}, ErrMalformed},
		{"v1 double space", []byte("PROXY TCP4  1.2.3.4 5.6.7.8 80 81\r\n"), want{}, ErrMalformed},
		{"v1 udp", []byte("PROXY UDP4 1.2.3.4 5.6.7.8 80 81\r\n"), want{}, ErrMalformed},
		{"v1 lower case", []byte("proxy TCP4 1.2.3.4 5.6.7.8 80 81\r\n"), want{}, ErrNotProxy},
		{"v1 empty", []byte("PROXY \r\n"), want{}, ErrMalformed},

		{"v2 proxy tcp4", v2(0x21, 0x11, ip4Block), want{2, "PROXY", "192.0.2.1:54321", "198.51.100.7:443"}, nil},
		{"v2 proxy tcp6", v2(0x21, 0x21, ip6Block), want{2, "PROXY", "[2001:db8::1]:12345", "[2001:db8::2]:15259"}, nil},
		{"v2 proxy tcp4 with tlvs", v2(0x21, 0x11, ip4Block, tlv(0x01, "h2"), tlv(0x04, ""), tlv(0x30, "ns"), tlv(0xea, strings.Repeat("v", 300))), want{2, "PROXY", "192.0.2.1:54321", "198.51.100.7:443"}, nil},
		{"v2 local", v2(0x20, 0x00), want{2, "LOCAL", "", ""}, nil},
		{"v2 local with addresses", v2(0x20, 0x11, ip4Block), want{2, "LOCAL", "", ""}, nil},
		{"v2 local unix", v2(0x20, 0x31, make([]byte, 216)), want{2, "LOCAL", "", ""}, nil},
		{"v2 proxy unspec", v2(0x21, 0x00, []byte{1, 2, 3}), want{2, "PROXY", "", ""}, nil},
		{"v2 udp4", v2(0x21, 0x12, ip4Block), want{}, ErrUnsupported},
		{"v2 udp6", v2(0x21, 0x22, ip6Block), want{}, ErrUnsupported},
		{"v2 unix stream", v2(0x21, 0x31, make([]byte, 216)), want{}, ErrUnsupported},
		{"v2 inet unspec transport", v2(0x21, 0x10, ip4Block), want{}, ErrUnsupported},
		{"v2 bad family", v2(0x21, 0x41, ip4Block), want{}, ErrMalformed},
		{"v2 bad transport", v2(0x21, 0x13, ip4Block), want{}, ErrMalformed},
		{"v2 bad version", v2(0x11, 0x11, ip4Block), want{}, ErrMalformed},
		{"v2 bad command", v2(0x22, 0x11, ip4Block), want{}, ErrMalformed},
		{"v2 short addresses", v2(0x21, 0x11, ip4Block[:11]), want{}, ErrMalformed},
		{"v2 tcp6 with v4 length", v2(0x21, 0x21, ip4Block), want{}, ErrMalformed},
		{"v2 tlv truncated", v2(0x21, 0x11, ip4Block, []byte{1, 0}), want{}, ErrMalformed},
		{"v2 tlv overruns", v2(0x21, 0x11, ip4Block, []byte{1, 0, 5, 'a'}), want{}, ErrMalformed},
		{"v2 too large", v2(0x21, 0x11, ip4Block, make([]byte, MaxV2Len)), want{}, ErrTooLarge},
		{"v2 bad signature", append([]byte("\r\n\r\n\x00\r\nQUIT!"), 0x21, 0x11, 0, 0), want{}, ErrNotProxy},

		{"tls hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00}, want{}, ErrNotProxy},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n"), want{}, ErrNotProxy},
		{"http post", []byte("POST / HTTP/1.1\r\n\r\n"), want{}, ErrNotProxy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				client.Write(append(tt.in[:len(tt.in):len(tt.in)], after...))
				client.Close()
			}()
			defer func() { server.Close(); wg.Wait() }() // Close unblocks a writer we stopped reading
			h, err := Read(server, time.Minute)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			checkHeader(t, h, tt.want)
			rest, err := io.ReadAll(server)
			if err != nil || string(rest) != after {
				t.Fatalf("bytes after the header: %q, %v; want %q (over-read?)", rest, err, after)
			}
		})
	}
}

func checkHeader(t *testing.T, h *Header, w want) {
	t.Helper()
	if h.Version != w.version || h.Command != w.command {
		t.Fatalf("header %+v, want version %d command %s", h, w.version, w.command)
	}
	for _, a := range []struct {
		got  net.Addr
		want string
	}{{h.Source, w.src}, {h.Dest, w.dst}} {
		if a.want == "" {
			if a.got != nil {
				t.Fatalf("address %v, want nil", a.got)
			}
			continue
		}
		if _, ok := a.got.(*net.TCPAddr); !ok || a.got.String() != a.want {
			t.Fatalf("address %#v, want *net.TCPAddr %s", a.got, a.want)
		}
	}
}

// Headers delivered one byte per Write are read the same.
func TestReadByteAtATime(t *testing.T) {
	for _, in := range [][]byte{
		[]byte("PROXY TCP4 192.0.2.1 198.51.100.7 54321 443\r\n"),
		v2(0x21, 0x11, ip4Block, tlv(0x02, "authority")),
	} {
		client, server := net.Pipe()
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, b := range append(in[:len(in):len(in)], after...) {
				if _, err := client.Write([]byte{b}); err != nil {
					return
				}
			}
			client.Close()
		}()
		h, err := Read(server, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		checkHeader(t, h, want{h.Version, "PROXY", "192.0.2.1:54321", "198.51.100.7:443"})
		rest, err := io.ReadAll(server)
		if err != nil || string(rest) != after {
			t.Fatalf("rest %q, %v", rest, err)
		}
		server.Close()
		wg.Wait()
	}
}

func TestReadErrors(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		close   bool
		wantErr []error
	}{
		{"eof before anything", nil, true, []error{ErrTruncated}},
		{"eof in v1", []byte("PROXY TCP4 1.2"), true, []error{ErrTruncated}},
		{"eof in v2 fixed part", v2(0x21, 0x11, ip4Block)[:10], true, []error{ErrTruncated}},
		{"eof in v2 addresses", v2(0x21, 0x11, ip4Block)[:20], true, []error{ErrTruncated}},
		{"stalled v1", []byte("PROXY TCP4 1.2"), false, []error{ErrTimeout, os.ErrDeadlineExceeded}},
		{"stalled v2", v2(0x21, 0x11, ip4Block)[:20], false, []error{ErrTimeout, os.ErrDeadlineExceeded}},
		{"stalled before anything", nil, false, []error{ErrTimeout}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				client.Write(tt.in)
				if tt.close {
					client.Close()
				}
			}()
			defer func() { server.Close(); client.Close(); wg.Wait() }()
			_, err := Read(server, 30*time.Millisecond)
			for _, w := range tt.wantErr {
				if !errors.Is(err, w) {
					t.Fatalf("err = %v, want %v", err, w)
				}
			}
		})
	}
}

// Read clears the deadline it set, so the caller's later reads are not cut short.
func TestReadClearsDeadline(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		client.Write([]byte("PROXY UNKNOWN\r\n"))
		client.Close()
	}()
	dc := &deadlineConn{Conn: server}
	if _, err := Read(dc, time.Hour); err != nil {
		t.Fatal(err)
	}
	if len(dc.deadlines) != 2 || dc.deadlines[0].Before(time.Now().Add(59*time.Minute)) || !dc.deadlines[1].IsZero() {
		t.Fatalf("deadlines %v, want about an hour from now then zero", dc.deadlines)
	}
	// No timeout: no deadline at all.
	c2, s2 := net.Pipe()
	defer s2.Close()
	go func() {
		c2.Write([]byte("PROXY UNKNOWN\r\n"))
		c2.Close()
	}()
	dc2 := &deadlineConn{Conn: s2}
	if _, err := Read(dc2, 0); err != nil || len(dc2.deadlines) != 0 {
		t.Fatalf("timeout 0: %v, deadlines %v", err, dc2.deadlines)
	}
}

type deadlineConn struct {
	net.Conn
	deadlines []time.Time
}

func (c *deadlineConn) SetReadDeadline(d time.Time) error {
	c.deadlines = append(c.deadlines, d)
	return c.Conn.SetReadDeadline(d)
}
