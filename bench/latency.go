package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The latency step: fixed-rate 1 KiB requests on persistent connections, the targets of a rep
// measured together in turns.

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

// turnOrder is the order of n targets' turns in latency rep rep. The turns cycle, so a target's
// turn always comes right after its predecessor's in the order: what the predecessor leaves
// behind (its threads going idle, the client's and backend's caches) falls on it. Rotating one
// order from rep to rep kept every predecessor: in a probe with that order, two instances of
// one build came out apart (one's p99.9 no worse than the other's in 41 of 60 reps), and level
// (29 of 60) with the order shuffled. So the order steps through the targets by a stride
// coprime with n that changes from rep to rep: with n prime, every target follows every other
// once in n-1 reps.
func turnOrder(n, rep int) []int {
	var strides []int
	for s := 1; s < max(n, 2); s++ {
		if gcd(s, n) == 1 {
			strides = append(strides, s)
		}
	}
	s := strides[rep%len(strides)]
	out := make([]int, n)
	for i := range out {
		out[i] = (rep + i*s) % n
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

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
