package dataplane

// The relay under load and abuse, end to end through the gateway: many connections in random
// order, a reader that stops, resets mid-transfer, half-close from the upstream side, idle
// timeouts over thousands of connections, and shutdown with connections in every state. The
// clients send a real ClientHello's bytes and then plain bytes (no TLS session), so the tests
// check every byte cheaply. Like the rest of the suite they run on both relay engines.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// rawBackend accepts plain TCP, consumes the ClientHello the gateway forwards and hands the
// connection to serve.
type rawBackend struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

func startRawBackend(t *testing.T, helloLen int, serve func(c *net.TCPConn)) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(c, make([]byte, helloLen)); err != nil {
					return
				}
				c.SetReadDeadline(time.Time{})
				serve(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

// echo copies everything back and half-closes after the client's EOF. It copies in userspace:
// io.Copy between two TCPConns would splice through the runtime's own pipe pool, whose pipes
// linger until a garbage collection and would blur the tests' file counts.
func echo(c *net.TCPConn) {
	io.Copy(c, struct{ io.Reader }{c})
	c.CloseWrite()
}

// rawDial connects to the gateway and sends the hello.
func rawDial(t testing.TB, addr string, hello []byte) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(hello); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

// openFDs counts this process's open file descriptors, after collecting garbage: the goroutine
// relay's io.Copy splices through the runtime's pipe pool, whose pipes close when collected.
func openFDs(t *testing.T) int {
	t.Helper()
	runtime.GC()
	runtime.GC()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fdBudget is how many connections through the gateway fit in the open-file limit with room to
// spare: each holds a client socket, a backend socket and the gateway's files (6 on the
// goroutine relay).
func fdBudget(t *testing.T, want int) int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	n := min(want, (int(rl.Cur)-1000)/8)
	if n < want {
		t.Logf("open-file limit %d: %d connections instead of %d", rl.Cur, n, want)
	}
	if n < 100 {
		t.Fatalf("open-file limit %d is too low for this test; raise it (ulimit -n)", rl.Cur)
	}
	return n
}

func TestRelayManyConnectionsInRandomOrder(t *testing.T) {
	hello := helloBytes(t, reviews, []string{"istio"})
	be := startRawBackend(t, len(hello), echo)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.ln.Addr().String())))
	fds := openFDs(t)

	const total = 10000
	wave := fdBudget(t, 500)
	var sent atomic.Int64
	for done := 0; done < total; {
		n := min(wave, total-done)
		conns := make([]*net.TCPConn, n)
		for i := range conns {
			conns[i] = rawDial(t, g.addr("mesh"), hello)
		}
		order := rand.Perm(n)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		next := atomic.Int64{}
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					c := conns[order[i]]
					msg := make([]byte, 1+rand.IntN(16<<10))
					for j := range msg {
						msg[j] = byte(rand.Uint32())
					}
					err := func() error {
						defer c.Close()
						c.SetDeadline(time.Now().Add(20 * time.Second))
						werr := make(chan error, 1)
						go func() {
							_, err := c.Write(msg)
							if err == nil {
								err = c.CloseWrite()
							}
							werr <- err
						}()
						got, err := io.ReadAll(c)
						if err := <-werr; err != nil {
							return err
						}
						if err != nil {
							return err
						}
						if !bytes.Equal(got, msg) {
							return errors.New("echo differs")
						}
						sent.Add(int64(len(msg)))
						return nil
					}()
					if err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("connection %d..%d: %v", done, done+n, err)
		}
		done += n
	}
	testkit.Eventually(t, "every connection logged ok", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"result": "ok"}) == total
	})
	up := g.counter("ewgate_bytes_total", map[string]string{"direction": "upstream"})
	down := g.counter("ewgate_bytes_total", map[string]string{"direction": "downstream"})
	if down != float64(sent.Load()) || up != float64(sent.Load()+total*int64(len(hello))) {
		t.Fatalf("bytes counted up %v down %v; want %d and %d", up, down, sent.Load()+total*int64(len(hello)), sent.Load())
	}
	testkit.Eventually(t, "files back to where they were", func() bool {
		pooled := g.counter("ewgate_relay_engine_pipes", map[string]string{"state": "pooled"})
		return openFDs(t)-2*int(pooled) <= fds // drained pipes kept for reuse
	})
}

