package vmcontrol_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
	"github.com/ewgate/ewgate/registrar"
)

// adsOnce opens an ADS stream with registration and waits for its first response.
func adsOnce(t *testing.T, ctx context.Context, cc *grpc.ClientConn) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: vmNode("web", "10.0.0.5", "c1"), TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := ads.Recv(); err != nil {
		t.Fatal(err)
	}
	return ads
}

func TestControlPlaneRestartMidStream(t *testing.T) {
	s := startStandalone(t)
	cc := s.g.dial(t, s.p)
	ctx, cancel := context.WithCancel(withToken(t.Context(), token(t, vmNS, vmSA)))
	defer cancel()
	ads := adsOnce(t, ctx, cc)
	s.cpStop() // the control plane goes away mid-stream
	// The stream ends; how depends on how the upstream went (its server stopped mid-stream:
	// Unavailable or Canceled; its handler returned first: a clean end, EOF, passed on as is).
	// pilot-agent reconnects on any of them.
	_, err := ads.Recv()
	if code := status.Code(err); err == nil || err != io.EOF && code != codes.Unavailable && code != codes.Canceled {
		t.Fatalf("VM saw %v, want the stream to end (Unavailable, Canceled or EOF)", err)
	}
	s.startControlPlane()
	// The VM reconnects, as pilot-agent does, and is registered again under the same entry.
	var ads2 discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	testkit.Eventually(t, "the VM's new stream is served", func() bool {
		a, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			return false
		}
		a.Send(&discoveryv3.DiscoveryRequest{Node: vmNode("web", "10.0.0.5", "c1"), TypeUrl: resourcev3.ClusterType})
		if _, err := a.Recv(); err != nil {
			return false
		}
		ads2 = a
		return true
	})
	e := s.entry(t, entryName)
	if e == nil || e.Annotations[registrar.AnnotationConnectedAt] == "" || e.Annotations[registrar.AnnotationDisconnectedAt] != "" {
		t.Fatalf("entry after reconnect: %+v", e)
	}
	if n := s.entryCount(t); n != 1 {
		t.Fatalf("%d entries, want exactly 1", n)
	}
	ads2.CloseSend()
	cancel()
	s.waitGone(t, entryName)
	if n := s.entryCount(t); n != 0 {
		t.Fatalf("%d entries leaked", n)
	}
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func TestSlowVMIsNotBufferedWithoutBound(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityForward)
	cc := g.dial(t, p)
	before := heap()
	cs, err := cc.NewStream(withToken(t.Context(), token(t, vmNS, vmSA)), bidi, "/test.Echo/Flood")
	if err != nil {
		t.Fatal(err)
	}
	const n = 64 // 64 MiB from the upstream to a VM that does not read
	if err := cs.SendMsg(wrapperspb.String(strconv.Itoa(n))); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the upstream starts sending", func() bool { return u.flowSent.Load() >= 1 })
	// Watch the stalled stream for a while: the upstream must stay blocked far below n.
	var peak uint64
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		peak = max(peak, heap())
	}
	sent := u.flowSent.Load()
	growth := int64(peak) - int64(before)
	t.Logf("slow VM: upstream sent %d of %d 1 MiB messages before blocking; heap growth %.1f MiB", sent, n, float64(growth)/(1<<20))
	if sent > 8 || growth > 24<<20 {
		t.Fatalf("buffered without bound: %d messages sent, heap +%d bytes", sent, growth)
	}
	for i := range n {
		if err := cs.RecvMsg(&wrapperspb.BytesValue{}); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

func TestSlowUpstreamIsNotBufferedWithoutBound(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityForward)
	cc := g.dial(t, p)
	cs, err := cc.NewStream(withToken(t.Context(), token(t, vmNS, vmSA)), bidi, "/test.Echo/Stall")
	if err != nil {
		t.Fatal(err)
	}
	var sent sync.WaitGroup
	var count int
	var mu sync.Mutex
	payload := wrapperspb.Bytes(make([]byte, 1<<20))
	sent.Go(func() {
		for range 64 {
			if cs.SendMsg(payload) != nil {
				return
			}
			mu.Lock()
			count++
			mu.Unlock()
		}
	})
	before := heap()
	var peak uint64
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		peak = max(peak, heap())
	}
	mu.Lock()
	c := count
	mu.Unlock()
	t.Logf("slow upstream: the VM got %d of 64 1 MiB messages out; heap growth %.1f MiB", c, float64(int64(peak)-int64(before))/(1<<20))
	if c > 8 {
		t.Fatalf("%d messages accepted while the upstream reads nothing", c)
	}
	close(u.release)
	sent.Wait()
	cs.CloseSend()
	if err := cs.RecvMsg(&wrapperspb.StringValue{}); !errors.Is(err, io.EOF) {
		t.Fatalf("end of the stalled stream: %v", err)
	}
	if got := u.waitEnded(t, "/test.Echo/Stall"); len(got.msgs) != 64 {
		t.Fatalf("upstream got %d messages after release, want 64", len(got.msgs))
	}
}

func TestManyConcurrentStreams(t *testing.T) {
	n := 2000
	if raceEnabled {
		n = 600 // the race detector allows 8128 goroutines; each stream has ~5 in this process
	}
	const perConn = 4 // streams per VM connection (pilot-agent: ADS and the CA, sometimes more)
	p, u, g := setup(t, vmcontrol.IdentityForward, func(c *vmcontrol.Config) { c.Limits.MaxStreamsPerVM, c.Limits.MaxConnectionsPerSource = n, n })
	tok := token(t, vmNS, vmSA)
	ctx := withToken(t.Context(), tok)
	before := heap()
	start := time.Now()
	conns := make([]*grpc.ClientConn, n/perConn)
	for i := range conns {
		conns[i] = g.dial(t, p)
	}
	streams, err := openEchoStreams(ctx, conns, n, perConn)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	if elapsed > 60*time.Second {
		t.Fatalf("%d streams took %s", n, elapsed)
	}
	after := heap()
	per := float64(int64(after)-int64(before)) / float64(n)
	t.Logf("%d concurrent streams on %d connections set up in %s; heap per stream %.1f KiB (VM client, front and upstream together; the front alone: TestFrontMemoryPerStream), goroutines %d",
		n, len(conns), elapsed.Round(time.Millisecond), per/1024, runtime.NumGoroutine())
	if got := len(u.seen()); got != n {
		t.Fatalf("upstream saw %d streams, want %d", got, n)
	}
	if u.accepted.Load() > int64(vmcontrol.DefaultConnections) {
		t.Fatalf("%d upstream connections for %d VM streams; want them shared (%d)", u.accepted.Load(), n, vmcontrol.DefaultConnections)
	}
	for _, cs := range streams {
		cs.CloseSend()
	}
	for _, cs := range streams {
		cs.RecvMsg(&wrapperspb.StringValue{})
	}
}

// openEchoStreams opens n echo streams at once, perConn to a connection, and waits for each to
// have echoed one message; it returns the open streams or the first error.
func openEchoStreams(ctx context.Context, conns []*grpc.ClientConn, n, perConn int) ([]grpc.ClientStream, error) {
	streams := make([]grpc.ClientStream, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cs, err := conns[i/perConn].NewStream(ctx, bidi, "/test.Echo/Echo")
			if err == nil {
				err = cs.SendMsg(wrapperspb.String(fmt.Sprint(i)))
			}
			if err == nil {
				err = cs.RecvMsg(&wrapperspb.StringValue{})
			}
			streams[i] = cs
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	return streams, <-errs
}
