package dataplane

// One listener's flood must not take the others' files: the gateway runs in a child process
// (this test binary, see runChildGateway) with a low open-file limit of its own, so the flood's
// clients and backends in this process do not share it.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ewgate/ewgate/gateway/testkit"
)

const (
	childEnv       = "EWGATE_TEST_CHILD_GATEWAY" // the config the child serves
	childNofileEnv = "EWGATE_TEST_CHILD_NOFILE"  // the child's open-file limit
)

// runChildGateway serves the config in $EWGATE_TEST_CHILD_GATEWAY with the open-file limit
// $EWGATE_TEST_CHILD_NOFILE, prints "<listener>=<address>" for each listener on one line, and
// shuts down when its standard input closes.
func runChildGateway() int {
	nofile, err := strconv.ParseUint(os.Getenv(childNofileEnv), 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child gateway:", childNofileEnv, err)
		return 2
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(os.Stderr, "child gateway:", err)
		return 2
	}
	rl.Cur = nofile
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Fprintln(os.Stderr, "child gateway:", err)
		return 2
	}
	f, err := parseConfig([]byte(os.Getenv(childEnv)), "child.yaml")
	if err != nil {
		fmt.Fprintln(os.Stderr, "child gateway:", err)
		return 2
	}
	f.Relay.Engine = testRelay
	g := New(Options{})
	if err := g.Apply(f); err != nil {
		fmt.Fprintln(os.Stderr, "child gateway:", err)
		return 1
	}
	var addrs []string
	for _, l := range f.Listeners {
		addrs = append(addrs, l.Name+"="+g.Addr(l.Name).String())
	}
	fmt.Println(strings.Join(addrs, " "))
	io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	g.Shutdown(ctx)
	return 0
}

// startChildGateway runs a gateway on yaml in a child process limited to nofile open files and
// returns its listeners' addresses.
func startChildGateway(t *testing.T, yaml string, nofile int) map[string]string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+yaml, childNofileEnv+"="+strconv.Itoa(nofile), relayEnv+"="+testRelay)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill() // by its own PID: the child this test started
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("child gateway did not start: %v", err)
	}
	addrs := map[string]string{}
	for _, kv := range strings.Fields(line) {
		k, v, _ := strings.Cut(kv, "=")
		addrs[k] = v
	}
	return addrs
}

// A flood of valid hellos on the ingress listener, held open by a backend that accepts and
// never answers, from 8 source addresses, used to take every file of the process (the mesh
// listener then fell to 0% success): each listener now has its share of the open-file limit,
// so a steady mesh client is served on every attempt while the flood goes on.
func TestIngressFloodLeavesTheMeshItsFiles(t *testing.T) {
	const nofile = 1024
	pki := newPKI(t)
	meshBE := startBackend(t, pki, reviews)
	ingressHello := helloBytes(t, "app.example.com", nil)
	var held atomic.Int64
	slowBE := startRawBackend(t, len(ingressHello), func(c *net.TCPConn) {
		held.Add(1)
		io.Copy(io.Discard, c) // never answers; ends when the test closes it
	})
	yaml := `listeners:
  - {name: mesh, kind: mesh, address: 127.0.0.1:0}
  - name: ingress
    kind: ingress
    address: 127.0.0.1:0
    routes: [{hosts: [app.example.com], cluster: app}]
clusters:
` + cluster(reviews, "mesh", "round_robin", meshBE.addr()) + cluster("app", "ingress", "round_robin", slowBE.ln.Addr().String())
	addrs := startChildGateway(t, yaml, nofile)
	per := FilesPerConnEpoll
	if testRelay == RelayGoroutines {
		per = FilesPerConnGoroutines
	}
	share := (nofile - FDReserve) / (2 * per) // what each listener gets (PlanFiles)

	var (
		mu    sync.Mutex
		flood []net.Conn
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	defer func() {
		stop.Store(true)
		wg.Wait()
		for _, c := range flood {
			c.Close()
		}
	}()
	floodOne := func(i int) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%8))}, Timeout: 2 * time.Second}
		c, err := d.Dial("tcp", addrs["ingress"])
		if err != nil {
			return
		}
		c.Write(ingressHello)
		mu.Lock()
		flood = append(flood, c)
		mu.Unlock()
	}
	// The first wave: more connections than the whole limit could hold.
	var next atomic.Int64
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)); i <= nofile && !stop.Load(); i = int(next.Add(1)) {
				floodOne(i)
			}
		}()
	}
	testkit.Eventually(t, "the flood to hold the ingress listener's share", func() bool { return held.Load() >= int64(share) })
	// The flood goes on (bounded) while the mesh client works.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 2000 && !stop.Load(); i++ {
			floodOne(i)
		}
	}()

	const attempts = 40
	ok, failed := 0, 0
	var firstErr error
	for range attempts {
		err := func() error {
			d := net.Dialer{Timeout: 3 * time.Second}
			raw, err := d.Dial("tcp", addrs["mesh"])
			if err != nil {
				return err
			}
			defer raw.Close()
			raw.SetDeadline(time.Now().Add(3 * time.Second))
			c := tls.Client(raw, pki.clientConfig(reviews, "istio"))
			got, err := exchange(c, []byte("steady"))
			if err == nil && string(got) != "steady" {
				err = fmt.Errorf("echo %q", got)
			}
			return err
		}()
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
			if failed == 3 { // enough to know; each failure waits for its deadline
				break
			}
			continue
		}
		ok++
	}
	if ok != attempts {
		t.Fatalf("mesh client under an ingress flood: %d of %d attempts succeeded (first error: %v); the flood holds %d backend connections",
			ok, ok+failed, firstErr, held.Load())
	}
	if h := held.Load(); h > int64(share) {
		t.Fatalf("the flood holds %d ingress connections; the listener's share is %d", h, share)
	}
	t.Logf("%s relay, open-file limit %d: ingress flood held %d connections (share %d); mesh %d/%d",
		testRelay, nofile, held.Load(), share, ok, attempts)
}
