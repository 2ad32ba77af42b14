package vmcontrol_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// h2conn is a raw HTTP/2 client connection over real TLS, for what grpc-go will not send.
type h2conn struct {
	*tls.Conn
	fr *http2.Framer
}

// dialH2 opens a TLS connection from local (nil: any), sends the HTTP/2 preface and SETTINGS and
// returns the framer; the server's frames are not read.
func dialH2(t testing.TB, g *gateway, p *pki, local net.Addr) (*h2conn, error) {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{LocalAddr: local, Timeout: 10 * time.Second},
		Config: &tls.Config{RootCAs: p.serving.Pool(), ServerName: serverName, NextProtos: []string{"h2"}}}
	c, err := d.DialContext(t.Context(), "tcp", g.addr)
	if err != nil {
		return nil, err
	}
	tc := c.(*tls.Conn)
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		tc.Close()
		return nil, err
	}
	fr := http2.NewFramer(tc, tc)
	if err := fr.WriteSettings(); err != nil {
		tc.Close()
		return nil, err
	}
	return &h2conn{Conn: tc, fr: fr}, nil
}

// headerBlock is the HPACK block of a gRPC request with extra metadata fields.
func headerBlock(extra ...hpack.HeaderField) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"},
		{Name: ":path", Value: "/test.Echo/Echo"}, {Name: ":authority", Value: serverName},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...) {
		enc.WriteField(f)
	}
	return buf.Bytes()
}

// sendHeaders writes block as one HEADERS frame and CONTINUATION frames of 16 KiB; it returns
// the bytes written before the first error.
func (c *h2conn) sendHeaders(block []byte) (int, error) {
	const frag = 16 << 10
	first := block[:min(frag, len(block))]
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first,
		EndHeaders: len(first) == len(block)}); err != nil {
		return 0, err
	}
	n := len(first)
	for n < len(block) {
		end := min(n+frag, len(block))
		if err := c.fr.WriteContinuation(1, end == len(block), block[n:end]); err != nil {
			return n, err
		}
		n = end
	}
	return n, nil
}

// response reads frames until stream 1 ends (a HEADERS or RST_STREAM frame ending it) or the
// connection does; it returns nil for the end of the stream, else the read error.
func (c *h2conn) response() error {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if f.StreamID == 1 && f.StreamEnded() {
				return nil
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return nil
			}
		}
	}
}

// drain reads until the server closes the connection or 30s pass; it returns what ended it.
func (c *h2conn) drain() error {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	return err
}

// peakHeap runs attack on n connections at once and returns the highest HeapInuse seen while
// they run, and each connection's bytes written and error.
func peakHeap(t *testing.T, n int, attack func(i int) (int, error)) (uint64, []int, []error) {
	t.Helper()
	runtime.GC()
	written, errs := make([]int, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { written[i], errs[i] = attack(i) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var peak uint64
	var ms runtime.MemStats
	for {
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
		select {
		case <-done:
			return peak, written, errs
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// TestOversizedHeadersAreNotBuffered: ten connections each send a request whose metadata is
// 15 MiB (one huge field, or thousands of small fields across CONTINUATION frames) before any
// authentication. The front must drop them at limits.max_header_bytes and close those
// connections, and the heap must stay where the same ten connections with small metadata
// leave it. (Before the bound, gRPC's 16 MiB default held all of it: 47 MB to 876 MB.)
func TestOversizedHeadersAreNotBuffered(t *testing.T) {
	const conns = 10
	const size = 15 << 20
	p, u, g := setup(t, vmcontrol.IdentityForward)
	huge := headerBlock(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", size)})
	var fields []hpack.HeaderField
	for i := 0; i < size/1024; i++ {
		fields = append(fields, hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: strings.Repeat("b", 1000)})
	}
	many := headerBlock(fields...)
	fields = nil
	small := headerBlock(hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", 1024)})

	run := func(block []byte) func(int) (int, error) {
		return func(int) (int, error) {
			c, err := dialH2(t, g, p, nil)
			if err != nil {
				return 0, err
			}
			defer c.Close()
			n, werr := c.sendHeaders(block)
			if len(block) < 64<<10 {
				return n, errors.Join(werr, c.response()) // the front answers and keeps the connection
			}
			if rerr := c.drain(); werr == nil && !errors.Is(rerr, io.EOF) {
				werr = rerr
			}
			return n, werr
		}
	}
	peakSmall, _, errs := peakHeap(t, conns, run(small))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("small metadata, connection %d: %v", i, err)
		}
	}
	for _, tc := range []struct {
		name  string
		block []byte
	}{{"one 15 MiB field", huge}, {"15 MiB of 1 KiB fields in CONTINUATION frames", many}} {
		peak, written, errs := peakHeap(t, conns, run(tc.block))
		ratio := float64(peak) / float64(peakSmall)
		t.Logf("%s: heap in use at peak %.1f MiB against %.1f MiB with small metadata (x%.2f); bytes written %v",
			tc.name, float64(peak)/(1<<20), float64(peakSmall)/(1<<20), ratio, written)
		for i := range conns {
			if written[i] == len(tc.block) && errs[i] == nil {
				t.Errorf("%s: connection %d sent all %d bytes of metadata and was not closed", tc.name, i, len(tc.block))
			}
		}
		if ratio > 1.5 {
			t.Errorf("%s: heap in use rose to x%.2f of the small-metadata run: metadata is being buffered", tc.name, ratio)
		}
	}
	if n := len(u.seen()); n != 0 {
		t.Fatalf("the upstream got %d calls", n)
	}
}

// TestHeaderListOverTheLimitIsResetAndCounted: metadata a little over limits.max_header_bytes
// (here a field repeated through HPACK's dynamic table: a 2 KiB block decoding to 100 KiB) gets
// its stream reset with FRAME_SIZE_ERROR, counted as header_size; the connection stays.
func TestHeaderListOverTheLimitIsResetAndCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)}},
		vmcontrol.Options{Registerer: reg})
	fields := make([]hpack.HeaderField, 100)
	for i := range fields {
		fields[i] = hpack.HeaderField{Name: "x-pad", Value: strings.Repeat("a", 1000)}
	}
	block := headerBlock(fields...)
	c, err := dialH2(t, g, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.sendHeaders(block); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no reset of the stream (block of %d bytes): %v", len(block), err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok && rst.StreamID == 1 {
			if rst.ErrCode != http2.ErrCodeFrameSize {
				t.Fatalf("reset with %v, want FRAME_SIZE_ERROR", rst.ErrCode)
			}
			break
		}
	}
	testkit.Eventually(t, "the reset is counted", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_limits_total", map[string]string{"limit": "header_size"}) == 1
	})
	if err := c.fr.WritePing(false, [8]byte{1}); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("the connection did not stay: %v", err)
		}
		if ping, ok := f.(*http2.PingFrame); ok && ping.IsAck() {
			break
		}
	}
}
