package sni

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseClientHello(t *testing.T) {
	longLabel := strings.Repeat("a", 63)
	tooLongLabel := strings.Repeat("a", 64)
	longName := strings.Repeat(longLabel+".", 3) + strings.Repeat("b", 61) // 253 bytes
	tests := []struct {
		name     string
		wire     []byte
		wantSNI  string
		wantALPN []string
		wantErr  error
	}{
		{
			name:     "sni and alpn",
			wire:     record(buildHello(t, helloSpec{exts: []ext{sniExt("app.example.com"), alpnExt("h2", "http/1.1")}})),
			wantSNI:  "app.example.com",
			wantALPN: []string{"h2", "http/1.1"},
		},
		{
			name:     "istio name and alpn",
			wire:     record(buildHello(t, helloSpec{exts: []ext{alpnExt("istio-peer-exchange", "istio"), sniExt("outbound_.9080_._.reviews.default.svc.cluster.local")}})),
			wantSNI:  "outbound_.9080_._.reviews.default.svc.cluster.local",
			wantALPN: []string{"istio-peer-exchange", "istio"},
		},
		{
			name:     "unknown alpn protocols keep order",
			wire:     record(buildHello(t, helloSpec{exts: []ext{sniExt("a.test"), alpnExt("foo", "h2", "spdy/3.1", "x", "y")}})),
			wantSNI:  "a.test",
			wantALPN: []string{"foo", "h2", "spdy/3.1", "x", "y"},
		},
		{
			name:    "upper case and trailing dot normalised",
			wire:    record(buildHello(t, helloSpec{exts: []ext{sniExt("App.Example.COM.")}})),
			wantSNI: "app.example.com",
		},
		{
			name:    "longest name",
			wire:    record(buildHello(t, helloSpec{exts: []ext{sniExt(longName)}})),
			wantSNI: longName,
		},
		{
			name:    "unknown name type skipped",
			wire:    record(buildHello(t, helloSpec{exts: []ext{{extServerName, []byte{0, 8, 7, 0, 1, 'x', 0, 0, 1, 'a'}}}})),
			wantSNI: "a",
		},
		{
			name:    "unknown extensions skipped",
			wire:    record(buildHello(t, helloSpec{sessionID: make([]byte, 32), exts: []ext{{0xfafa, nil}, {43, []byte{2, 3, 4}}, sniExt("x.test")}})),
			wantSNI: "x.test",
		},
		{
			name:    "hello split into 1-byte records",
			wire:    frame(buildHello(t, helloSpec{exts: []ext{sniExt("split.test"), alpnExt("istio")}}), 1),
			wantSNI: "split.test", wantALPN: []string{"istio"},
		},
		{
			name:    "hello followed by other bytes",
			wire:    append(record(buildHello(t, helloSpec{exts: []ext{sniExt("x.test")}})), 20, 3, 3, 0, 1, 1),
			wantSNI: "x.test",
		},
		{name: "no extensions", wire: record(buildHello(t, helloSpec{noExtsLen: true})), wantErr: ErrNoSNI},
		{name: "no sni", wire: record(buildHello(t, helloSpec{exts: []ext{alpnExt("h2")}})), wantErr: ErrNoSNI, wantALPN: []string{"h2"}},
		{name: "only other name types", wire: record(buildHello(t, helloSpec{exts: []ext{{extServerName, []byte{0, 4, 7, 0, 1, 'x'}}}})), wantErr: ErrNoSNI},

		{name: "empty", wire: nil, wantErr: ErrTruncated},
		{name: "plain http", wire: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), wantErr: ErrNotTLS},
		{name: "one byte of http", wire: []byte("G"), wantErr: ErrNotTLS},
		{name: "sslv2 hello", wire: []byte{0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15}, wantErr: ErrNotTLS},
		{name: "alert record", wire: []byte{21, 3, 1, 0, 2, 2, 40}, wantErr: ErrNotTLS},
		{name: "bad record major", wire: []byte{22, 2, 0}, wantErr: ErrNotTLS},
		{name: "bad record minor", wire: []byte{22, 3, 9}, wantErr: ErrNotTLS},
		{name: "server hello", wire: record(append([]byte{2}, buildHello(t, helloSpec{})[1:]...)), wantErr: ErrNotTLS},
		{name: "zero-length record", wire: []byte{22, 3, 1, 0, 0}, wantErr: ErrMalformed},
		{name: "oversized record", wire: []byte{22, 3, 1, 0x40, 1}, wantErr: ErrMalformed},
		{name: "tiny hello length", wire: []byte{22, 3, 1, 0, 4, 1, 0, 0, 0}, wantErr: ErrMalformed},
		{
			name:    "second record not handshake",
			wire:    append(frame(buildHello(t, helloSpec{exts: []ext{sniExt("x.test")}})[:10], 10), 23, 3, 3, 0, 1, 0),
			wantErr: ErrMalformed,
		},
		{name: "bad client version", wire: record(buildHello(t, helloSpec{version: 0x0200})), wantErr: ErrMalformed},
		{name: "session id too long", wire: record(buildHello(t, helloSpec{sessionID: make([]byte, 33)})), wantErr: ErrMalformed},
		{name: "duplicate sni extension", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a.test"), sniExt("b.test")}})), wantErr: ErrMalformed},
		{name: "duplicate alpn extension", wire: record(buildHello(t, helloSpec{exts: []ext{alpnExt("h2"), alpnExt("h2")}})), wantErr: ErrMalformed},
		{name: "two host names", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a.test", "b.test")}})), wantErr: ErrMalformed},
		{name: "empty sni list", wire: record(buildHello(t, helloSpec{exts: []ext{{extServerName, []byte{0, 0}}}})), wantErr: ErrMalformed},
		{name: "empty sni extension", wire: record(buildHello(t, helloSpec{exts: []ext{{extServerName, nil}}})), wantErr: ErrMalformed},
		{name: "sni with trailing bytes", wire: record(buildHello(t, helloSpec{exts: []ext{{extServerName, append(sniExt("a.test").data, 0)}}})), wantErr: ErrMalformed},
		{name: "empty host name", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("")}})), wantErr: ErrMalformed},
		{name: "host name only a dot", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt(".")}})), wantErr: ErrMalformed},
		{name: "host name with NUL", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a.test\x00.evil")}})), wantErr: ErrMalformed},
		{name: "host name with space", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a b.test")}})), wantErr: ErrMalformed},
		{name: "host name with slash", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a/b.test")}})), wantErr: ErrMalformed},
		{name: "host name with utf-8", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("bücher.test")}})), wantErr: ErrMalformed},
		{name: "host name empty label", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a..test")}})), wantErr: ErrMalformed},
		{name: "host name leading dot", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt(".a.test")}})), wantErr: ErrMalformed},
		{name: "host name label too long", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt(tooLongLabel + ".test")}})), wantErr: ErrMalformed},
		{name: "host name too long", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt(longName + "b")}})), wantErr: ErrMalformed},
		{name: "empty alpn list", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a.test"), {extALPN, []byte{0, 0}}}})), wantErr: ErrMalformed},
		{name: "empty alpn protocol", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a.test"), alpnExt("h2", "")}})), wantErr: ErrMalformed},
		{name: "alpn overruns", wire: record(buildHello(t, helloSpec{exts: []ext{sniExt("a.test"), {extALPN, []byte{0, 3, 5, 'h', '2'}}}})), wantErr: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseClientHello(tt.wire)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == ErrNoSNI && (h == nil || !slices.Equal(h.ALPN, tt.wantALPN)) {
					t.Fatalf("with ErrNoSNI got hello %+v, want ALPN %q", h, tt.wantALPN)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if h.ServerName != tt.wantSNI || !slices.Equal(h.ALPN, tt.wantALPN) {
				t.Fatalf("got %q %q, want %q %q", h.ServerName, h.ALPN, tt.wantSNI, tt.wantALPN)
			}
		})
	}
}

