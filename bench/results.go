package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Results is everything one run measured; it is written as JSON next to the report.
type Results struct {
	Meta       Meta            `json:"meta"`
	Integrity  []string        `json:"integrity_checked"`
	Throughput []ThroughputRun `json:"throughput"`
	Rate       []RateRun       `json:"rate"`
	Latency    []LatencyRun    `json:"latency"`
	Baseline   []BaseRun       `json:"baseline"`
	Idle       []IdleRun       `json:"idle"`
	Control    []ControlBench  `json:"control"`
	Profiles   []Profile       `json:"profiles"`
	Figures    []Figure        `json:"figures"`
	// LatencyCurves: per target, percentiles of all latency samples of all runs (µs).
	LatencyCurves map[string][]Point `json:"latency_curves"`
	Notes         []string           `json:"notes,omitempty"`
}

// Meta describes the run.
type Meta struct {
	Date      string            `json:"date"`
	Host      string            `json:"host"`
	Mode      Mode              `json:"mode"`
	Seconds   float64           `json:"seconds"`
	GoVersion string            `json:"go_version"`
	Kernel    string            `json:"kernel"`
	CPU       string            `json:"cpu"`
	CPUs      int               `json:"cpus"`
	Workers   int               `json:"workers"`
	Versions  map[string]string `json:"versions"`
	Targets   []string          `json:"targets"`
	Plan      PlanInfo          `json:"plan"`
	NoFile    string            `json:"nofile_limit"`
}

// PlanInfo is the plan in the JSON.
type PlanInfo struct {
	Reps            int     `json:"reps"`
	BulkSeconds     float64 `json:"bulk_seconds"`
	BulkStreams     []int   `json:"bulk_streams"`
	RateSeconds     float64 `json:"rate_seconds"`
	RateConc        []int   `json:"rate_concurrency"`
	LatencyConns    int     `json:"latency_conns"`
	LatencyRate     int     `json:"latency_rate"`
	LatencySecs     float64 `json:"latency_seconds"`
	IdleGoal        int     `json:"idle_goal"`
	IdleReps        int     `json:"idle_reps"`
	BaseIdleSeconds float64 `json:"base_idle_seconds"`
	ControlBench    string  `json:"control_benchtime"`
	ControlCount    int     `json:"control_count"`
}

// Profile is the top of one pprof CPU profile of ewgate.
type Profile struct {
	Load    string   `json:"load"`
	Seconds int      `json:"seconds"`
	Flat    []string `json:"flat"`
	Cum     []string `json:"cum"`
}

// Point is one percentile of a latency distribution.
type Point struct {
	Percentile float64 `json:"percentile"`
	Micros     float64 `json:"us"`
}

// Stat is the median, min and max over the runs of one figure.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"runs"`
}

// Figure is one row of the report's table.
type Figure struct {
	Key    string          `json:"key"`
	Name   string          `json:"name"`
	Unit   string          `json:"unit"`
	Higher bool            `json:"higher_is_better"`
	Values map[string]Stat `json:"values"`
	Digits int             `json:"-"`
}

func newResults(o Options, pl plan, version string) *Results {
	m := Meta{
		Date: time.Now().Format("2006-01-02"), Host: o.Host, Mode: o.Mode,
		GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Targets: o.Targets,
		Versions: peerVersions(),
		Plan: PlanInfo{Reps: pl.reps, BulkSeconds: pl.bulkDur.Seconds(), BulkStreams: pl.bulkStreams,
			RateSeconds: pl.rateDur.Seconds(), RateConc: pl.rateConc, LatencyConns: pl.latConns,
			LatencyRate: pl.latRate, LatencySecs: pl.latDur.Seconds(), IdleGoal: pl.idleGoal,
			IdleReps: pl.idleReps, BaseIdleSeconds: pl.baseIdle.Seconds(), ControlBench: pl.benchtime, ControlCount: pl.benchCount},
	}
	m.Versions[Ewgate] = version
	if b, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := exec.Command("sh", "-c", "ulimit -Sn; ulimit -Hn").Output(); err == nil {
		m.NoFile = strings.Join(strings.Fields(string(b)), " soft, ") + " hard"
	}
	return &Results{Meta: m}
}

