package sni

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// feed writes chunks to c in order, each with its own Write, from a goroutine the test waits for.
// It closes c afterwards when closeAfter is set. Write errors (the reader closed) end it quietly.
func feed(t *testing.T, c net.Conn, closeAfter bool, chunks ...[]byte) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, b := range chunks {
			if _, err := c.Write(b); err != nil {
				return
			}
		}
		if closeAfter {
			c.Close()
		}
	}()
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
}

// bytewise splits b into one-byte chunks.
func bytewise(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

func TestPeek(t *testing.T) {
	goWire := goHello(t, "peek.example.com", []string{"istio", "h2"})
	msg := handshakeStream(t, goWire)
	split := frame(msg, 100)
	tail := []byte("after the hello")
	big := buildHello(t, helloSpec{exts: []ext{sniExt("big.test"), {0xff01, make([]byte, 3000)}}})
	small := buildHello(t, helloSpec{exts: []ext{sniExt("a.test")}})
	if len(small) > 150 || len(frame(small, 1)) <= 200 {
		t.Fatalf("small hello is %d bytes", len(small))
	}
	noSNI := record(buildHello(t, helloSpec{exts: []ext{alpnExt("h2")}}))
	// A record whose header announces 100 bytes more than the hello it carries: the hello
	// parses, but the record never completes unless the rest comes.
	long := append([]byte{recordTypeHandshake, 3, 1, byte((len(small) + 100) >> 8), byte(len(small) + 100)}, small...)
	longDone := append(slices.Clone(long), make([]byte, 100)...)

	tests := []struct {
		name    string
		chunks  [][]byte
		close   bool // writer closes after the chunks
		opts    PeekOptions
		wantErr error
		wantSNI string
		// wantPeeked is what Peek must return; nil means "all the chunks".
		wantPeeked []byte
	}{
		{name: "one write", chunks: [][]byte{goWire}, wantSNI: "peek.example.com"},
		{name: "one byte at a time", chunks: bytewise(goWire), wantSNI: "peek.example.com"},
		{name: "split records", chunks: [][]byte{split}, wantSNI: "peek.example.com"},
		{name: "split records one byte at a time", chunks: bytewise(split), wantSNI: "peek.example.com"},
		{name: "1-byte records", chunks: [][]byte{frame(msg, 1)}, wantSNI: "peek.example.com", opts: PeekOptions{MaxSize: 64 << 10}},
		{name: "hello and more in one write", chunks: [][]byte{append(slices.Clone(goWire), tail...)}, wantSNI: "peek.example.com"},
		{name: "bigger than the first buffer", chunks: [][]byte{record(big)}, wantSNI: "big.test"},
		{name: "given buffer", chunks: [][]byte{append(slices.Clone(goWire), tail...)}, opts: PeekOptions{Buf: make([]byte, 4<<10)}, wantSNI: "peek.example.com"},
		{name: "given buffer too small", chunks: bytewise(goWire), opts: PeekOptions{Buf: make([]byte, 8)}, wantSNI: "peek.example.com"},
		{name: "given buffer over the cap", chunks: [][]byte{record(big)}, opts: PeekOptions{MaxSize: 1024, Buf: make([]byte, 4<<10)}, wantErr: ErrTooLarge, wantPeeked: record(big)[:1024]},
		{name: "exactly at the cap", chunks: [][]byte{goWire}, opts: PeekOptions{MaxSize: len(goWire)}, wantSNI: "peek.example.com"},
		{
			name: "announced length over the cap", chunks: [][]byte{record(big)}, opts: PeekOptions{MaxSize: 1024},
			wantErr: ErrTooLarge, wantPeeked: record(big)[:1024],
		},
		{
			// The handshake header arrives in the 4th 1-byte record: its length alone exceeds the cap.
			name: "announced length over the cap, 1-byte records", chunks: bytewise(frame(msg, 1)), opts: PeekOptions{MaxSize: 200},
			wantErr: ErrTooLarge, wantPeeked: frame(msg, 1)[:4*6],
		},
		{
			// Small hello, but the record overhead of 1-byte records takes it over the cap.
			name: "cap reached", chunks: [][]byte{frame(small, 1)}, opts: PeekOptions{MaxSize: 200},
			wantErr: ErrTooLarge, wantPeeked: frame(small, 1)[:200],
		},
		{name: "plain http", chunks: [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n")}, wantErr: ErrNotTLS},
		{name: "plain http byte at a time", chunks: bytewise([]byte("GET /")), wantErr: ErrNotTLS, wantPeeked: []byte("G")},
		{name: "no sni", chunks: [][]byte{noSNI}, wantErr: ErrNoSNI},
		{name: "truncated", chunks: [][]byte{goWire[:100]}, close: true, wantErr: ErrTruncated},
		{name: "closed before anything", close: true, wantErr: ErrTruncated, wantPeeked: []byte{}},
		{name: "garbage after a record header", chunks: [][]byte{{22, 3, 1, 0, 5, 9, 9, 9, 9, 9}}, wantErr: ErrNotTLS},
		{name: "record never completes, then EOF", chunks: [][]byte{long}, close: true, wantErr: ErrTruncated},
		{name: "record never completes", chunks: [][]byte{long}, opts: PeekOptions{Timeout: 50 * time.Millisecond}, wantErr: ErrTimeout},
		{name: "record completes later", chunks: [][]byte{long, make([]byte, 100)}, wantSNI: "a.test", wantPeeked: longDone},
		{name: "slow hello", chunks: [][]byte{goWire[:10]}, opts: PeekOptions{Timeout: 50 * time.Millisecond}, wantErr: ErrTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer server.Close()
			feed(t, client, tt.close, tt.chunks...)
			h, peeked, err := Peek(server, tt.opts)
			want := tt.wantPeeked
			if want == nil {
				want = bytes.Join(tt.chunks, nil)
			}
			if !bytes.Equal(peeked, want) {
				t.Errorf("peeked %d bytes, want %d", len(peeked), len(want))
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.ServerName != tt.wantSNI {
				t.Fatalf("ServerName = %q, want %q", h.ServerName, tt.wantSNI)
			}
		})
	}
}

// A hello that fits the given buffer is read into it: the caller can reuse buffers.
func TestPeekReadsIntoTheGivenBuffer(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	wire := goHello(t, "peek.example.com", []string{"istio"})
	feed(t, client, false, wire)
	buf := make([]byte, 4<<10)
	_, peeked, err := Peek(server, PeekOptions{Buf: buf})
	if err != nil || !bytes.Equal(peeked, wire) {
		t.Fatalf("peeked %d bytes, %v", len(peeked), err)
	}
	if &peeked[0] != &buf[0] {
		t.Fatal("Peek read into a buffer of its own")
	}
}

// Bytes the caller read itself (Have) are parsed first: a whole hello in them needs no read at
// all, and part of one is completed by what Peek reads.
func TestPeekStartsFromBytesAlreadyRead(t *testing.T) {
	wire := goHello(t, "have.example.com", []string{"istio"})
	for _, have := range []int{len(wire), 7, 1} {
		client, server := net.Pipe()
		feed(t, client, true, wire[have:])
		buf := make([]byte, 4<<10)
		copy(buf, wire[:have])
		h, peeked, err := Peek(server, PeekOptions{Buf: buf, Have: have})
		if err != nil || h.ServerName != "have.example.com" || !bytes.Equal(peeked, wire) {
			t.Fatalf("have %d: hello %+v, %d bytes peeked, %v", have, h, len(peeked), err)
		}
		server.Close()
	}
}

func TestPeekTimeoutWrapsCause(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	feed(t, client, false, []byte{22, 3})
	_, peeked, err := Peek(server, PeekOptions{Timeout: 20 * time.Millisecond})
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want ErrTimeout wrapping os.ErrDeadlineExceeded", err)
	}
	if !bytes.Equal(peeked, []byte{22, 3}) {
		t.Fatalf("peeked = % x", peeked)
	}
}

// deadlineConn records the read deadlines set on it.
type deadlineConn struct {
	net.Conn
	mu        sync.Mutex
	deadlines []time.Time
}

func (c *deadlineConn) SetReadDeadline(d time.Time) error {
	c.mu.Lock()
	c.deadlines = append(c.deadlines, d)
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(d)
}

// Peek sets one deadline for the whole hello and clears it on every way out.
func TestPeekDeadline(t *testing.T) {
	wire := goHello(t, "deadline.test", nil)
	for _, tt := range []struct {
		name    string
		chunks  [][]byte
		timeout time.Duration
		wantErr error
	}{
		{"success byte by byte", bytewise(wire), 0, nil},
		{"not tls", [][]byte{[]byte("GET")}, time.Minute, ErrNotTLS},
		{"timeout", [][]byte{wire[:3]}, 10 * time.Millisecond, ErrTimeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer server.Close()
			feed(t, client, false, tt.chunks...)
			dc := &deadlineConn{Conn: server}
			start := time.Now()
			_, _, err := Peek(dc, PeekOptions{Timeout: tt.timeout})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = DefaultTimeout
			}
			if len(dc.deadlines) != 2 || !dc.deadlines[1].IsZero() {
				t.Fatalf("deadlines set: %v, want one then zero", dc.deadlines)
			}
			if d := dc.deadlines[0].Sub(start); d < timeout || d > timeout+time.Minute {
				t.Fatalf("deadline %v after start, want about %v", d, timeout)
			}
		})
	}
}

