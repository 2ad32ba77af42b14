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
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
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

// LatencyRun is one fixed-rate request/response measurement.
type LatencyRun struct {
	Target  string    `json:"target"`
	Rep     int       `json:"rep"`
	Conns   int       `json:"conns"`
	Rate    int       `json:"rate_per_s"`
	Sent    int       `json:"sent"`
	Errors  int       `json:"errors"`
	P50     float64   `json:"p50_us"`
	P90     float64   `json:"p90_us"`
	P99     float64   `json:"p99_us"`
	P999    float64   `json:"p999_us"`
	Max     float64   `json:"max_us"`
	Samples []float64 `json:"-"` // µs, sorted
}

// latencyWarmUp is how long a latency rep sends before it keeps answers (at most half a target's
// time): the client starts a thread per sleeping sender and the targets wake from the previous
// step, and in the first second or so hundreds of answers took over 3 ms through any target,
// the direct connection included, which fell on the first targets' turns.
const latencyWarmUp = time.Second

// latencySlice is how long a target has the machine to itself in a latency rep before the next
// target's turn (at most a quarter of a target's time per rep).
const latencySlice = 250 * time.Millisecond

// latencyTurns returns the turn and the warm-up of a latency rep whose targets have dur each.
func latencyTurns(dur time.Duration) (turn, warmUp time.Duration) {
	return min(latencySlice, dur/4), min(latencyWarmUp, dur/2)
}

// latency measures the targets of one rep together. Each keeps conns persistent connections,
// all open at once; time is cut into slices handed to the targets in turn, and a target sends
// 1 KiB requests at rate per second in total (its connections' slots interleaved) during its own
// slices only, for dur of slices in all. A stall of the machine then falls on every target
// alike: on these shared 2-core VMs a 1 ms sleep oversleeps by 3-5 ms every second or two even
// when idle, and by tens of milliseconds now and then under load, which gave a run of one target
// at a time a p99 of milliseconds whenever such a stall fell in it, whichever target it was.
//
// Each latency is measured from the request's intended send time, not from when it was actually
// sent, so a stall counts for every request it delayed (no coordinated omission). The sender
// sleeps with nanosleep, its thread's timer slack set to 1 ns: Go's own timers round a
// sub-millisecond wait up to 1 ms when the process is idle, which would swamp tens of
// microseconds. The senders are not locked to threads: a locked goroutine woken by the
// netpoller (its answer arrived) must be handed to its own sleeping thread, and with hundreds of
// them that hand-off, not the target, made the p99 (5-16 ms measured from the actual send, for
// the direct connection too, against 0.2-0.6 ms unlocked).
func (c *client) latency(ctx context.Context, ts []*target, conns, rate int, dur time.Duration) ([]LatencyRun, error) {
	const size = 1024
	var open []*tls.Conn
	defer func() {
		for _, tc := range open {
			tc.Close()
		}
	}()
	for _, t := range ts {
		for range conns {
			tc, err := c.dial(ctx, t.addr, 5*time.Second)
			if err != nil {
				return nil, fmt.Errorf("bench: latency dial %s: %w", t.name, err)
			}
			open = append(open, tc)
			if err := echoOnce(tc, header(cmdEcho, size), size); err != nil {
				return nil, fmt.Errorf("bench: latency warm-up %s: %w", t.name, err)
			}
		}
	}
	n := len(ts)
	slice, warmUp := latencyTurns(dur)
	interval := time.Duration(float64(time.Second) * float64(conns) / float64(rate))
	start := time.Now().Add(20 * time.Millisecond)
	from := start.Add(warmUp) // answers to requests meant before are not kept
	end := from.Add(dur * time.Duration(n))
	per := make([][]float64, len(open)) // by connection: target i has open[i*conns:(i+1)*conns]
	errs := make([]atomic.Int64, n)
	var wg sync.WaitGroup
	for j, tc := range open {
		i, k := j/conns, j%conns
		mine := func(t time.Time) bool { return int(t.Sub(start)/slice)%n == i }
		first := start.Add(interval * time.Duration(k) / time.Duration(conns))
		wg.Go(func() { per[j] = c.requests(ctx, tc, first, interval, from, end, mine, &errs[i]) })
	}
	wg.Wait()
	runs := make([]LatencyRun, n)
	for i, t := range ts {
		r := LatencyRun{Target: t.name, Conns: conns, Rate: rate}
		for _, s := range per[i*conns : (i+1)*conns] {
			r.Samples = append(r.Samples, s...)
		}
		slices.Sort(r.Samples)
		r.Sent, r.Errors = len(r.Samples), int(errs[i].Load())
		if r.Sent == 0 {
			return nil, fmt.Errorf("bench: latency %s: no answers", t.name)
		}
		r.P50, r.P90, r.P99, r.P999 = pct(r.Samples, 50), pct(r.Samples, 90), pct(r.Samples, 99), pct(r.Samples, 99.9)
		r.Max = r.Samples[len(r.Samples)-1]
		runs[i] = r
	}
	return runs, nil
}

// requests sends a 1 KiB request on tc at first and every interval after it until end, at the
// times mine accepts, reads each answer, and returns the latencies (µs) from the intended times
// of the requests meant from on.
func (c *client) requests(ctx context.Context, tc *tls.Conn, first time.Time, interval time.Duration, from, end time.Time,
	mine func(time.Time) bool, errs *atomic.Int64) []float64 {
	const size = 1024
	req := make([]byte, size)
	req[0] = 'D'
	resp := make([]byte, size)
	var out []float64
	tc.SetDeadline(end.Add(5 * time.Second))
	for i := 0; ; i++ {
		intended := first.Add(interval * time.Duration(i))
		if !intended.Before(end) || ctx.Err() != nil {
			break
		}
		if !mine(intended) {
			continue
		}
		// nanosleep returns early with EINTR when the runtime preempts the thread (SIGURG):
		// sleep again until the intended time has really come.
		for n := 0; n < 1000; n++ {
			d := time.Until(intended)
			if d <= 0 {
				break
			}
			// The slack is the thread's, and this goroutine may run on any thread.
			syscall.RawSyscall(syscall.SYS_PRCTL, 29 /* PR_SET_TIMERSLACK */, 1, 0)
			ts := syscall.NsecToTimespec(int64(d))
			syscall.Nanosleep(&ts, nil)
		}
		if _, err := tc.Write(req); err != nil {
			errs.Add(1)
			break
		}
		if _, err := io.ReadFull(tc, resp); err != nil {
			errs.Add(1)
			break
		}
		if !intended.Before(from) {
			out = append(out, float64(time.Since(intended).Nanoseconds())/1e3)
		}
	}
	return out
}

// pct is the nearest-rank percentile of sorted samples.
func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
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
