package bench

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHarnessTiny runs the whole harness in its tiny mode against every target: HAProxy and
// nginx are installed if missing, ewgate is built in release mode. Every target must carry
// bytes intact both ways (the harness checks echo and bulk data byte for byte before measuring
// and fails otherwise), and the report, the JSON and the charts must be written.
func TestHarnessTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("builds ewgate and starts real proxies")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out := t.TempDir()
	res, base, err := Run(ctx, Options{
		Mode: Tiny, Repo: "..", WorkDir: t.TempDir(), OutDir: out, Host: "test",
		NoControl: true, Log: testWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Integrity) != len(AllTargets) {
		t.Fatalf("integrity checked for %v, want every target", res.Integrity)
	}
	for _, name := range AllTargets {
		var bulk, conns int
		for _, r := range res.Throughput {
			if r.Target == name && r.Bytes > 0 {
				bulk++
			}
		}
		for _, r := range res.Rate {
			if r.Target == name {
				conns += r.OK
				if r.Errors > 0 {
					t.Errorf("%s: %d connection errors: %s", name, r.Errors, r.FirstError)
				}
			}
		}
		if bulk == 0 || conns == 0 {
			t.Errorf("%s: bulk runs with data %d, connections %d", name, bulk, conns)
		}
	}
	baseRuns := map[string]int{}
	for _, r := range res.Baseline {
		baseRuns[r.Target]++
		// The kernel's VmRSS is exactly RssAnon + RssFile + RssShmem.
		if r.RSSKiB <= 0 || r.AnonKiB <= 0 || r.FileKiB <= 0 || r.AnonKiB+r.FileKiB+r.ShmemKiB != r.RSSKiB || r.Binary <= 0 {
			t.Errorf("%s: RSS before any connection %+v", r.Target, r)
		}
	}
	for _, name := range AllTargets {
		if want := map[bool]int{true: 0, false: planFor(Tiny).reps}[name == Direct]; baseRuns[name] != want {
			t.Errorf("%s: %d RSS-before-any-connection runs, want %d", name, baseRuns[name], want)
		}
	}
	for _, r := range res.Idle {
		if r.Reached != r.Goal || r.FDsPerConn <= 0 {
			t.Errorf("%s: idle %d of %d, %.2f fds per connection", r.Target, r.Reached, r.Goal, r.FDsPerConn)
		}
	}
	b, err := os.ReadFile(base + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("JSON: %v", err)
	}
	if len(back.Figures) == 0 || len(back.Throughput) != len(res.Throughput) || len(back.Baseline) != len(res.Baseline) {
		t.Errorf("JSON has %d figures, %d throughput runs, %d baseline runs", len(back.Figures), len(back.Throughput), len(back.Baseline))
	}
	if f, ok := back.figure("baserss"); !ok || len(f.Values) != len(AllTargets)-1 {
		t.Errorf("JSON figure baserss: %+v", f)
	}
	md, err := os.ReadFile(base + ".md")
	if err != nil || !strings.Contains(string(md), "| RSS before any connection") {
		t.Errorf("the report has no RSS-before-any-connection row (%v)", err)
	}
	for _, f := range []string{".md", "-throughput.png", "-rate.png", "-memory.png", "-latency.png"} {
		if st, err := os.Stat(base + f); err != nil || st.Size() == 0 {
			t.Errorf("missing output %s: %v", filepath.Base(base+f), err)
		}
	}
}

func TestPatternAndPercentiles(t *testing.T) {
	if !checkPattern(pattern[100:70000], 100) || checkPattern(pattern[100:200], 101) {
		t.Error("checkPattern")
	}
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct{ p, want float64 }{{50, 5}, {90, 9}, {99, 10}, {0, 1}} {
		if got := pct(s, c.p); got != c.want {
			t.Errorf("pct(%v) = %v, want %v", c.p, got, c.want)
		}
	}
	st := statOf([]float64{3, 1, 2, 10})
	if st.Median != 2.5 || st.Min != 1 || st.Max != 10 || st.N != 4 {
		t.Errorf("statOf: %+v", st)
	}
	cb := parseBench("authn", "BenchmarkVerifyCached-2   \t 1000\t  950.5 ns/op\t 1052000 verifications/s\t 120 B/op\t 3 allocs/op\n")
	if len(cb) != 1 || cb[0].Name != "BenchmarkVerifyCached" || cb[0].Metrics["verifications/s"][0] != 1052000 {
		t.Errorf("parseBench: %+v", cb)
	}
}

// TestPairedRuns: a rep counts when ewgate and HAProxy both ran in it; ties go to ewgate.
func TestPairedRuns(t *testing.T) {
	r := &Results{Latency: []LatencyRun{
		{Target: Ewgate, Rep: 0, P99: 300}, {Target: HAProxy, Rep: 0, P99: 400},
		{Target: Ewgate, Rep: 1, P99: 900}, {Target: HAProxy, Rep: 1, P99: 500},
		{Target: Ewgate, Rep: 2, P99: 500}, {Target: HAProxy, Rep: 2, P99: 500}, {Target: Direct, Rep: 2, P99: 100},
		{Target: Ewgate, Rep: 3, P99: 100}, // HAProxy missing: not a pair
	}}
	won, runs := pairedRuns(r, func(x LatencyRun) float64 { return x.P99 })
	if won != 2 || runs != 3 {
		t.Errorf("pairedRuns = %d of %d, want 2 of 3", won, runs)
	}
}

// TestTurnOrder: every rep's order is a permutation of the targets, and with 5 targets (prime)
// each target follows each other exactly once in the cycles of 4 reps (rotating one order gave
// every target the same predecessor in every rep).
func TestTurnOrder(t *testing.T) {
	for _, n := range []int{1, 2, 4, 5, 6} {
		for rep := range 8 {
			o := turnOrder(n, rep)
			seen := map[int]bool{}
			for _, k := range o {
				seen[k] = true
			}
			if len(o) != n || len(seen) != n {
				t.Fatalf("turnOrder(%d, %d) = %v: not a permutation", n, rep, o)
			}
		}
	}
	follows := map[[2]int]int{}
	for rep := range 4 {
		o := turnOrder(5, rep)
		for i := range o {
			follows[[2]int{o[(i+4)%5], o[i]}]++
		}
	}
	if len(follows) != 20 {
		t.Fatalf("in 4 reps of 5 targets, %d (predecessor, target) pairs occur; want all 20 once: %v", len(follows), follows)
	}
}

// TestReadMem reads this test process's own memory: the parts must add up to VmRSS.
func TestReadMem(t *testing.T) {
	buf := make([]byte, 8<<20)
	for i := range buf {
		buf[i] = byte(i) // touch it, so RssAnon holds at least these 8 MiB
	}
	m := readMem([]int{os.Getpid()})
	if m.anon < 8<<10 || m.file <= 0 || m.anon+m.file+m.shmem != m.rss {
		t.Errorf("readMem: %+v", m)
	}
	if buf[len(buf)-1] != byte(len(buf)-1) {
		t.Fatal("buffer changed")
	}
	if got := readMem([]int{os.Getpid(), os.Getpid()}); got.rss < 2*m.rss-4096 {
		t.Errorf("two readings of one pid sum to %d KiB, one was %d KiB", got.rss, m.rss)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
