package splice

// The engine on its own, over real loopback TCP: accepted and dialled Conns, bytes and results,
// cuts, close, idle order, and what a round trip costs. The gateway's suite (package gateway)
// runs the end-to-end cases.

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// served is a connection the engine accepted: the test's end of it and the engine's.
type served struct {
	client *net.TCPConn // the test's end
	conn   *Conn        // the engine's end
}

// accept makes a listener served by the engine and a client connected through it.
func accept(t testing.TB, e *Engine) served {
	t.Helper()
	ln := listen(t)
	a, err := e.NewAcceptor(ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c, err := a.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return served{client: client.(*net.TCPConn), conn: c}
}

func listen(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dialUpstream dials a new upstream listener from s's Conn and returns both ends, the first
// bytes Dial sent already read at the upstream.
func dialUpstream(t testing.TB, s served) (*Conn, *net.TCPConn) {
	t.Helper()
	ln := listen(t)
	u, err := s.conn.Dial(ln.Addr().(*net.TCPAddr).AddrPort(), time.Now().Add(10*time.Second), []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	up, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	buf := make([]byte, 5)
	up.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(up, buf); err != nil || string(buf) != "first" {
		t.Fatalf("upstream read %q, %v; want the first bytes", buf, err)
	}
	up.SetReadDeadline(time.Time{})
	return u, up
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
	s := accept(t, e)
	u, upstream := dialUpstream(t, s)
	r := &relayed{client: s.client, upstream: upstream, done: make(chan Result, 1)}
	p, err := e.Splice(s.conn, u, idle, func(res Result) {
		if then != nil {
			then()
		}
		r.done <- res
	})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
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
}

// A pair accepted and dialled before Close but not spliced is its goroutine's: Close leaves the
// sockets open, a wait on them ends with ErrClosed, Splice refuses the pair and nothing is
// accepted any more.
func TestCloseWithConnsNotSpliced(t *testing.T) {
	e, err := New(Options{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	a, err := e.NewAcceptor(ln)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := a.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	u, up := dialUpstream(t, served{conn: c})
	defer u.Close()
	read := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); read <- err }()
	e.Close()
	if err := <-read; !errors.Is(err, ErrClosed) {
		t.Fatalf("read waiting at Close: %v; want ErrClosed", err)
	}
	if _, err := e.Splice(c, u, 0, func(Result) { t.Error("done called for a refused pair") }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Splice after Close: %v; want ErrClosed", err)
	}
	if _, err := u.Write([]byte("x")); err != nil {
		t.Fatalf("a refused pair's conn was touched: %v", err)
	}
	up.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(up, make([]byte, 1)); err != nil {
		t.Fatalf("upstream did not get the byte: %v", err)
	}
	go net.Dial("tcp", ln.Addr().String())
	if _, err := a.Accept(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Accept after Close: %v; want ErrClosed", err)
	}
}

// A Conn before Splice: reads wait for the loop and honour deadlines, writes go through, Close
// from another goroutine wakes a waiting read, and the client's peer address is the dialler's.
func TestConnBeforeSplice(t *testing.T) {
	e := newEngine(t, Options{})
	s := accept(t, e)
	if got, want := s.conn.RemoteAddrPort(), s.client.LocalAddr().(*net.TCPAddr).AddrPort(); got != want {
		t.Fatalf("RemoteAddrPort %v; want %v", got, want)
	}
	if got, want := s.conn.LocalAddr().String(), s.client.RemoteAddr().String(); got != want {
		t.Fatalf("LocalAddr %v; want %v", got, want)
	}
	go func() {
		time.Sleep(50 * time.Millisecond) // the read below waits for the loop first
		s.client.Write([]byte("hello"))
	}()
	buf := make([]byte, 16)
	s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := s.conn.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	s.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var ne net.Error
	if _, err := s.conn.Read(buf); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past its deadline: %v; want a timeout", err)
	}
	s.conn.SetReadDeadline(time.Time{})
	big := bytes.Repeat([]byte("x"), 8<<20) // more than the socket buffers: Write waits for the loop
	go func() { io.Copy(io.Discard, io.LimitReader(s.client, int64(len(big)))) }()
	if n, err := s.conn.Write(big); n != len(big) || err != nil {
		t.Fatalf("wrote %d, %v", n, err)
	}
	if err := s.conn.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	read := make(chan error, 1)
	go func() { _, err := s.conn.Read(buf); read <- err }()
	time.Sleep(50 * time.Millisecond) // let the read wait
	s.conn.Close()
	if err := <-read; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read waiting at Close: %v; want net.ErrClosed", err)
	}
	if _, err := s.conn.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v; want net.ErrClosed", err)
	}
	s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.client.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("client after Close: %v; want EOF", err)
	}
}