// A byte after the extensions block but inside the handshake message is malformed.
func TestParseClientHelloTrailingByte(t *testing.T) {
	msg := append(buildHello(t, helloSpec{exts: []ext{sniExt("a.test")}}), 0)
	// Fix the 24-bit length so that the extra byte is inside the message.
	n := len(msg) - handshakeHeaderLen
	msg[1], msg[2], msg[3] = byte(n>>16), byte(n>>8), byte(n)
	if _, err := ParseClientHello(record(msg)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("trailing byte after extensions: err = %v, want ErrMalformed", err)
	}
}

// Every strict prefix of a valid hello, however framed, is ErrTruncated (never another error), and
// the need it reports never exceeds the real size.
func TestParseClientHelloPrefixes(t *testing.T) {
	msg := buildHello(t, helloSpec{exts: []ext{sniExt("prefix.test"), alpnExt("istio", "h2")}})
	for _, size := range []int{1, 2, 3, 4, 5, 7, 64, len(msg)} {
		wire := frame(msg, size)
		for i := 0; i < len(wire); i++ {
			_, need, err := parse(wire[:i])
			if err != ErrTruncated {
				t.Fatalf("records of %d, prefix %d/%d: err = %v, want bare ErrTruncated", size, i, len(wire), err)
			}
			if need <= i || need > len(wire) {
				t.Fatalf("records of %d, prefix %d/%d: need = %d, want in (%d, %d]", size, i, len(wire), need, i, len(wire))
			}
		}
		h, err := ParseClientHello(wire)
		if err != nil || h.ServerName != "prefix.test" {
			t.Fatalf("records of %d: full hello: %v %v", size, h, err)
		}
	}
}

