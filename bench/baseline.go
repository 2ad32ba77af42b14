package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// BaseRun is one proxy's memory before any connection: freshly started, ready, then left
// idle for a moment (Plan.BaseIdleSeconds), summed over its processes (nginx: master and
// workers). Readiness is the proxy's own: ewgate's /healthz/ready on its admin address,
// HAProxy and nginx their listener accepting a TCP connection (closed at once, no TLS).
type BaseRun struct {
	Target   string  `json:"target"`
	Rep      int     `json:"rep"`
	Procs    int     `json:"processes"`
	RSSKiB   int64   `json:"rss_kib"`       // VmRSS
	AnonKiB  int64   `json:"rss_anon_kib"`  // RssAnon: heap, stacks, runtime data
	FileKiB  int64   `json:"rss_file_kib"`  // RssFile: the executable's and libraries' pages
	ShmemKiB int64   `json:"rss_shmem_kib"` // RssShmem (nginx's shared zones)
	Binary   int64   `json:"binary_bytes"`  // size of the main executable
	IdleSecs float64 `json:"idle_seconds"`  // how long it sat idle before the reading
}

// memInfo is the resident memory of a set of processes, from /proc/<pid>/status.
type memInfo struct{ rss, anon, file, shmem int64 }

// readMem sums VmRSS, RssAnon, RssFile and RssShmem (KiB) of the processes.
func readMem(pids []int) memInfo {
	var m memInfo
	for _, p := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			f := strings.Fields(v)
			if len(f) == 0 {
				continue
			}
			n, _ := strconv.ParseInt(f[0], 10, 64)
			switch k {
			case "VmRSS":
				m.rss += n
			case "RssAnon":
				m.anon += n
			case "RssFile":
				m.file += n
			case "RssShmem":
				m.shmem += n
			}
		}
	}
	return m
}

// baseline measures every proxy's RSS before any connection, alternating between the
// targets, each restarted fresh for every run.
func (s *session) baseline(ctx context.Context) error {
	s.logf("RSS before any connection: each proxy fresh, ready, idle %s, %d run(s)", s.pl.baseIdle, s.pl.reps)
	for rep := range s.pl.reps {
		for _, name := range s.o.Targets {
			if name == Direct {
				continue
			}
			t, err := s.fresh(ctx, name)
			if err != nil {
				return err
			}
			r, err := baseRun(ctx, t, s.pl.baseIdle)
			if err != nil {
				return err
			}
			r.Rep = rep
			s.res.Baseline = append(s.res.Baseline, r)
			s.logf("  %-8s %.1f MiB (anon %.1f, file %.1f) over %d process(es)", name, mib(r.RSSKiB), mib(r.AnonKiB), mib(r.FileKiB), r.Procs)
		}
	}
	return nil
}

// baseRun lets a freshly started, ready proxy sit idle for idle, then reads its memory.
func baseRun(ctx context.Context, t *target, idle time.Duration) (BaseRun, error) {
	r := BaseRun{Target: t.name, Procs: len(t.pids), IdleSecs: idle.Seconds()}
	timer := time.NewTimer(idle) // the idle period itself is what is measured: nothing to wait for
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-timer.C:
	}
	if t.p.exited() {
		return r, fmt.Errorf("bench: %s exited while idle: %v\n%s", t.name, t.p.err, t.p.tail())
	}
	m := readMem(t.pids)
	if m.rss == 0 {
		return r, fmt.Errorf("bench: %s: no VmRSS in /proc for pids %v", t.name, t.pids)
	}
	r.RSSKiB, r.AnonKiB, r.FileKiB, r.ShmemKiB = m.rss, m.anon, m.file, m.shmem
	if exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(t.pids[0]), "exe")); err == nil {
		if st, err := os.Stat(exe); err == nil {
			r.Binary = st.Size()
		}
	}
	return r, nil
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// baselineFigures adds the baseline rows to the report's table.
func (r *Results) baselineFigures(add func(key, name, unit string, higher bool, digits int, vals map[string][]float64)) {
	rss, anon, file := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for _, x := range r.Baseline {
		rss[x.Target] = append(rss[x.Target], mib(x.RSSKiB))
		anon[x.Target] = append(anon[x.Target], mib(x.AnonKiB))
		file[x.Target] = append(file[x.Target], mib(x.FileKiB))
	}
	idle := fmt.Sprintf("%gs", r.Meta.Plan.BaseIdleSeconds)
	add("baserss", "RSS before any connection (fresh, ready, idle "+idle+", all processes)", "MiB", false, 1, rss)
	add("baseanon", "of which anonymous (RssAnon: heap, stacks)", "MiB", false, 1, anon)
	add("basefile", "of which file-backed (RssFile: executable and libraries)", "MiB", false, 1, file)
}
