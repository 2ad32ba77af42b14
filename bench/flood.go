package bench

// The flood and fault suite (issue 17): ewgate runs standalone from a generated config, under
// a lowered open-file limit, with a mesh listener whose routes come over xDS from a second
// ewgate, an ingress route to a backend that never answers, the VM control endpoint with a
// token issuer and the registrar on a file store. A steady mesh client and a steady VM client
// measure success and p99 first with no flood, then under each flood, then through each fault;
// after the registration faults the store is read for WorkloadEntries nobody owns any more.
// `make flood` runs it in full; TestFloodShort runs a short form inside `make test`.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// FloodOptions configure one run of the suite. Zero values take the defaults noted.
type FloodOptions struct {
	Short   bool   // the short form (TestFloodShort): about 3 s per flood, fewer faults
	Repo    string // the main module; default ".."
	WorkDir string // scratch; default Repo/bench/.work/flood
	OutDir  string // where <date>-flood.md and .json go; "" with Short: not written
	FDLimit int    // the gateway's RLIMIT_NOFILE (soft and hard); default 4096
	Log     io.Writer
}

// FloodRow is one scenario's figures.
type FloodRow struct {
	Scenario string   `json:"scenario"`
	Kind     string   `json:"kind"` // baseline, flood, fault
	Seconds  float64  `json:"seconds"`
	MeshOK   float64  `json:"mesh_success_pct"`
	MeshP99  float64  `json:"mesh_p99_ms"`
	MeshN    int      `json:"mesh_attempts"`
	MeshErr  string   `json:"mesh_first_error,omitempty"`
	VMOK     float64  `json:"vm_success_pct"`
	VMP99    float64  `json:"vm_p99_ms"`
	VMN      int      `json:"vm_attempts"`
	VMErr    string   `json:"vm_first_error,omitempty"`
	PeakRSS  float64  `json:"peak_rss_mib"`
	PeakFDs  int      `json:"peak_fds"`
	LogBps   float64  `json:"log_bytes_per_s"`
	Leaks    int      `json:"leaked_entries"` // -1: not a registration fault
	LeakList []string `json:"leaked,omitempty"`
	Note     string   `json:"note,omitempty"`
}

// FloodResults is a whole run.
type FloodResults struct {
	Date     string     `json:"date"`
	Version  string     `json:"ewgate_version"`
	Short    bool       `json:"short"`
	FDLimit  int        `json:"fd_limit"`
	CPUs     int        `json:"cpus"`
	Seconds  float64    `json:"seconds"`
	Rows     []FloodRow `json:"rows"`
	Problems []string   `json:"problems,omitempty"` // scenarios that could not run
}

// Row returns the row of a scenario.
func (r *FloodResults) Row(name string) (FloodRow, bool) {
	for _, x := range r.Rows {
		if x.Scenario == name {
			return x, true
		}
	}
	return FloodRow{}, false
}

type floodRates struct{ mesh, vm int }

// floodPlan sizes a run.
type floodPlan struct {
	window                                 time.Duration
	rates                                  floodRates
	garbageConc, slowloris                 int
	slowConns, halfOpen, headerConns, bads int
	headerBytes                            int
	killVMs, storeVMs, reloads             int
	faults                                 []string
}

func floodPlanFor(short bool, fdLimit int) floodPlan {
	p := floodPlan{
		window: 8 * time.Second, rates: floodRates{mesh: 50, vm: 10},
		garbageConc: 32, slowloris: 1500,
		slowConns: fdLimit/2 + 600, halfOpen: fdLimit + 500, headerConns: 10, headerBytes: 15 << 20, bads: 8,
		killVMs: 24, storeVMs: 10, reloads: 400, // 24 VMs of one group: under today's 32 streams per identity
		faults: []string{"reload-storm", "xds-upstream-lost", "sigkill-during-registration", "full-store"},
	}
	if short {
		p.window, p.rates = 3*time.Second, floodRates{mesh: 40, vm: 10}
		p.slowloris, p.killVMs, p.reloads = 800, 16, 100
	}
	return p
}

// Scenario names, in run order.
const (
	ScBaseline  = "baseline (no flood)"
	ScHeaders   = "15 MB headers on 15012"
	ScGarbage   = "garbage on mesh"
	ScSlowloris = "slowloris on mesh"
	ScSlow      = "hellos to slow ingress backend"
	ScHalfOpen  = "half-open on 15012"
	ScBadTokens = "bad tokens on 15012"
	ScReload    = "reload-storm"
	ScXDSLost   = "xds-upstream-lost"
	ScKill      = "sigkill-during-registration"
	ScFullStore = "full-store"
)

