package splice

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

func TestBytesBothWaysAndHalfClose(t *testing.T) {
	e := newEngine(t, Options{Loops: 2, PipeSize: 4096}) // small pipes: many turns per message
	r := relay(t, e, 0)
	up := bytes.Repeat([]byte("client->upstream "), 10000)
	down := bytes.Repeat([]byte("upstream->client "), 7000)
	go func() {
		r.client.Write(up)
		r.client.CloseWrite()
	}()
	got, err := io.ReadAll(r.upstream) // ends with the client's EOF, passed on as a half-close
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("upstream read %d bytes (%v), want %d", len(got), err, len(up))
	}
	// The other direction still works after the first one ended.
	go func() {
		r.upstream.Write(down)
		r.upstream.CloseWrite()
	}()
	got, err = io.ReadAll(r.client)
	if err != nil || !bytes.Equal(got, down) {
		t.Fatalf("client read %d bytes (%v), want %d", len(got), err, len(down))
	}
	res := r.result(t)
	if res.Reason != Ended || res.Err != nil || res.Up != int64(len(up)) || res.Down != int64(len(down)) {
		t.Fatalf("result %+v; want Ended, no error, up %d, down %d", res, len(up), len(down))
	}
	if s := e.Stats(); s.Pairs != 0 || s.PipesInUse != 0 {
		t.Fatalf("stats after the pair ended: %+v", s)
	}
}

func TestResetIsReported(t *testing.T) {
	e := newEngine(t, Options{})
	r := relay(t, e, 0)
	r.upstream.SetLinger(0)
	r.upstream.Close() // RST to the engine's upstream socket
	res := r.result(t)
	if res.Reason != Ended || res.Err == nil {
		t.Fatalf("result %+v; want Ended with the reset as error", res)
	}
	var se interface{ Unwrap() error }
	if !errors.As(res.Err, &se) {
		t.Fatalf("error %v is not wrapped for errors.Is", res.Err)
	}
}

func TestCutCloseAndAfterClose(t *testing.T) {
	e, err := New(Options{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	a := relay(t, e, 0)
	b := relay(t, e, 0)
	a.p.Cut()
	if res := a.result(t); res.Reason != Cut {
		t.Fatalf("cut pair: %+v", res)
	}
	a.p.Cut() // a second cut of an ended pair does nothing
	e.Close()
	if res := b.result(t); res.Reason != Cut {
		t.Fatalf("pair open at Close: %+v", res)
	}
	for _, c := range []*net.TCPConn{a.client, b.client} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("client of a cut pair read %v; want EOF", err)
		}
	}
}

func TestIdleTimeoutsEndInDeadlineOrder(t *testing.T) {
	e := newEngine(t, Options{Loops: 1}) // one loop, one heap
	ended := make(chan string, 2)        // in the order the loop ended them
	slow := relayThen(t, e, 600*time.Millisecond, func() { ended <- "slow" })
	fast := relayThen(t, e, 200*time.Millisecond, func() { ended <- "fast" })
	never := relay(t, e, 0)
	// The fast one is kept busy for a while: activity pushes its deadline back, to about 500 ms,
	// still before the slow one's 600 ms.
	for range 3 {
		fast.client.Write([]byte("x"))
		io.ReadFull(fast.upstream, make([]byte, 1))
		time.Sleep(100 * time.Millisecond) // traffic pattern, not a wait for a condition
	}
	if res := fast.result(t); res.Reason != IdleTimeout || res.Up != 3 || res.Down != 0 {
		t.Fatalf("fast pair: %+v; want IdleTimeout after 3 bytes up", res)
	}
	if res := slow.result(t); res.Reason != IdleTimeout {
		t.Fatalf("slow pair: %+v; want IdleTimeout", res)
	}
	if a, b := <-ended, <-ended; a != "fast" || b != "slow" {
		t.Fatalf("ended in order %s, %s; want the earlier deadline first", a, b)
	}
	for _, r := range []*relayed{slow, fast} {
		r.client.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := r.client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("idle pair's client read %v; want EOF", err)
		}
	}
	select {
	case res := <-never.done:
		t.Fatalf("a pair without idle timeout ended: %+v", res)
	default:
	}
	never.client.Write([]byte("still here"))
	buf := make([]byte, 10)
	never.upstream.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(never.upstream, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("pair without idle timeout: %q, %v", buf, err)
	}
}

// BenchmarkRoundTrip1KiB: one request/response of 1 KiB through the engine per op. The engine
// allocates nothing per op: what allocs/op shows is the test's own net.Conn reads and writes.
func BenchmarkRoundTrip1KiB(b *testing.B) {
	e := newEngine(b, Options{})
	r := relay(b, e, time.Hour)
	go func() { io.Copy(r.upstream, r.upstream); r.upstream.CloseWrite() }()
	buf := make([]byte, 1024)
	b.SetBytes(2 * 1024)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.client.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r.client, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	r.client.Close()
	r.result(b)
}

// Small messages to a reader that pauses: the loop sends what the socket takes, keeps the rest
// in one pipe and stops reading the source until it drains. Every byte arrives, in order.
func TestSmallMessagesToAPausingReader(t *testing.T) {
	e := newEngine(t, Options{Loops: 1})
	s := accept(t, e)
	u, upstream := dialUpstream(t, s)
	// Small socket buffers on the way to the reader, so that its pauses reach the engine (not
	// much smaller: at 4 KiB each, loopback TCP itself stalls on this pattern, proxy or not).
	upstream.SetReadBuffer(64 << 10)
	raw, _ := u.SyscallConn()
	raw.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 64<<10) })
	r := &relayed{client: s.client, upstream: upstream, done: make(chan Result, 1)}
	if _, err := e.Splice(s.conn, u, 0, func(res Result) { r.done <- res }); err != nil {
		t.Fatal(err)
	}
	const total = 8 << 20
	sent := make([]byte, total)
	for i := range sent {
		sent[i] = byte(i * 7 / 5)
	}
	go func() {
		for off := 0; off < total; off += 1000 {
			if _, err := r.client.Write(sent[off:min(off+1000, total)]); err != nil {
				return
			}
		}
		r.client.CloseWrite()
	}()
	got := make([]byte, 0, total)
	buf := make([]byte, 1500)
	r.upstream.SetReadDeadline(time.Now().Add(30 * time.Second))
	for reads := 0; ; reads++ {
		if reads%200 == 0 {
			time.Sleep(10 * time.Millisecond) // traffic pattern: the reader pauses, the pipe fills
			if s := e.Stats(); s.PipesInUse > 1 {
				t.Fatalf("%d pipes in use for one direction", s.PipesInUse)
			}
		}
		n, err := r.upstream.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("upstream got %d bytes, differing from the %d sent", len(got), len(sent))
	}
	r.upstream.CloseWrite()
	if res := r.result(t); res.Reason != Ended || res.Up != total {
		t.Fatalf("result %+v; want Ended, %d bytes up", res, total)
	}
}
