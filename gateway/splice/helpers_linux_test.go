package splice

import (
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewgate/ewgate/gateway/testkit"
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
	h := newQueue()
	a, err := e.NewAcceptor(ln, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return served{client: client.(*net.TCPConn), conn: h.next(t)}
}

// queue is an AcceptHandler that passes each accepted Conn, watched, to the test's goroutine.
type queue struct {
	conns  chan *Conn
	failed chan error
}

func newQueue() *queue { return &queue{conns: make(chan *Conn, 16), failed: make(chan error, 16)} }

func (q *queue) Accepted(c *Conn) {
	if err := c.Watch(); err != nil {
		c.Close()
		q.failed <- err
		return
	}
	q.conns <- c
}

func (q *queue) AcceptFailed(err error) time.Duration {
	q.failed <- err
	return 10 * time.Millisecond
}

// next returns the next accepted Conn (failing the test after 10 s).
func (q *queue) next(t testing.TB) *Conn {
	t.Helper()
	select {
	case c := <-q.conns:
		return c
	case err := <-q.failed:
		t.Fatalf("accept: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("nothing accepted in 10 s")
	}
	return nil
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

// waitSeen waits until the loop has recorded an event with bit for c's socket.
func waitSeen(t *testing.T, c *Conn, bit uint32) {
	t.Helper()
	testkit.Eventually(t, "the loop to see the socket's event", func() bool { return c.p.seen[c.side].Load()&bit != 0 })
}