// RunFlood runs the suite and, with OutDir set, writes <OutDir>/<date>-flood.md and .json.
func RunFlood(ctx context.Context, o FloodOptions) (*FloodResults, error) {
	if o.Repo == "" {
		o.Repo = ".."
	}
	repo, err := filepath.Abs(o.Repo)
	if err != nil {
		return nil, err
	}
	if o.WorkDir == "" {
		o.WorkDir = filepath.Join(repo, "bench", ".work", "flood")
	}
	if o.FDLimit == 0 {
		o.FDLimit = 4096
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(o.Log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	began := time.Now()
	if err := os.MkdirAll(o.WorkDir, 0o755); err != nil {
		return nil, err
	}
	logf("building ewgate")
	bin := filepath.Join(o.WorkDir, "ewgate")
	version, err := buildEwgate(ctx, repo, bin)
	if err != nil {
		return nil, err
	}
	e, err := newFloodEnv(ctx, o.WorkDir, bin, o.FDLimit, logf)
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.startCP(ctx); err != nil {
		return nil, err
	}
	if err := e.startGateway(ctx); err != nil {
		return nil, err
	}
	token, err := signToken(e.tokenKey)
	if err != nil {
		return nil, err
	}
	// The first mesh route arrives over xDS: wait for it before measuring anything.
	if err := waitFor(ctx, e.gateway(), "routing the mesh SNI", 20*time.Second, func() bool {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return e.meshAttempt(c) == nil
	}); err != nil {
		return nil, err
	}
	res := &FloodResults{Date: time.Now().Format("2006-01-02"), Version: version, Short: o.Short, FDLimit: o.FDLimit, CPUs: runtime.NumCPU()}
	s := &floodSuite{e: e, pl: floodPlanFor(o.Short, o.FDLimit), token: token, logf: logf, res: res}
	s.run(ctx)
	res.Seconds = time.Since(began).Seconds()
	if o.OutDir != "" {
		if err := writeFlood(o.OutDir, res, FloodTable(res)); err != nil {
			return res, err
		}
	}
	return res, nil
}

type floodSuite struct {
	e     *floodEnv
	pl    floodPlan
	token string
	logf  func(string, ...any)
	res   *FloodResults
}

func (s *floodSuite) run(ctx context.Context) {
	pl, e := s.pl, s.e
	s.window(ctx, ScBaseline, "baseline", nil)
	// The header flood first, right after the baseline: its peak RSS is judged against the
	// baseline's, and the floods after it leave the Go heap larger than they found it.
	s.window(ctx, ScHeaders, "flood", func(ctx context.Context) string {
		var a attackCounts
		floodHeaders(ctx, e.controlAddr, e.vmTLS, pl.headerConns, pl.headerBytes, &a)
		return fmt.Sprintf("%d header blocks of %d MB sent whole, %d connections ended mid-block (%d at a time)",
			a.opened.Load(), pl.headerBytes>>20, a.failed.Load(), pl.headerConns)
	})
	s.window(ctx, ScGarbage, "flood", func(ctx context.Context) string {
		var a attackCounts
		floodGarbage(ctx, e.meshAddr, pl.garbageConc, &a)
		return a.String()
	})
	s.window(ctx, ScSlowloris, "flood", func(ctx context.Context) string {
		var a attackCounts
		if err := floodSlowloris(ctx, e.meshAddr, pl.slowloris, 100*time.Millisecond, &a); err != nil {
			return err.Error()
		}
		return a.String()
	})
	s.window(ctx, ScSlow, "flood", func(ctx context.Context) string {
		var a attackCounts
		if err := floodSlowBackend(ctx, e.ingressAddr, pl.slowConns, &a); err != nil {
			return err.Error()
		}
		return fmt.Sprintf("%s (goal %d over 32 sources, 2 gateway fds each, limit %d)", a.String(), pl.slowConns, e.fdLimit)
	})
	s.window(ctx, ScHalfOpen, "flood", func(ctx context.Context) string {
		var a attackCounts
		floodHalfOpen(ctx, e.controlAddr, pl.halfOpen, &a)
		return fmt.Sprintf("%s (goal %d from one source, limit %d)", a.String(), pl.halfOpen, e.fdLimit)
	})
	s.window(ctx, ScBadTokens, "flood", func(ctx context.Context) string {
		var a attackCounts
		if err := e.floodBadTokens(ctx, pl.bads, &a); err != nil {
			return err.Error()
		}
		return fmt.Sprintf("%d calls refused, %d accepted", a.opened.Load(), a.failed.Load())
	})
	for _, f := range pl.faults {
		s.fault(ctx, f)
	}
}

// fault runs one fault while the steady clients measure.
func (s *floodSuite) fault(ctx context.Context, name string) {
	e := s.e
	var leaks []string
	var problem error
	note := ""
	body := func(ctx context.Context) string { return "" }
	switch name {
	case ScReload:
		body = func(ctx context.Context) string { return e.faultReloads(ctx, s.pl.reloads) }
	case ScXDSLost:
		body = func(ctx context.Context) string {
			n, err := e.faultXDSLost(ctx, s.pl.window)
			problem = err
			return n
		}
	case ScKill:
		body = func(context.Context) string {
			n, l, err := e.faultKill(ctx, s.pl.killVMs, s.token)
			leaks, problem = l, err
			return n
		}
	case ScFullStore:
		body = func(context.Context) string {
			n, l, err := e.faultFullStore(ctx, s.pl.storeVMs, s.token)
			leaks, problem = l, err
			return n
		}
	}
	row := s.window(ctx, name, "fault", body)
	if problem != nil {
		s.res.Problems = append(s.res.Problems, name+": "+problem.Error())
		note = problem.Error()
	}
	if name == ScKill || name == ScFullStore {
		row.Leaks, row.LeakList = len(leaks), leaks
		for i, l := range row.LeakList {
			row.LeakList[i] = filepath.Base(filepath.Dir(l)) + "/" + strings.TrimSuffix(filepath.Base(l), ".yaml")
		}
	}
	if note != "" {
		row.Note = strings.TrimSpace(row.Note + "; " + note)
	}
	s.res.Rows[len(s.res.Rows)-1] = *row
}

// window measures one scenario: the steady clients and the RSS/fd sampler run while attack runs
// (a flood for the plan's window; a fault for as long as it takes, at least the window). It then
// waits for the gateway to give back what the attack held.
func (s *floodSuite) window(ctx context.Context, name, kind string, attack func(context.Context) string) *FloodRow {
	e := s.e
	s.logf("%s", name)
	row := FloodRow{Scenario: name, Kind: kind, Leaks: -1}
	logStart, began := e.logSize(), time.Now()
	sctx, stopSampler := context.WithCancel(ctx)
	var peakRSS atomic.Int64
	var peakFDs atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() { sample(sctx, e, &peakRSS, &peakFDs) })

	pctx, stopProbes := context.WithCancel(ctx)
	var pr *probes
	var pwg sync.WaitGroup
	pwg.Go(func() { pr = e.runProbes(pctx, s.pl.rates, s.token) })
	if attack != nil {
		actx, cancel := context.WithTimeout(ctx, s.pl.window)
		if kind == "fault" {
			actx, cancel = context.WithTimeout(ctx, 2*time.Minute) // a fault ends by itself
		}
		row.Note = attack(actx)
		cancel()
		if kind == "fault" {
			s.pause(ctx, began, s.pl.window) // measure at least a window, faults included
		}
	} else {
		s.pause(ctx, began, s.pl.window)
	}
	stopProbes()
	pwg.Wait()
	row.Seconds = time.Since(began).Seconds()
	if p := e.gateway(); p != nil && !p.exited() {
		row.LogBps = float64(e.logSize()-logStart) / row.Seconds
	}
	stopSampler()
	wg.Wait()
	row.PeakRSS = float64(peakRSS.Load()) / 1024
	row.PeakFDs = int(peakFDs.Load())
	row.MeshOK, row.MeshP99, row.MeshN, row.MeshErr = pr.mesh.summary()
	row.VMOK, row.VMP99, row.VMN, row.VMErr = pr.vm.summary()
	s.logf("  mesh %.1f%% p99 %.1f ms (%d), vm %.1f%% p99 %.1f ms (%d), rss %.0f MiB, fds %d, log %.0f B/s; %s",
		row.MeshOK, row.MeshP99, row.MeshN, row.VMOK, row.VMP99, row.VMN, row.PeakRSS, row.PeakFDs, row.LogBps, row.Note)
	s.recover(ctx, &row)
	s.res.Rows = append(s.res.Rows, row)
	return &s.res.Rows[len(s.res.Rows)-1]
}

// pause waits until d has passed since began (the rest of a measuring window).
func (s *floodSuite) pause(ctx context.Context, began time.Time, d time.Duration) {
	rest := time.Until(began.Add(d))
	if rest <= 0 {
		return
	}
	t := time.NewTimer(rest)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// recover drops what the slow backend holds and waits until the gateway's open files are back
// near the baseline's and it is ready, so a scenario does not start in the previous one's wake.
func (s *floodSuite) recover(ctx context.Context, row *FloodRow) {
	e := s.e
	limit := 400
	if b, ok := s.res.Row(ScBaseline); ok && b.PeakFDs > 0 {
		limit = b.PeakFDs + 200
	}
	err := waitFor(ctx, e.gateway(), "recovered (open files back, ready)", 30*time.Second, func() bool {
		// The gateway half-closes towards the backend when a client goes and waits for the
		// backend's end: the backend that never answers is told to let go, again and again while
		// the gateway still accepts what the flood left in its queue.
		e.slow.drop()
		p := e.gateway()
		return fdCount([]int{p.pid()}) <= limit && httpOK("http://"+e.adminAddr+"/healthz/ready")
	})
	if err != nil {
		row.Note = strings.TrimSpace(row.Note + "; did not recover: " + firstLine(err.Error()))
		s.res.Problems = append(s.res.Problems, row.Scenario+": "+firstLine(err.Error()))
	}
}

// sample records the gateway's peak RSS (KiB) and open files every 50 ms.
func sample(ctx context.Context, e *floodEnv, rss, fds *atomic.Int64) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for range 20 * 600 { // at most ten minutes of samples
		if p := e.gateway(); p != nil && !p.exited() {
			pid := []int{p.pid()}
			if r := rssKiB(pid); r > rss.Load() {
				rss.Store(r)
			}
			if f := int64(fdCount(pid)); f > fds.Load() {
				fds.Store(f)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// FloodTable is the Markdown table of a run.
func FloodTable(r *FloodResults) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ewgate %s, fd limit %d, %d CPUs, %s run, %.0f s\n\n", r.Version, r.FDLimit, r.CPUs,
		map[bool]string{true: "short", false: "full"}[r.Short], r.Seconds)
	b.WriteString("| scenario | mesh ok % | mesh p99 ms | VM ok % | VM p99 ms | peak RSS MiB | peak fds | log KB/s | leaks | what happened |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, x := range r.Rows {
		leaks := "-"
		if x.Leaks >= 0 {
			leaks = fmt.Sprint(x.Leaks)
		}
		note := x.Note
		if x.MeshOK < 100 && x.MeshErr != "" {
			note += "; mesh: " + trunc(x.MeshErr, 80)
		}
		if x.VMOK < 100 && x.VMErr != "" {
			note += "; VM: " + trunc(x.VMErr, 80)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %.1f | %.1f | %.0f | %d | %.1f | %s | %s |\n", x.Scenario, x.MeshOK, x.MeshP99,
			x.VMOK, x.VMP99, x.PeakRSS, x.PeakFDs, x.LogBps/1000, leaks, strings.ReplaceAll(strings.TrimPrefix(note, "; "), "|", "/"))
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "\nproblem: %s", p)
	}
	return b.String()
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func writeFlood(dir string, r *FloodResults, table string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	base := filepath.Join(dir, r.Date+"-flood")
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return err
	}
	md := "# ewgate flood and fault suite (" + r.Date + ")\n\n" +
		"`make flood`: ewgate standalone on loopback (bench/flood*.go), its open-file limit lowered; a steady mesh client " +
		"(TLS through the mesh listener, Istio SNI and ALPN, one ping per connection) and a steady VM client (a new " +
		"TLS+HTTP/2 connection per CreateCertificate with a valid token) measure each scenario. p99 is over successes. " +
		"Leaks: WorkloadEntries left in the file store after the VMs left and the grace period passed.\n\n" + table + "\n"
	return os.WriteFile(base+".md", []byte(md), 0o644)
}