func TestRelayStalledReaderIsNotReadFurther(t *testing.T) {
	hello := helloBytes(t, reviews, []string{"istio"})
	release := make(chan struct{})
	received := make(chan []byte, 1)
	be := startRawBackend(t, len(hello), func(c *net.TCPConn) {
		<-release // the upstream reads nothing until released
		b, _ := io.ReadAll(c)
		received <- b
	})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the backend's cleanup waits
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.ln.Addr().String())))
	c := rawDial(t, g.addr("mesh"), hello)
	defer c.Close()

	// Write until the writes stop going anywhere: the kernel buffers on both hops plus at most
	// one pipe fill up, and then the gateway stops reading the client. Stalled means three write
	// windows in a row that took nothing.
	var written []byte
	chunk := make([]byte, 64<<10)
	for still := 0; still < 3; {
		for j := range chunk {
			chunk[j] = byte(rand.Uint32())
		}
		c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Write(chunk)
		written = append(written, chunk[:n]...)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal(err)
		}
		if still++; n > 0 {
			still = 0
		}
		if len(written) > 512<<20 {
			t.Fatalf("the gateway took %d MiB from a client whose upstream reads nothing", len(written)>>20)
		}
	}
	t.Logf("the client could write %d KiB before the gateway stopped reading it", len(written)>>10)
	if testRelay == RelayEpoll {
		if v := g.counter("ewgate_relay_engine_pipes", map[string]string{"state": "in_use"}); v != 1 {
			t.Fatalf("pipes in use with one stalled direction = %v, want 1", v)
		}
	}
	// Once the upstream reads, everything arrives intact.
	once.Do(func() { close(release) })
	c.SetWriteDeadline(time.Time{})
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-received:
		if !bytes.Equal(got, written) {
			t.Fatalf("upstream got %d bytes, client wrote %d; or they differ", len(got), len(written))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("upstream never got the rest")
	}
}

func TestRelayResetMidTransfer(t *testing.T) {
	hello := helloBytes(t, reviews, []string{"istio"})
	for _, who := range []string{"upstream", "client"} {
		t.Run(who+" resets", func(t *testing.T) {
			upstreamDone := make(chan error, 1)
			be := startRawBackend(t, len(hello), func(c *net.TCPConn) {
				if who == "upstream" {
					io.ReadFull(c, make([]byte, 100<<10))
					c.SetLinger(0) // close with RST
					c.Close()
					return
				}
				// Stream to the client until the relay breaks.
				buf := make([]byte, 32<<10)
				c.SetWriteDeadline(time.Now().Add(20 * time.Second))
				for {
					if _, err := c.Write(buf); err != nil {
						upstreamDone <- err
						return
					}
				}
			})
			g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.ln.Addr().String())))
			c := rawDial(t, g.addr("mesh"), hello)
			defer c.Close()
			if who == "upstream" {
				c.SetWriteDeadline(time.Now().Add(20 * time.Second))
				buf := make([]byte, 32<<10)
				var err error
				for err == nil {
					_, err = c.Write(buf)
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("the client could write for 20 s after its upstream reset")
				}
			} else {
				io.ReadFull(c, make([]byte, 100<<10))
				c.SetLinger(0)
				c.Close()
				select {
				case err := <-upstreamDone:
					if errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatal("the upstream could write for 20 s after the client reset")
					}
				case <-time.After(30 * time.Second):
					t.Fatal("the upstream's writes never failed")
				}
			}
			testkit.Eventually(t, "a reset result", func() bool {
				return g.counter("ewgate_connections_total", map[string]string{"result": "reset"}) == 1
			})
			testkit.Eventually(t, "the pair gone", func() bool { return g.ActiveConnections() == 0 })
		})
	}
}

// An upstream that answers and then closes with bytes of the client's unread (a TLS server
// that never reads the client's close_notify) resets the connection after the exchange is over:
// the client had sent its EOF and read the answer. That is an ok connection, not a reset (the
// reset before the client's EOF stays one: TestRelayResetMidTransfer).
func TestRelayResetAfterTheClientsEOFIsOK(t *testing.T) {
	hello := helloBytes(t, reviews, []string{"istio"})
	be := startRawBackend(t, len(hello), func(c *net.TCPConn) {
		c.Write([]byte("answer"))
		// Wait for the client's EOF, leaving its last bytes unread, then close: the unread
		// bytes make the kernel answer with a reset.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		for {
			var b [1]byte
			if _, err := c.Read(b[:]); err != nil {
				break
			}
		}
		c.SetLinger(0)
		c.Close()
	})
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.ln.Addr().String())))
	c := rawDial(t, g.addr("mesh"), hello)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("answer"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "answer" {
		t.Fatalf("client read %q, %v", got, err)
	}
	c.Write([]byte("bye"))
	c.CloseWrite()
	io.Copy(io.Discard, c) // the upstream's reset ends the pair
	testkit.Eventually(t, "the pair gone", func() bool { return g.ActiveConnections() == 0 })
	if ok, reset := g.counter("ewgate_connections_total", map[string]string{"result": "ok"}),
		g.counter("ewgate_connections_total", map[string]string{"result": "reset"}); ok != 1 || reset != 0 {
		t.Fatalf("results ok %v, reset %v; want one ok", ok, reset)
	}
}

func TestRelayUpstreamHalfClosesFirst(t *testing.T) {
	hello := helloBytes(t, reviews, []string{"istio"})
	got := make(chan []byte, 1)
	be := startRawBackend(t, len(hello), func(c *net.TCPConn) {
		c.Write([]byte("greeting"))
		c.CloseWrite() // the upstream is done talking, and still listens
		b, _ := io.ReadAll(c)
		got <- b
	})
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.ln.Addr().String())))
	c := rawDial(t, g.addr("mesh"), hello)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c) // ends with the upstream's EOF
	if err != nil || string(b) != "greeting" {
		t.Fatalf("client read %q, %v", b, err)
	}
	if _, err := c.Write([]byte("reply after EOF")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if b := <-got; string(b) != "reply after EOF" {
		t.Fatalf("upstream got %q", b)
	}
	testkit.Eventually(t, "ok result", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"result": "ok"}) == 1
	})
}

