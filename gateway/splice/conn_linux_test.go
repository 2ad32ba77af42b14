package splice

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

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
	// The read waits for the loop first: the bytes come once it is waiting.
	buf := make([]byte, 16)
	s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var n int
	var err error
	readDone := make(chan struct{})
	go func() { n, err = s.conn.Read(buf); close(readDone) }()
	testkit.Eventually(t, "the read to wait", func() bool { return s.conn.waiting.Load() == 1 })
	s.client.Write([]byte("hello"))
	<-readDone
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
	drained := make(chan struct{})
	go func() { io.Copy(io.Discard, io.LimitReader(s.client, int64(len(big)))); close(drained) }()
	if n, err := s.conn.Write(big); n != len(big) || err != nil {
		t.Fatalf("wrote %d, %v", n, err)
	}
	if err := s.conn.CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	read := make(chan error, 1)
	go func() { _, err := s.conn.Read(buf); read <- err }()
	testkit.Eventually(t, "the read to wait", func() bool { return s.conn.waiting.Load() == 1 })
	s.conn.Close()
	if err := <-read; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read waiting at Close: %v; want net.ErrClosed", err)
	}
	if _, err := s.conn.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v; want net.ErrClosed", err)
	}
	<-drained // the client's reader of the big write is done before the client reads on
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

// A pair accepted and dialled before Close but not spliced is its goroutine's: Close leaves the
// sockets open, a wait on them ends with ErrClosed, Splice refuses the pair and nothing is
// accepted any more.
func TestCloseWithConnsNotSpliced(t *testing.T) {
	e, err := New(Options{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	q := newQueue()
	a, err := e.NewAcceptor(ln, q)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c := q.next(t)
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
	if _, err := e.NewAcceptor(ln, q); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewAcceptor after Close: %v; want ErrClosed", err)
	}
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
