package splice

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// A closed Acceptor takes nothing more from the listening socket: a connection that arrives
// after Close waits in the queue, and the next Acceptor of the same socket (a listener handed
// on) takes it.
func TestAcceptorCloseLeavesTheQueue(t *testing.T) {
	e := newEngine(t, Options{Loops: 2})
	ln := listen(t)
	first := newQueue()
	a, err := e.NewAcceptor(ln, first)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	second := newQueue()
	b, err := e.NewAcceptor(ln, second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := second.next(t)
	defer c.Close()
	if len(first.conns) != 0 {
		t.Fatal("the closed Acceptor took a connection")
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 'x' {
		t.Fatalf("read %q, %v from the connection the second Acceptor took", buf, err)
	}
}

// A handler can relay a pair without leaving the loop: TryRead what the client sent, dial with
// it (DialNoWait), SpliceOnLoop. The pair relays both ways and reports its end; the bytes sent
// with the dial are the caller's to count.
func TestSpliceOnLoop(t *testing.T) {
	e := newEngine(t, Options{Loops: 1})
	up := listen(t)
	ln := listen(t)
	// The client has connected and written before the Acceptor exists: its bytes are there when
	// the handler runs.
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	h := &onLoop{e: e, upstream: up.Addr().(*net.TCPAddr).AddrPort(), results: make(chan Result, 1), errs: make(chan error, 1)}
	a, err := e.NewAcceptor(ln, h)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	up.SetDeadline(time.Now().Add(10 * time.Second))
	u, err := up.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(10 * time.Second))
	client.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, 5)
	if _, err := io.ReadFull(u, got); err != nil || string(got) != "hello" {
		t.Fatalf("upstream read %q, %v", got, err)
	}
	if _, err := u.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	u.Close()
	back, err := io.ReadAll(client)
	if err != nil || string(back) != "back" {
		t.Fatalf("client read %q, %v", back, err)
	}
	client.Close()
	select {
	case err := <-h.errs:
		t.Fatal(err)
	case r := <-h.results:
		if r.Up != 0 || r.Down != 4 || r.Reason != Ended || !r.ClientEOF {
			t.Fatalf("result %+v; want 0 bytes up past the dial's, 4 down, ended by the client's EOF", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the pair did not end")
	}
}

// onLoop is a handler that relays each connection on the loop, or reports why it could not.
type onLoop struct {
	e        *Engine
	upstream netip.AddrPort
	results  chan Result
	errs     chan error
}

func (h *onLoop) Accepted(c *Conn) {
	buf := make([]byte, 64)
	n, err := c.TryRead(buf)
	if err != nil {
		c.Close()
		h.errs <- err
		return
	}
	u, sent, err := c.DialNoWait(h.upstream, buf[:n])
	if err == nil && sent < n {
		err = ErrNotReady
	}
	if err == nil {
		_, err = h.e.SpliceOnLoop(c, u, 0, func(r Result) { h.results <- r })
	}
	if err != nil {
		c.Close()
		h.errs <- err
	}
}

func (h *onLoop) AcceptFailed(err error) time.Duration {
	h.errs <- err
	return time.Second
}

// The loops share the connections: whichever loop wakes first would take nearly all of them,
// so a loop ahead of the least loaded one by more than the slack steps back from accepting.
// After the connections, a new Acceptor of the same socket still accepts (a loop that stepped
// back registers it when it steps forward; the others at once).
func TestAcceptorsBalanceTheLoops(t *testing.T) {
	for _, loops := range []int{2, 3} {
		e := newEngine(t, Options{Loops: loops})
		ln := listen(t)
		q := newQueue()
		a, err := e.NewAcceptor(ln, q)
		if err != nil {
			t.Fatal(err)
		}
		for range 64 {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			defer q.next(t).Close()
		}
		least, most := e.loops[0].owned.Load(), e.loops[0].owned.Load()
		for _, l := range e.loops {
			least, most = min(least, l.owned.Load()), max(most, l.owned.Load())
		}
		// A loop steps back once it is ahead by more than the slack: with one connection
		// arriving at a time (each accepted before the next dial), by at most one more.
		if most-least > slack(most)+1 || least == 0 {
			var owned []int32
			for _, l := range e.loops {
				owned = append(owned, l.owned.Load())
			}
			t.Errorf("%d loops own %v of 64 connections: more apart than the slack (%d)", loops, owned, slack(most))
		}
		a.Close()
		q2 := newQueue()
		b, err := e.NewAcceptor(ln, q2)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		q2.next(t).Close()
	}
}