// Dial reports a refused connect and a timeout, and the pair can dial again after either.
func TestDialFailures(t *testing.T) {
	e := newEngine(t, Options{})
	s := accept(t, e)
	ln := listen(t)
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	if _, err := s.conn.Dial(closed, time.Now().Add(10*time.Second), nil); err == nil {
		t.Fatal("dial with no first bytes succeeded")
	}
	if _, err := s.conn.Dial(closed, time.Now().Add(10*time.Second), []byte("x")); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial to a closed port: %v; want ECONNREFUSED", err)
	}
	// A listener whose backlog is full leaves the next SYN unanswered.
	full := listenBacklog(t, 1)
	var fill []net.Conn
	defer func() {
		for _, c := range fill {
			c.Close()
		}
	}()
	addr := full.Addr().(*net.TCPAddr).AddrPort()
	timedOut := false
	for range 8 {
		c, err := net.DialTimeout("tcp", addr.String(), 100*time.Millisecond)
		if err != nil {
			timedOut = true
			break
		}
		fill = append(fill, c)
	}
	if !timedOut {
		t.Fatal("could not fill the listener's backlog")
	}
	var ne net.Error
	if _, err := s.conn.Dial(addr, time.Now().Add(100*time.Millisecond), []byte("x")); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial to a full backlog: %v; want a timeout", err)
	}
	u, up := dialUpstream(t, s)
	defer u.Close()
	u.Write([]byte("ok"))
	buf := make([]byte, 2)
	up.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(up, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("upstream after failed dials read %q, %v", buf, err)
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

// listenBacklog listens on loopback with an accept queue of backlog, never accepting.
func listenBacklog(t testing.TB, backlog int) net.Listener {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "backlog-listener")
	defer f.Close()
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// Bytes and a FIN that reached the engine's socket before Splice raised their edges while the
// goroutine owned the Conn: the loop must still find them.
func TestBytesAndFINBeforeSplice(t *testing.T) {
	e := newEngine(t, Options{})
	s := accept(t, e)
	u, upstream := dialUpstream(t, s)
	s.client.Write([]byte("early")) // on loopback the bytes are in the engine's socket when Write returns
	s.client.CloseWrite()
	upstream.Write([]byte("reply"))
	done := make(chan Result, 1)
	if _, err := e.Splice(s.conn, u, 0, func(r Result) { done <- r }); err != nil {
		t.Fatal(err)
	}
	upstream.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(upstream)
	if err != nil || string(got) != "early" {
		t.Fatalf("upstream read %q, %v; want the early bytes, then EOF", got, err)
	}
	s.client.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s.client, buf); err != nil || string(buf) != "reply" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	upstream.CloseWrite()
	select {
	case r := <-done:
		if r.Reason != Ended || r.Err != nil || r.Up != 5 || r.Down != 5 {
			t.Fatalf("result %+v; want Ended, 5 bytes each way", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pair never ended")
	}
}

// Relaying starts from what the goroutine left: bytes behind a read that filled its buffer,
// and bytes arriving after a read that emptied the socket (before Splice or while it is under
// way) all reach the upstream.
func TestBytesLeftByAGoroutineRead(t *testing.T) {
	e := newEngine(t, Options{Loops: 1})
	// check splices, then reads want at the upstream before the client half-closes (its FIN
	// would make the loop read anyway).
	check := func(t *testing.T, s served, u *Conn, upstream *net.TCPConn, want string) {
		t.Helper()
		done := make(chan Result, 1)
		if _, err := e.Splice(s.conn, u, 0, func(r Result) { done <- r }); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		upstream.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(upstream, got); err != nil || string(got) != want {
			t.Fatalf("upstream read %q, %v; want %q", got, err, want)
		}
		s.client.CloseWrite()
		if rest, err := io.ReadAll(upstream); err != nil || len(rest) > 0 {
			t.Fatalf("upstream read %q more, then %v; want EOF", rest, err)
		}
		upstream.CloseWrite()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the pair never ended")
		}
	}
	t.Run("behind a full read", func(t *testing.T) {
		s := accept(t, e)
		u, upstream := dialUpstream(t, s)
		s.client.Write([]byte("peekedrest"))
		waitSeen(t, s.conn, canRead) // the loop saw the bytes before the read below
		buf := make([]byte, 6)
		s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(s.conn, buf); err != nil {
			t.Fatal(err)
		}
		check(t, s, u, upstream, "rest")
	})
	t.Run("a FIN behind a short read", func(t *testing.T) {
		s := accept(t, e)
		u, upstream := dialUpstream(t, s)
		s.client.Write([]byte("hello"))
		s.client.CloseWrite()
		waitSeen(t, s.conn, drain) // the loop saw the FIN before the read below
		buf := make([]byte, 64)
		s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := s.conn.Read(buf); err != nil || n != 5 {
			t.Fatalf("read %d, %v", n, err)
		}
		check(t, s, u, upstream, "") // the client is shut already: no new event for the FIN
	})
	t.Run("after a short read", func(t *testing.T) {
		for i := range 100 { // the late bytes race the loop's start of the pair
			s := accept(t, e)
			u, upstream := dialUpstream(t, s)
			s.client.Write([]byte("hello"))
			buf := make([]byte, 64)
			s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := s.conn.Read(buf); err != nil || n != 5 {
				t.Fatalf("read %d, %v", n, err)
			}
			late := make(chan struct{})
			go func() {
				if i%2 == 0 {
					time.Sleep(time.Duration(i) * 10 * time.Microsecond)
				}
				s.client.Write([]byte("late"))
				close(late)
			}()
			if i%2 == 1 {
				<-late
			}
			check(t, s, u, upstream, "late")
			<-late
		}
	})
}

// waitSeen waits until the loop has recorded an event with bit for c's socket.
func waitSeen(t *testing.T, c *Conn, bit uint32) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); c.p.seen[c.side].Load()&bit == 0; {
		if time.Now().After(end) {
			t.Fatal("the loop never saw the socket's event")
		}
		time.Sleep(time.Millisecond)
	}
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