// A hello from crypto/tls, re-framed into records of every size from 1 byte up, parses the same.
func TestParseClientHelloReframed(t *testing.T) {
	wire := goHello(t, "reframe.example.com", []string{"istio-h2", "h2"})
	msg := handshakeStream(t, wire)
	for size := 1; size <= len(msg); size += 1 + size/4 {
		h, err := ParseClientHello(frame(msg, size))
		if err != nil {
			t.Fatalf("records of %d: %v", size, err)
		}
		if h.ServerName != "reframe.example.com" || !slices.Equal(h.ALPN, []string{"istio-h2", "h2"}) {
			t.Fatalf("records of %d: got %+v", size, h)
		}
	}
}

// The parser must not retain or modify its input.
func TestParseClientHelloDoesNotModifyInput(t *testing.T) {
	wire := frame(buildHello(t, helloSpec{exts: []ext{sniExt("MiXeD.Test"), alpnExt("odd-proto")}}), 9)
	orig := bytes.Clone(wire)
	h, err := ParseClientHello(wire)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(wire, orig) {
		t.Fatal("input modified")
	}
	clear(wire)
	if h.ServerName != "mixed.test" || !slices.Equal(h.ALPN, []string{"odd-proto"}) {
		t.Fatalf("result aliases the input: %+v", h)
	}
}

// A hello is complete only with the record that carries its end: a record header announcing more
// than was sent is a truncated hello (ErrTruncated, with the record's end as the need), never
// a parsed one that the gateway would route.
func TestParseClientHelloIncompleteRecord(t *testing.T) {
	msg := buildHello(t, helloSpec{exts: []ext{sniExt("a.test")}})
	for _, extra := range []int{1, 100, maxRecordPayload - len(msg)} {
		n := len(msg) + extra
		wire := append([]byte{recordTypeHandshake, 3, 1, byte(n >> 8), byte(n)}, msg...)
		_, need, err := parse(wire)
		if err != ErrTruncated || need != recordHeaderLen+n {
			t.Fatalf("record of %d carrying a %d-byte hello: err = %v, need %d; want ErrTruncated, need %d", n, len(msg), err, need, recordHeaderLen+n)
		}
		h, err := ParseClientHello(append(wire, make([]byte, extra)...))
		if err != nil || h.ServerName != "a.test" {
			t.Fatalf("record of %d, completed: %v %v", n, h, err)
		}
	}
	// Split over records, the last one incomplete.
	wire := frame(msg, 40)
	last := len(wire) - (len(msg)%40 + recordHeaderLen)
	if len(msg)%40 == 0 {
		t.Fatalf("hello of %d bytes: pick another record size", len(msg))
	}
	n := len(msg)%40 + 7
	wire[last+3], wire[last+4] = byte(n>>8), byte(n)
	if _, _, err := parse(wire); err != ErrTruncated {
		t.Fatalf("last of several records incomplete: err = %v, want ErrTruncated", err)
	}
}
