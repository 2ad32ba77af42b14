package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// client dials the targets like a sidecar would.
type client struct {
	tls *tls.Config
}

// dial opens a TLS connection (full handshake) to addr from a random loopback source address:
// spreading the client's sockets over 127.0.0.2-254 keeps TIME_WAIT from exhausting the
// ephemeral ports when tens of thousands of connections are opened a minute.
func (c *client) dial(ctx context.Context, addr string, timeout time.Duration) (*tls.Conn, error) {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+mrand.IntN(253)))}
	d := net.Dialer{Timeout: timeout, LocalAddr: src}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, c.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol != "istio" {
		raw.Close()
		return nil, errors.New("bench: ALPN istio not negotiated")
	}
	return tc, nil
}

// ThroughputRun is one bulk-transfer measurement.
type ThroughputRun struct {
	Target   string  `json:"target"`
	Rep      int     `json:"rep"`
	Streams  int     `json:"streams"`
	Bytes    int64   `json:"bytes"`
	Seconds  float64 `json:"seconds"`
	GBps     float64 `json:"gb_per_s"`
	ProxyCPU float64 `json:"proxy_cpu_s"`
	CPUPerGB float64 `json:"proxy_cpu_s_per_gb"`
	CtxPerMB float64 `json:"proxy_ctx_switches_per_mb"`
	Errors   int     `json:"errors"`
}

// throughput opens streams connections asking for bulk data, then reads for dur on all of them
// at once. The proxy's CPU is read just before and after the timed window.
func (c *client) throughput(ctx context.Context, t *target, streams int, dur time.Duration, verify bool) (ThroughputRun, error) {
	r := ThroughputRun{Target: t.name, Streams: streams}
	conns := make([]*tls.Conn, 0, streams)
	defer func() {
		for _, tc := range conns {
			tc.Close()
		}
	}()
	for range streams {
		tc, err := c.dial(ctx, t.addr, 5*time.Second)
		if err != nil {
			return r, fmt.Errorf("bench: throughput dial %s: %w", t.name, err)
		}
		conns = append(conns, tc)
		if _, err := tc.Write(header(cmdSource, 0)); err != nil {
			return r, err
		}
	}
	var total atomic.Int64
	var errs atomic.Int64
	var firstErr error
	var once sync.Once
	start := time.Now()
	end := start.Add(dur)
	cpu0, cs0 := cpuSeconds(t.pids), ctxSwitches(t.pids)
	var wg sync.WaitGroup
	for _, tc := range conns {
		wg.Go(func() {
			tc.SetReadDeadline(end)
			buf := make([]byte, 256<<10)
			var off int64
			for {
				n, err := tc.Read(buf)
				if verify && n > 0 {
					if !checkPattern(buf[:n], off) {
						once.Do(func() { firstErr = fmt.Errorf("bench: %s: bulk data corrupted at byte %d", t.name, off) })
						errs.Add(1)
						return
					}
				}
				off += int64(n)
				if err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						errs.Add(1)
					}
					break
				}
			}
			total.Add(off)
		})
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	cpu := cpuSeconds(t.pids) - cpu0
	cs := ctxSwitches(t.pids) - cs0
	r.Bytes, r.Seconds, r.Errors = total.Load(), el, int(errs.Load())
	r.GBps = float64(r.Bytes) / el / 1e9
	if len(t.pids) > 0 && r.Bytes > 0 {
		r.ProxyCPU = cpu
		r.CPUPerGB = cpu / (float64(r.Bytes) / 1e9)
		r.CtxPerMB = float64(cs) / (float64(r.Bytes) / 1e6)
	}
	if firstErr != nil {
		return r, firstErr
	}
	if r.Bytes == 0 {
		return r, fmt.Errorf("bench: %s: no bulk data arrived", t.name)
	}
	return r, nil
}

// checkPattern reports whether b is the source pattern from stream offset off.
func checkPattern(b []byte, off int64) bool {
	for len(b) > 0 {
		i := int(off % patternLen)
		n := min(len(b), patternLen-i)
		if !bytes.Equal(b[:n], pattern[i:i+n]) {
			return false
		}
		b, off = b[n:], off+int64(n)
	}
	return true
}

// RateRun is one connection-rate measurement.
type RateRun struct {
	Target      string  `json:"target"`
	Rep         int     `json:"rep"`
	Concurrency int     `json:"concurrency"`
	OK          int     `json:"ok"`
	Errors      int     `json:"errors"`
	Seconds     float64 `json:"seconds"`
	PerSec      float64 `json:"conns_per_s"`
	ProxyCPU    float64 `json:"proxy_cpu_s"`
	CPUPerConn  float64 `json:"proxy_cpu_us_per_conn"`
	CtxPerConn  float64 `json:"proxy_ctx_switches_per_conn"`
	FirstError  string  `json:"first_error,omitempty"`
}

