package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// session owns the running targets of one Run and stops them all at the end.
type session struct {
	o       Options
	pl      plan
	env     peerEnv
	c       *client
	res     *Results
	logf    func(string, ...any)
	targets map[string]*target
}

func (s *session) get(ctx context.Context, name string) (*target, error) {
	if t := s.targets[name]; t != nil && (t.p == nil || !t.p.exited()) {
		return t, nil
	}
	t, err := startTarget(ctx, s.env, name)
	if err != nil {
		return nil, err
	}
	s.targets[name] = t
	return t, nil
}

// fresh restarts a proxy, so its memory is measured from a clean start.
func (s *session) fresh(ctx context.Context, name string) (*target, error) {
	s.targets[name].stop()
	delete(s.targets, name)
	return s.get(ctx, name)
}

func (s *session) stopAll() {
	for name, t := range s.targets {
		t.stop()
		delete(s.targets, name)
	}
}

func (s *session) measure(ctx context.Context) error {
	pl, c := s.pl, s.c
	verify := s.o.Mode == Tiny
	// Memory before any connection first, while no proxy has carried a byte.
	if err := s.baseline(ctx); err != nil {
		return err
	}
	// Every target first proves it carries bytes intact both ways.
	for _, name := range s.o.Targets {
		t, err := s.get(ctx, name)
		if err != nil {
			return err
		}
		if err := c.checkEcho(ctx, t, 16, 16<<10); err != nil {
			return err
		}
		if _, err := c.throughput(ctx, t, 2, 200*time.Millisecond, true); err != nil {
			return err
		}
		s.res.Integrity = append(s.res.Integrity, name)
	}
	s.logf("integrity: 256 KiB echoed and 200 ms of bulk data checked byte for byte through %s", strings.Join(s.o.Targets, ", "))

	for _, streams := range pl.bulkStreams {
		s.logf("throughput: %d stream(s), %d x %s per target", streams, pl.reps, pl.bulkDur)
		for rep := range pl.reps {
			for _, name := range s.o.Targets {
				t, err := s.get(ctx, name)
				if err != nil {
					return err
				}
				r, err := c.throughput(ctx, t, streams, pl.bulkDur, verify)
				if err != nil {
					return err
				}
				r.Rep = rep
				s.res.Throughput = append(s.res.Throughput, r)
				s.logf("  %-8s %2d streams: %.2f GB/s, %.3f CPU s/GB", name, streams, r.GBps, r.CPUPerGB)
			}
		}
	}
	for _, conc := range pl.rateConc {
		s.logf("connection rate: concurrency %d, %d x %s per target", conc, pl.reps, pl.rateDur)
		for rep := range pl.reps {
			for _, name := range s.o.Targets {
				t, err := s.get(ctx, name)
				if err != nil {
					return err
				}
				r := c.rate(ctx, t, conc, pl.rateDur)
				r.Rep = rep
				s.res.Rate = append(s.res.Rate, r)
				s.logf("  %-8s c=%-3d %7.0f conn/s, %d errors, %.0f CPU us/conn %s", name, conc, r.PerSec, r.Errors, r.CPUPerConn, r.FirstError)
				if verify && r.Errors > 0 {
					return fmt.Errorf("bench: %s: %d connection errors: %s", name, r.Errors, r.FirstError)
				}
			}
		}
	}
	turn, warmUp := latencyTurns(pl.latDur)
	s.logf("latency: %d connections per target, %d req/s of 1 KiB, %d x %s per target, targets in turns of %s after a warm-up of %s",
		pl.latConns, pl.latRate, pl.reps, pl.latDur, turn, warmUp)
	for rep := range pl.reps {
		order := turnOrder(len(s.o.Targets), rep)
		ts := make([]*target, len(order))
		for i, k := range order {
			t, err := s.get(ctx, s.o.Targets[k])
			if err != nil {
				return err
			}
			ts[i] = t
		}
		runtime.GC() // the client's garbage from the last step is not collected during this one
		runs, err := c.latency(ctx, ts, pl.latConns, pl.latRate, pl.latDur)
		if err != nil {
			return err
		}
		for _, r := range runs {
			r.Rep = rep
			s.res.Latency = append(s.res.Latency, r)
			s.logf("  %-8s p50 %.0f us, p99 %.0f us, p99.9 %.0f us (%d sent, %d errors)", r.Target, r.P50, r.P99, r.P999, r.Sent, r.Errors)
		}
	}
	s.logf("idle connections: up to %d per proxy, %d run(s) each, each proxy restarted fresh", pl.idleGoal, pl.idleReps)
	for rep := range pl.idleReps {
		for _, name := range s.o.Targets {
			if name == Direct {
				continue
			}
			t, err := s.fresh(ctx, name)
			if err != nil {
				return err
			}
			r, err := s.idleRun(ctx, t)
			if err != nil {
				return err
			}
			r.Rep = rep
			s.res.Idle = append(s.res.Idle, r)
			s.logf("  %-8s %d held (%d errors) in %.1fs: %.2f KiB and %.2f fds per connection %s", name, r.Reached, r.Errors, r.OpenSeconds, r.KiBPerConn, r.FDsPerConn, r.FirstError)
		}
	}
	return nil
}

