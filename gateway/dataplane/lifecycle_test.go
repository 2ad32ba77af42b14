package dataplane

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// A gateway's lifecycle under traffic: reloads, drains, half-closes, limits and idle timeouts.

func TestReloadUnderTrafficDropsNothing(t *testing.T) {
	pki := newPKI(t)
	oldBE := startBackend(t, pki, reviews)
	newBE := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", oldBE.addr())))

	const n = 8
	conns := make([]*tls.Conn, n)
	for i := range conns {
		conns[i] = meshClient(t, g, pki)
	}
	f, err := parseConfig([]byte(meshYAML("", cluster(reviews, "mesh", "round_robin", newBE.addr()))), "reload.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f.Relay.Engine = testRelay
	// Reload while the open connections are mid-stream.
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := bytes.Repeat([]byte{byte(i)}, 256<<10)
			got, err := exchange(c, msg)
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("bytes changed")
			}
			errs <- err
		}()
	}
	mesh := g.Addr("mesh").String()
	if err := g.Apply(f); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a connection open across the reload failed: %v", err)
		}
	}
	if g.Addr("mesh").String() != mesh {
		t.Fatal("reload re-bound an unchanged listener")
	}
	c, err := tls.Dial("tcp", mesh, pki.clientConfig(reviews, "istio"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(newBE.hellos()) != 1 || len(oldBE.hellos()) != n {
		t.Fatalf("after reload: old backend %d hellos, new %d; want %d and 1", len(oldBE.hellos()), len(newBE.hellos()), n)
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestDrainWaitsForOpenConnection(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	c := meshClient(t, g, pki)
	addr := g.addr("mesh")
	done := make(chan error, 1)
	go func() { done <- g.Shutdown(context.Background()) }()
	testkit.Eventually(t, "not ready", func() bool { return !g.Ready() })
	testkit.Eventually(t, "listener closed", func() bool {
		nc, err := net.Dial("tcp", addr)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while a connection was open", err)
	default:
	}
	got, err := exchange(c, []byte("still here"))
	if err != nil || string(got) != "still here" {
		t.Fatalf("open connection during drain: %q, %v", got, err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown after the last connection ended: %v", err)
	}
}

func TestDrainDeadlineClosesTheRest(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	c := meshClient(t, g, pki)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the drain period is over at once
	if err := g.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v; want context.Canceled", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after the drain deadline")
	}
	testkit.Eventually(t, "drained result", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"result": "drained"}) == 1
	})
}

func TestHalfCloseEachDirection(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML("", cluster(reviews, "mesh", "round_robin", be.addr())))
	c := meshClient(t, g, pki)
	// The client half-closes first: the backend sees EOF, still sends everything back, then
	// half-closes itself; the client reads all of it and then EOF.
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "ping" {
		t.Fatalf("after the client's half-close: %q, %v", got, err)
	}
}

func TestConnectionLimit(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	g := startGateway(t, meshYAML(", max_connections: 2", cluster(reviews, "mesh", "round_robin", be.addr())))
	var open []*tls.Conn
	for range 2 {
		open = append(open, meshClient(t, g, pki))
	}
	if c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio")); err == nil {
		c.Close()
		t.Fatal("third connection accepted over max_connections: 2")
	}
	testkit.Eventually(t, "over_limit = 1", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"listener": "mesh", "result": "over_limit"}) == 1
	})
	open[0].Close()
	testkit.Eventually(t, "a slot to free up", func() bool {
		c, err := tls.Dial("tcp", g.addr("mesh"), pki.clientConfig(reviews, "istio"))
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	open[1].Close()
}

func TestIdleTimeout(t *testing.T) {
	pki := newPKI(t)
	be := startBackend(t, pki, reviews)
	const idle = 300 * time.Millisecond
	g := startGateway(t, meshYAML(", idle_timeout: 300ms", cluster(reviews, "mesh", "round_robin", be.addr())))

	busy := meshClient(t, g, pki)
	quiet := meshClient(t, g, pki)

	// The quiet connection is cut; the busy one, trickling a byte every idle/3, survives
	// several idle periods.
	start := time.Now()
	quietClosed := make(chan error, 1)
	go func() {
		quiet.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err := quiet.Read(make([]byte, 1))
		quietClosed <- err
	}()
	buf := make([]byte, 1)
	for i := 0; time.Since(start) < 5*idle; i++ {
		if _, err := busy.Write([]byte{byte(i)}); err != nil {
			t.Fatalf("busy connection cut after %v: %v", time.Since(start), err)
		}
		busy.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(busy, buf); err != nil || buf[0] != byte(i) {
			t.Fatalf("busy connection cut after %v: %v", time.Since(start), err)
		}
		time.Sleep(idle / 3) // traffic pattern, not a wait for a condition
	}
	// Closed by the gateway, not by the test's own (much later) read deadline. How soon is not
	// asserted (a loaded machine delays timers); the metric below says it was the idle timeout.
	if err := <-quietClosed; err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("quiet connection: read returned %v; want it closed by the idle timeout", err)
	}
	testkit.Eventually(t, "idle_timeout result", func() bool {
		return g.counter("ewgate_connections_total", map[string]string{"result": "idle_timeout"}) == 1
	})
}

// dialRaw opens a plain TCP connection for hand-made bytes.