// compute fills Figures and LatencyCurves from the runs.
func (r *Results) compute() {
	r.Figures = nil
	add := func(key, name, unit string, higher bool, digits int, vals map[string][]float64) {
		f := Figure{Key: key, Name: name, Unit: unit, Higher: higher, Digits: digits, Values: map[string]Stat{}}
		for t, v := range vals {
			if len(v) > 0 {
				f.Values[t] = statOf(v)
			}
		}
		if len(f.Values) > 0 {
			r.Figures = append(r.Figures, f)
		}
	}
	for _, n := range r.Meta.Plan.BulkStreams {
		gb, cpu, cs := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
		for _, x := range r.Throughput {
			if x.Streams == n {
				gb[x.Target] = append(gb[x.Target], x.GBps)
				if x.Target != Direct {
					cpu[x.Target] = append(cpu[x.Target], x.CPUPerGB)
					cs[x.Target] = append(cs[x.Target], x.CtxPerMB)
				}
			}
		}
		add(fmt.Sprintf("bulk%d", n), fmt.Sprintf("Throughput, %d stream(s)", n), "GB/s", true, 2, gb)
		add(fmt.Sprintf("cpugb%d", n), fmt.Sprintf("Proxy CPU per GB, %d stream(s)", n), "CPU s/GB", false, 3, cpu)
		add(fmt.Sprintf("csmb%d", n), fmt.Sprintf("Proxy context switches per MB, %d stream(s)", n), "switches", false, 2, cs)
	}
	for _, c := range r.Meta.Plan.RateConc {
		rate, cpu, errs, cs := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
		for _, x := range r.Rate {
			if x.Concurrency == c {
				rate[x.Target] = append(rate[x.Target], x.PerSec)
				errs[x.Target] = append(errs[x.Target], float64(x.Errors))
				if x.Target != Direct {
					cpu[x.Target] = append(cpu[x.Target], x.CPUPerConn)
					cs[x.Target] = append(cs[x.Target], x.CtxPerConn)
				}
			}
		}
		add(fmt.Sprintf("rate%d", c), fmt.Sprintf("Connection rate, concurrency %d", c), "conn/s", true, 0, rate)
		add(fmt.Sprintf("cpuconn%d", c), fmt.Sprintf("Proxy CPU per connection, concurrency %d", c), "CPU µs", false, 0, cpu)
		add(fmt.Sprintf("csconn%d", c), fmt.Sprintf("Proxy context switches per connection, concurrency %d", c), "switches", false, 2, cs)
		add(fmt.Sprintf("rateerr%d", c), fmt.Sprintf("Connection errors per run, concurrency %d", c), "errors", false, 0, errs)
	}
	abs := map[string]map[string][]float64{"p50": {}, "p99": {}, "p999": {}}
	added := map[string]map[string][]float64{"p50": {}, "p99": {}, "p999": {}}
	direct := map[int]LatencyRun{}
	for _, x := range r.Latency {
		if x.Target == Direct {
			direct[x.Rep] = x
		}
	}
	for _, x := range r.Latency {
		abs["p50"][x.Target] = append(abs["p50"][x.Target], x.P50)
		abs["p99"][x.Target] = append(abs["p99"][x.Target], x.P99)
		abs["p999"][x.Target] = append(abs["p999"][x.Target], x.P999)
		// Added latency: against the direct run of the same cycle (same drift).
		if d, ok := direct[x.Rep]; ok && x.Target != Direct {
			added["p50"][x.Target] = append(added["p50"][x.Target], x.P50-d.P50)
			added["p99"][x.Target] = append(added["p99"][x.Target], x.P99-d.P99)
			added["p999"][x.Target] = append(added["p999"][x.Target], x.P999-d.P999)
		}
	}
	for _, p := range []struct{ k, n string }{{"p50", "p50"}, {"p99", "p99"}, {"p999", "p99.9"}} {
		add("lat"+p.k, "Latency "+p.n+", 1 KiB request/response", "µs", false, 0, abs[p.k])
	}
	for _, p := range []struct{ k, n string }{{"p50", "p50"}, {"p99", "p99"}, {"p999", "p99.9"}} {
		add("add"+p.k, "Added latency over direct, "+p.n, "µs", false, 0, added[p.k])
	}
	r.baselineFigures(add)
	held, kib, fds := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	gor, stack := map[string][]float64{}, map[string][]float64{}
	for _, x := range r.Idle {
		held[x.Target] = append(held[x.Target], float64(x.Reached))
		kib[x.Target] = append(kib[x.Target], x.KiBPerConn)
		fds[x.Target] = append(fds[x.Target], x.FDsPerConn)
		if x.Goroutines > 0 {
			gor[x.Target] = append(gor[x.Target], x.Goroutines)
			stack[x.Target] = append(stack[x.Target], x.StackKiB)
		}
	}
	add("idleheld", "Idle connections held (goal "+fmt.Sprint(r.Meta.Plan.IdleGoal)+")", "conns", true, 0, held)
	add("idlekib", "RSS per idle connection", "KiB", false, 2, kib)
	add("idlefds", "File descriptors per idle connection", "fds", false, 2, fds)
	add("idlegor", "Goroutines per idle connection (ewgate /metrics)", "goroutines", false, 2, gor)
	add("idlestack", "Goroutine stack per idle connection (ewgate /metrics)", "KiB", false, 2, stack)

	haveSamples := false
	for _, x := range r.Latency {
		haveSamples = haveSamples || len(x.Samples) > 0
	}
	if !haveSamples {
		return // loaded from JSON: keep the curves it holds
	}
	r.LatencyCurves = map[string][]Point{}
	for _, t := range r.Meta.Targets {
		var all []float64
		for _, x := range r.Latency {
			if x.Target == t {
				all = append(all, x.Samples...)
			}
		}
		if len(all) == 0 {
			continue
		}
		slices.Sort(all)
		for _, p := range curvePercentiles {
			if float64(len(all))*(100-p)/100 < 1 && p > 50 {
				break // not enough samples to say anything about this tail
			}
			r.LatencyCurves[t] = append(r.LatencyCurves[t], Point{p, pct(all, p)})
		}
	}
}

var curvePercentiles = []float64{0, 10, 25, 50, 75, 90, 95, 98, 99, 99.5, 99.8, 99.9, 99.95, 99.99}

func (r *Results) figure(key string) (Figure, bool) {
	for _, f := range r.Figures {
		if f.Key == key {
			return f, true
		}
	}
	return Figure{}, false
}