func (s *session) idleRun(ctx context.Context, t *target) (IdleRun, error) {
	r := IdleRun{Target: t.name, Goal: s.pl.idleGoal}
	r.RSSBaseKiB, r.FDsBase = rssKiB(t.pids), fdCount(t.pids)
	var m0 map[string]float64
	if t.admin != "" {
		m0, _ = goMetrics(t.admin)
	}
	start := time.Now()
	held, bad, fe := s.c.idle(ctx, t, s.pl.idleGoal, 64, s.pl.idleLimit)
	defer release(held)
	r.OpenSeconds = time.Since(start).Seconds()
	r.Reached, r.Errors, r.FirstError = len(held), bad, fe
	if r.Reached == 0 {
		return r, fmt.Errorf("bench: %s held no idle connection: %s", t.name, fe)
	}
	r.RSSHeldKiB, r.FDsHeld = rssKiB(t.pids), fdCount(t.pids)
	n := float64(r.Reached)
	r.KiBPerConn = float64(r.RSSHeldKiB-r.RSSBaseKiB) / n
	r.FDsPerConn = float64(r.FDsHeld-r.FDsBase) / n
	if t.admin != "" {
		if m1, err := goMetrics(t.admin); err == nil && m0 != nil {
			r.Goroutines = (m1["go_goroutines"] - m0["go_goroutines"]) / n
			r.StackKiB = (m1["go_memstats_stack_inuse_bytes"] - m0["go_memstats_stack_inuse_bytes"]) / 1024 / n
			r.HeapKiB = (m1["go_memstats_heap_inuse_bytes"] - m0["go_memstats_heap_inuse_bytes"]) / 1024 / n
		}
	}
	return r, nil
}

// goMetrics reads the Go runtime gauges from ewgate's /metrics.
func goMetrics(admin string) (map[string]float64, error) {
	b, err := httpGet("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && strings.HasPrefix(f[0], "go_") {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out, sc.Err()
}

// profile captures ewgate CPU profiles (from its admin /debug/pprof/) under the connection-rate
// and bulk loads, outside the measured runs, and keeps pprof's top functions for the report.
// The profiles themselves stay in the work directory (they name the binary's path).
func (s *session) profile(ctx context.Context) error {
	if !contains(s.o.Targets, Ewgate) {
		return nil
	}
	t, err := s.fresh(ctx, Ewgate)
	if err != nil {
		return err
	}
	secs := s.pl.profileSecs
	dur := time.Duration(secs)*time.Second + 300*time.Millisecond
	conc := s.pl.rateConc[len(s.pl.rateConc)-1]
	streams := s.pl.bulkStreams[len(s.pl.bulkStreams)-1]
	loads := []struct {
		name, what string
		run        func()
	}{
		{"rate", fmt.Sprintf("connection rate, concurrency %d", conc), func() { s.c.rate(ctx, t, conc, dur) }},
		{"bulk", fmt.Sprintf("bulk transfer, %d streams", streams), func() { s.c.throughput(ctx, t, streams, dur, false) }},
	}
	for _, l := range loads {
		s.logf("profiling ewgate: %s, %ds", l.what, secs)
		file := filepath.Join(s.o.WorkDir, "ewgate-"+l.name+".pprof")
		var wg sync.WaitGroup
		wg.Go(l.run)
		body, err := httpGetTimeout(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", t.admin, secs), time.Duration(secs+15)*time.Second)
		wg.Wait()
		if err != nil {
			return err
		}
		if err := os.WriteFile(file, body, 0o644); err != nil {
			return err
		}
		flat, err := pprofTop(ctx, file, false)
		if err != nil {
			return err
		}
		cum, err := pprofTop(ctx, file, true)
		if err != nil {
			return err
		}
		s.res.Profiles = append(s.res.Profiles, Profile{Load: l.what, Seconds: secs, Flat: flat, Cum: cum})
	}
	return nil
}

// pprofTop returns pprof's top table, header and function lines only (no file names).
func pprofTop(ctx context.Context, file string, cum bool) ([]string, error) {
	args := []string{"tool", "pprof", "-top", "-nodecount=200"}
	if cum {
		args = append(args, "-cum")
	}
	cmd := exec.CommandContext(ctx, goTool(), append(args, file)...)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("bench: go tool pprof: %w", err)
	}
	var lines []string
	keep := false
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "flat%") {
			keep = true
		}
		if keep && strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
		if !keep && (strings.HasPrefix(l, "Showing nodes") || strings.HasPrefix(l, "Duration:")) {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return lines, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