// rate opens new connections from conc workers for dur: each a full TLS handshake through the
// proxy and one 16-byte exchange; the backend closes first.
func (c *client) rate(ctx context.Context, t *target, conc int, dur time.Duration) RateRun {
	r := RateRun{Target: t.name, Concurrency: conc}
	var ok, bad atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	end := start.Add(dur)
	cpu0, cs0 := cpuSeconds(t.pids), ctxSwitches(t.pids)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			msg := make([]byte, 16)
			buf := make([]byte, 64)
			for time.Now().Before(end) && ctx.Err() == nil {
				if err := c.ping(ctx, t.addr, msg, buf); err != nil {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	r.Seconds = time.Since(start).Seconds()
	r.OK, r.Errors = int(ok.Load()), int(bad.Load())
	r.PerSec = float64(r.OK) / r.Seconds
	if len(t.pids) > 0 && r.OK > 0 {
		r.ProxyCPU = cpuSeconds(t.pids) - cpu0
		r.CPUPerConn = r.ProxyCPU / float64(r.OK) * 1e6
		r.CtxPerConn = float64(ctxSwitches(t.pids)-cs0) / float64(r.OK)
	}
	if v, _ := firstErr.Load().(string); v != "" {
		r.FirstError = v
	}
	return r
}

func (c *client) ping(ctx context.Context, addr string, msg, buf []byte) error {
	tc, err := c.dial(ctx, addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	req := append(header(cmdPing, uint64(len(msg))), msg...)
	if _, err := tc.Write(req); err != nil {
		return err
	}
	if _, err := io.ReadFull(tc, buf[:len(msg)]); err != nil {
		return err
	}
	// The backend closes after its answer: reading to EOF lets it close first.
	if n, err := tc.Read(buf); err != io.EOF {
		return fmt.Errorf("bench: expected EOF after the answer, got %d bytes, %v", n, err)
	}
	return nil
}

// echoOnce sends the header and one frame of size bytes and checks the echo.
func echoOnce(tc *tls.Conn, hdr []byte, size int) error {
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	defer tc.SetDeadline(time.Time{})
	frame := make([]byte, size)
	rand.Read(frame)
	frame[0] = 'D'
	if _, err := tc.Write(append(hdr, frame...)); err != nil {
		return err
	}
	got := make([]byte, size)
	if _, err := io.ReadFull(tc, got); err != nil {
		return err
	}
	if !bytes.Equal(got, frame) {
		return errors.New("bench: echo differs from what was sent")
	}
	return nil
}

// checkEcho sends n random frames of size bytes through one connection and checks every
// echoed byte: the integrity check every target passes before it is measured.
func (c *client) checkEcho(ctx context.Context, t *target, n, size int) error {
	tc, err := c.dial(ctx, t.addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("bench: %s: %w", t.name, err)
	}
	defer tc.Close()
	hdr := header(cmdEcho, uint64(size))
	for i := range n {
		if err := echoOnce(tc, hdr, size); err != nil {
			return fmt.Errorf("bench: %s: frame %d: %w", t.name, i, err)
		}
		hdr = nil
	}
	return nil
}

// IdleRun is one memory-per-idle-connection measurement.
type IdleRun struct {
	Target      string  `json:"target"`
	Rep         int     `json:"rep"`
	Goal        int     `json:"goal"`
	Reached     int     `json:"reached"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	RSSBaseKiB  int64   `json:"rss_base_kib"`
	RSSHeldKiB  int64   `json:"rss_held_kib"`
	FDsBase     int     `json:"fds_base"`
	FDsHeld     int     `json:"fds_held"`
	KiBPerConn  float64 `json:"kib_per_conn"`
	FDsPerConn  float64 `json:"fds_per_conn"`
	Goroutines  float64 `json:"goroutines_per_conn,omitempty"`
	StackKiB    float64 `json:"stack_kib_per_conn,omitempty"`
	HeapKiB     float64 `json:"heap_kib_per_conn,omitempty"`
	OpenSeconds float64 `json:"open_seconds"`
}

// idle opens up to goal connections through the proxy (each with one small exchange, so both
// legs exist) and keeps them open and idle; it stops early when the proxy stops taking them
// (maxErrs failures). It returns the held connections for the caller to measure and release.
func (c *client) idle(ctx context.Context, t *target, goal, maxErrs int, limit time.Duration) ([]*tls.Conn, int, string) {
	const workers = 32
	var mu sync.Mutex
	held := make([]*tls.Conn, 0, goal)
	var next, bad atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(limit)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(goal) && bad.Load() < int64(maxErrs) && time.Now().Before(deadline) && ctx.Err() == nil {
				tc, err := c.dial(ctx, t.addr, 3*time.Second)
				if err == nil {
					if err = echoOnce(tc, header(cmdEcho, 16), 16); err != nil {
						tc.Close()
					}
				}
				if err != nil {
					bad.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				mu.Lock()
				held = append(held, tc)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fe, _ := firstErr.Load().(string)
	return held, int(bad.Load()), fe
}

// release ends held connections the way that leaves TIME_WAIT with the backend: it asks the
// backend to close, waits for the EOF, then closes.
func release(conns []*tls.Conn) {
	const workers = 32
	var next atomic.Int64
	var wg sync.WaitGroup
	quit := make([]byte, 16)
	copy(quit, quitFrame)
	for range workers {
		wg.Go(func() {
			buf := make([]byte, 64)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				tc := conns[i]
				tc.SetDeadline(time.Now().Add(3 * time.Second))
				if _, err := tc.Write(quit); err == nil {
					tc.Read(buf)
				}
				tc.Close()
			}
		})
	}
	wg.Wait()
}
