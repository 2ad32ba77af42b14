package splice

// The engine on its own, over real loopback TCP: bytes and results, cuts, close, idle order, and
// what a round trip costs. The gateway's suite (package gateway) runs the end-to-end cases.

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of one loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// relayed is a pair in the engine: the test talks on client and upstream, the engine relays
// between the other two ends.
type relayed struct {
	client, upstream *net.TCPConn
	p                *Pair
	done             chan Result
}

func relay(t testing.TB, e *Engine, idle time.Duration) *relayed {
	t.Helper()
	return relayThen(t, e, idle, nil)
}

// relayThen is relay with then called on the loop as the pair ends, before the result is sent.
func relayThen(t testing.TB, e *Engine, idle time.Duration, then func()) *relayed {
	t.Helper()
	client, cEnd := tcpPair(t)
	uEnd, upstream := tcpPair(t)
	r := &relayed{client: client, upstream: upstream, done: make(chan Result, 1)}
	p, err := e.Relay(cEnd, uEnd, idle, func(res Result) {
		if then != nil {
			then()
		}
		r.done <- res
	})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	t.Cleanup(func() { client.Close(); upstream.Close() })
	return r
}

func (r *relayed) result(t testing.TB) Result {
	t.Helper()
	select {
	case res := <-r.done:
		return res
	case <-time.After(20 * time.Second):
		t.Fatal("the pair never ended")
		return Result{}
	}
}

func newEngine(t testing.TB, o Options) *Engine {
	t.Helper()
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

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
	// After Close nothing is taken: the conns stay the caller's, open.
	c1, c2 := tcpPair(t)
	u1, u2 := tcpPair(t)
	defer func() { c1.Close(); c2.Close(); u1.Close(); u2.Close() }()
	if _, err := e.Relay(c2, u1, 0, func(Result) { t.Error("done called for a refused pair") }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Relay after Close: %v; want ErrClosed", err)
	}
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatalf("a refused pair's conn was touched: %v", err)
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