func TestRelayIdleTimeoutOverThousands(t *testing.T) {
	hello := helloBytes(t, reviews, []string{"istio"})
	be := startRawBackend(t, len(hello), echo)
	// Every connection comes from 127.0.0.1: lift the per-source cap (a quarter of the listener's).
	g := startGateway(t, meshYAML(", idle_timeout: 500ms, max_connections_per_source: 10000", cluster(reviews, "mesh", "round_robin", be.ln.Addr().String())))
	n := fdBudget(t, 2000)
	quiet := make([]*net.TCPConn, n-1)
	quietDone := make(chan error, n)
	for i := range quiet {
		c := rawDial(t, g.addr("mesh"), hello)
		defer c.Close()
		quiet[i] = c
		go func() {
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			_, err := c.Read(make([]byte, 1))
			quietDone <- err
		}()
	}
	// One connection keeps talking (a byte every 100 ms) while the rest idle out.
	busy := rawDial(t, g.addr("mesh"), hello)
	defer busy.Close()
	ping := func() {
		t.Helper()
		buf := []byte{0}
		busy.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := busy.Write(buf); err != nil {
			t.Fatalf("busy connection cut: %v", err)
		}
		if _, err := io.ReadFull(busy, buf); err != nil {
			t.Fatalf("busy connection cut: %v", err)
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for cut := 0; cut < len(quiet); {
		select {
		case err := <-quietDone:
			if !errors.Is(err, io.EOF) {
				t.Fatalf("a quiet connection ended with %v; want EOF from the idle timeout", err)
			}
			cut++
		case <-tick.C:
			ping()
		}
	}
	ping()
	testkit.Eventually(t, "idle_timeout results", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"result": "idle_timeout"}) == float64(len(quiet))
	})
	testkit.Eventually(t, "only the busy connection open", func() bool { return g.ActiveConnections() == 1 })
	ping()
}

func TestRelayShutdownInEveryState(t *testing.T) {
	hello := helloBytes(t, reviews, []string{"istio"})
	hold := make(chan struct{})
	be := startRawBackend(t, len(hello), func(c *net.TCPConn) {
		go func() { <-hold; c.Close() }()
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		switch string(buf) {
		case "echo":
			echo(c)
		case "spew": // keeps bytes flowing down until the relay breaks
			b := make([]byte, 16<<10)
			for {
				if _, err := c.Write(b); err != nil {
					return
				}
			}
		case "stal": // reads nothing more
			<-hold
		}
	})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release) // before the backend's cleanup waits
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.ln.Addr().String())))
	fds := openFDs(t)
	addr := g.addr("mesh")

	// Waiting for its hello.
	peeking, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer peeking.Close()
	// Relayed and idle.
	idle := rawDial(t, addr, hello)
	defer idle.Close()
	idle.Write([]byte("echo"))
	// Half-closed by the client; the upstream side still open.
	half := rawDial(t, addr, hello)
	defer half.Close()
	half.Write([]byte("stal"))
	half.CloseWrite()
	// Bytes flowing down.
	spew := rawDial(t, addr, hello)
	defer spew.Close()
	spew.Write([]byte("spew"))
	io.ReadFull(spew, make([]byte, 64<<10))
	// Stalled: the upstream reads nothing, the client's bytes fill the buffers and a pipe.
	stalled := rawDial(t, addr, hello)
	defer stalled.Close()
	stalled.Write([]byte("stal"))
	go func() {
		stalled.SetWriteDeadline(time.Now().Add(30 * time.Second))
		b := make([]byte, 64<<10)
		for {
			if _, err := stalled.Write(b); err != nil {
				return
			}
		}
	}()
	testkit.Eventually(t, "five connections open", func() bool { return g.ActiveConnections() == 5 })

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := g.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v; want the drain deadline", err)
	}
	// Every connection was closed by the gateway.
	for name, c := range map[string]net.Conn{"peeking": peeking, "idle": idle, "half-closed": half, "spewing": spew} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.Copy(io.Discard, c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s connection still open after Shutdown", name)
		}
	}
	if g.ActiveConnections() != 0 {
		t.Fatalf("%d connections tracked after Shutdown", g.ActiveConnections())
	}
	if v := g.counter("ewgate_connections_total", map[string]string{"result": "drained"}); v != 4 {
		t.Fatalf("drained = %v; want the 4 relayed connections", v)
	}
	release()
	for _, c := range []net.Conn{peeking, idle, half, spew, stalled} {
		c.Close()
	}
	testkit.Eventually(t, "files back to where they were", func() bool { return openFDs(t) <= fds })
}