func TestReplayConn(t *testing.T) {
	peeked := []byte("peeked bytes|")
	rest := []byte("the rest of the stream")
	for _, bufSize := range []int{1, 3, 64} {
		client, server := net.Pipe()
		feed(t, client, true, rest)
		rc := NewReplayConn(server, slices.Clone(peeked))
		var got []byte
		buf := make([]byte, bufSize)
		for {
			n, err := rc.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if want := string(peeked) + string(rest); string(got) != want {
			t.Fatalf("buffer %d: replayed %q, want %q", bufSize, got, want)
		}
		rc.Close()
	}
}

func TestReplayConnWriteTo(t *testing.T) {
	client, server := net.Pipe()
	feed(t, client, true, []byte("world"))
	rc := NewReplayConn(server, []byte("hello "))
	var out bytes.Buffer
	n, err := io.Copy(&out, rc)
	if err != nil || n != 11 || out.String() != "hello world" {
		t.Fatalf("io.Copy = %d, %v, %q", n, err, out.String())
	}
	if cw, ok := rc.(interface{ CloseWrite() error }); !ok || cw.CloseWrite() == nil {
		t.Fatal("CloseWrite on a net.Pipe conn must report that it is unsupported")
	}
	if nc, ok := rc.(interface{ NetConn() net.Conn }); !ok || nc.NetConn() != server {
		t.Fatal("NetConn does not return the wrapped conn")
	}
}

// Over real loopback TCP: Peek, then forward through a ReplayConn, half-closing with CloseWrite.
func TestPeekReplayLoopback(t *testing.T) {
	wire := goHello(t, "loopback.test", []string{"istio"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		hello *Hello
		all   []byte
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		h, peeked, err := Peek(c, PeekOptions{})
		if err != nil {
			done <- result{err: err}
			return
		}
		rc := NewReplayConn(c, peeked)
		var all bytes.Buffer
		_, err = io.Copy(&all, rc)
		if err == nil {
			err = rc.(interface{ CloseWrite() error }).CloseWrite()
		}
		done <- result{h, all.Bytes(), err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := append(slices.Clone(wire), "app data"...)
	for _, b := range [][]byte{payload[:7], payload[7:300], payload[300:]} {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.hello.ServerName != "loopback.test" || !bytes.Equal(r.all, payload) {
		t.Fatalf("got %q and %d bytes, want loopback.test and %d", r.hello.ServerName, len(r.all), len(payload))
	}
	// The server half-closed: the client sees EOF.
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after CloseWrite: %d, %v", n, err)
	}
}
