package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// NetNS is the network namespace of a peer started with ProcSpec.PrivateNet: a pod's network as
// seen from the node. The test reaches into it with sockets made on an OS thread that entered the
// namespace for that one call (a socket stays in the namespace it was made in, whichever thread
// later uses it); every other goroutine stays in the test's own namespace.
type NetNS struct {
	f    *os.File
	path string
}

// OpenNetNS opens the network namespace of a running process.
func OpenNetNS(pid int) (*NetNS, error) {
	return openNetNSPath(fmt.Sprintf("/proc/%d/ns/net", pid))
}

func openNetNSPath(path string) (*NetNS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("harness: netns %s: %w", path, err)
	}
	return &NetNS{f: f, path: path}, nil
}

// Path is the namespace's /proc path, for ProcSpec.NetNSPath (valid while its process runs).
func (n *NetNS) Path() string { return n.path }

// Close releases the namespace handle (the namespace lives on while its process does).
func (n *NetNS) Close() error { return n.f.Close() }

// do runs fn on a locked OS thread inside n. If the thread cannot return to the test's namespace
// it stays locked, and Go ends it with the goroutine instead of reusing it.
func (n *NetNS) do(fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("harness: setns: %w", err)
			return
		}
		fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("harness: setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

// DialContext dials addr inside n (net.Dialer's signature, for http.Transport).
func (n *NetNS) DialContext(ctx context.Context, network, addr string) (c net.Conn, err error) {
	if nsErr := n.do(func() { c, err = (&net.Dialer{}).DialContext(ctx, network, addr) }); nsErr != nil {
		return nil, nsErr
	}
	return c, err
}

// Listen listens on addr inside n.
func (n *NetNS) Listen(network, addr string) (ln net.Listener, err error) {
	if nsErr := n.do(func() { ln, err = net.Listen(network, addr) }); nsErr != nil {
		return nil, nsErr
	}
	return ln, err
}

// Forward makes the test's own loopback address addr (istiod, a backend) reachable at the same
// address inside n, as a pod reaches a cluster service: a listener in n, each connection spliced
// to a new one to addr here. It stops, and waits for its goroutines, when the test ends.
func (n *NetNS) Forward(t testing.TB, addr string) {
	t.Helper()
	ln, err := n.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("harness: forward %s into the namespace: %v", addr, err)
	}
	serveForward(t, ln, func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	})
}

// serveForward accepts on ln until the test ends and splices each connection to a new one from
// dial; it closes ln and every open connection, and waits for its goroutines, at the end.
func serveForward(t testing.TB, ln net.Listener, dial func(context.Context) (net.Conn, error)) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	track := func(c net.Conn, add bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if open == nil {
			return false
		}
		if add {
			open[c] = struct{}{}
		} else {
			delete(open, c)
		}
		return true
	}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		open = nil
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				forwardConn(in, dial, track)
			}()
		}
	}()
}

func forwardConn(in net.Conn, dial func(context.Context) (net.Conn, error), track func(net.Conn, bool) bool) {
	defer in.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	out, err := dial(ctx)
	cancel()
	if err != nil {
		return
	}
	defer out.Close()
	if !track(in, true) || !track(out, true) {
		return
	}
	defer track(in, false)
	defer track(out, false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		copyHalf(out, in)
	}()
	copyHalf(in, out)
	<-done
}

// copyHalf copies src to dst, then half-closes dst so the other side sees EOF.
func copyHalf(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && (err == nil || errors.Is(err, io.EOF)) {
		cw.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}
