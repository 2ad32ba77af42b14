package vmcontrol_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// memoryChildEnv names the directory of the test's files when the test binary runs as the VM
// side of TestFrontMemoryPerStream (see TestMain).
const memoryChildEnv = "EWGATE_FRONT_MEMORY_CHILD"

// TestFrontMemoryPerStream measures what ewgate alone holds per open VM stream. The VM clients
// and the upstream run in a child process (this test binary, re-executed), so the heap and
// goroutine stacks of this process are the front's, plus a harness that does not change while
// the streams open. In TestManyConcurrentStreams all three share one heap and cannot be told
// apart: attributing by difference (clients alone, then clients and front) would also move the
// upstream's cost from 500 connections to the front's 2 shared ones.
func TestFrontMemoryPerStream(t *testing.T) {
	n := 2000
	if raceEnabled {
		n = 600 // the race detector allows 8128 goroutines per process
	}
	const perConn = 4
	p := newPKI(t)
	p.serving.Server(t, upstreamName).WriteFiles(t, p.dir, "upstream")
	testkit.WriteFile(t, p.dir, "token", []byte(token(t, vmNS, vmSA)))

	child := startMemoryChild(t, p.dir)
	upAddr := child.expect(t, "upstream")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{
		{Cluster: "c1", Address: upAddr, CAFile: p.servingFile, ServerName: upstreamName}},
		Limits: vmcontrol.LimitsConfig{MaxStreamsPerVM: n, MaxConnectionsPerSource: n}}, vmcontrol.Options{})

	settle(t) // connections of earlier tests in this process finish closing before the baseline
	before, goBefore := memNow()
	fmt.Fprintf(child.stdin, "front %s %d %d\n", g.addr, n, perConn)
	took := child.expect(t, "ready")
	after, goAfter := memNow()
	heapPer := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
	stackPer := float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n)
	t.Logf("ewgate alone, %d open streams on %d VM connections (set up in %s by a child process): heap %.1f KiB + goroutine stacks %.1f KiB per stream, %.2f goroutines per stream",
		n, n/perConn, took, heapPer/1024, stackPer/1024, float64(goAfter-goBefore)/float64(n))
	if heapPer+stackPer > 256<<10 {
		t.Fatalf("%.0f bytes per stream", heapPer+stackPer)
	}
	child.stdin.Close() // the child closes its streams and exits
	child.expect(t, "done")
}

// settle waits until the number of goroutines has not changed for 100ms: what earlier tests
// closed has exited, and its memory can be collected.
func settle(t *testing.T) {
	t.Helper()
	last, since := -1, time.Now()
	testkit.Eventually(t, "the goroutine count settles", func() bool {
		if n := runtime.NumGoroutine(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) >= 100*time.Millisecond
	})
}

// memNow is the live heap after two collections: the first moves sync.Pool contents (gRPC's
// and crypto/tls's buffers, some left by earlier tests) to the victim cache, the second frees them.
func memNow() (runtime.MemStats, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m, runtime.NumGoroutine()
}

// memoryChildProc is the re-executed test binary and its protocol: one line per step,
// "<word> <value>" from the child, "front <addr> <streams> <streams per connection>" to it.
type memoryChildProc struct {
	stdin io.WriteCloser
	lines chan string
}

func startMemoryChild(t *testing.T, dir string) *memoryChildProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), memoryChildEnv+"="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &memoryChildProc{stdin: stdin, lines: make(chan string, 8)}
	var read sync.WaitGroup
	read.Go(func() {
		defer close(c.lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	})
	t.Cleanup(func() {
		stdin.Close()
		err := cmd.Wait()
		pw.Close()
		read.Wait()
		if err != nil {
			t.Errorf("memory child: %v\n%s", err, stderr.String())
		}
	})
	return c
}

// expect waits for the child's next line, which must start with word, and returns the rest.
func (c *memoryChildProc) expect(t *testing.T, word string) string {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatalf("memory child exited before %q", word)
		}
		rest, found := strings.CutPrefix(l, word+" ")
		if !found {
			t.Fatalf("memory child: %q, want %q", l, word)
		}
		return rest
	case <-time.After(2 * time.Minute):
		t.Fatalf("memory child: no %q within 2 minutes", word)
	}
	return ""
}

// memoryChild is the VM side: an echo upstream, then VM clients through the front. It talks to
// the parent on stdin and stdout and returns the exit code.
func memoryChild(dir string) int {
	if err := runMemoryChild(dir, os.Stdin, os.Stdout); err != nil {
		fmt.Printf("error %v\n", err)
		return 1
	}
	return 0
}

func runMemoryChild(dir string, in io.Reader, out io.Writer) error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "upstream.crt"), filepath.Join(dir, "upstream.key"))
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)), grpc.ForceServerCodec(rawBytes{}),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			for {
				m := &msg{}
				if err := ss.RecvMsg(m); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if err := ss.SendMsg(m); err != nil {
					return err
				}
			}
		}))
	go gs.Serve(ln)
	defer gs.Stop()
	fmt.Fprintf(out, "upstream %s\n", ln.Addr())

	sc := bufio.NewScanner(in)
	if !sc.Scan() {
		return errors.New("no front address")
	}
	var addr string
	var n, perConn int
	if _, err := fmt.Sscanf(sc.Text(), "front %s %d %d", &addr, &n, &perConn); err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "serving-ca.pem"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: serverName})
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+string(tok)))
	defer cancel()

	start := time.Now()
	conns := make([]*grpc.ClientConn, (n+perConn-1)/perConn)
	for i := range conns {
		if conns[i], err = grpc.NewClient(addr, grpc.WithTransportCredentials(creds)); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	streams, err := openEchoStreams(ctx, conns, n, perConn)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "ready %s\n", time.Since(start).Round(time.Millisecond))

	for sc.Scan() { // until the parent closes stdin
	}
	for _, cs := range streams {
		cs.CloseSend()
	}
	for _, cs := range streams {
		cs.RecvMsg(&wrapperspb.StringValue{})
	}
	fmt.Fprintf(out, "done %d\n", n)
	return nil
}
