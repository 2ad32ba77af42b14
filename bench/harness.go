// Package bench measures ewgate side by side with HAProxy, nginx and a direct connection on the
// same work in the same run: RSS before any connection, bulk throughput, connection rate,
// fixed-rate latency and memory per idle connection, plus ewgate's control-side Go benchmarks.
// It writes a Markdown report, the raw runs as JSON and PNG charts. `make bench` runs it (cmd/ewbench); QUICK=1 is a
// shorter pass; the package test runs it in a tiny mode that only checks the harness.
//
// Runs alternate between the targets (ewgate, HAProxy, nginx, direct, ewgate, ...) so drift on
// a shared machine hits all of them alike; each figure is the median of the runs, with min
// and max.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Mode sizes a run.
type Mode string

const (
	Full  Mode = "full"  // the committed results: about 10 minutes
	Quick Mode = "quick" // QUICK=1: under 3 minutes
	Tiny  Mode = "tiny"  // the package test: seconds, only checks the harness end to end
)

// Options configure one run. Zero values take the defaults noted.
type Options struct {
	Mode    Mode   // default Full
	Repo    string // the main module's directory (builds ewgate, runs the control benchmarks); default ".."
	WorkDir string // scratch (configs, logs, binaries, profiles); default Repo/bench/.work
	OutDir  string // where the report, JSON and PNGs go; default Repo/bench/results
	Host    string // host label in file names; default the short host name
	// BackendCmd starts the backend as its own process (its own open-file budget), e.g.
	// {"/path/ewbench", "backend"}; the harness appends -cert and -key. Nil: in-process.
	BackendCmd []string
	Targets    []string  // default AllTargets
	Log        io.Writer // progress; default os.Stderr
	NoInstall  bool      // do not apt-get install missing peers
	NoControl  bool      // skip the authn/registrar Go benchmarks
	NoProfile  bool      // skip the pprof captures of ewgate
}

// plan is what a mode measures.
type plan struct {
	reps        int
	bulkDur     time.Duration
	bulkStreams []int
	rateDur     time.Duration
	rateConc    []int
	latConns    int
	latRate     int
	latDur      time.Duration
	idleGoal    int
	idleReps    int
	idleLimit   time.Duration
	benchtime   string
	benchCount  int
	profileSecs int
	baseIdle    time.Duration // how long a fresh proxy sits idle before its RSS is read
}

// The latency step of the quick and full runs is the setting of issue 22's side-by-side
// figures: 64 connections, 5,000 requests a second in all (well below saturation here).
func planFor(m Mode) plan {
	switch m {
	case Tiny:
		return plan{reps: 1, bulkDur: 300 * time.Millisecond, bulkStreams: []int{1, 4}, rateDur: 300 * time.Millisecond,
			rateConc: []int{4}, latConns: 2, latRate: 200, latDur: 500 * time.Millisecond, idleGoal: 50, idleReps: 1,
			idleLimit: 20 * time.Second, benchtime: "100x", benchCount: 1, profileSecs: 1, baseIdle: 2 * time.Second}
	case Quick:
		return plan{reps: 3, bulkDur: time.Second, bulkStreams: []int{1, 8}, rateDur: time.Second,
			rateConc: []int{16, 64}, latConns: 64, latRate: 5000, latDur: 1500 * time.Millisecond, idleGoal: 4000, idleReps: 1,
			idleLimit: 30 * time.Second, benchtime: "300ms", benchCount: 1, profileSecs: 3, baseIdle: 2 * time.Second}
	default:
		return plan{reps: 5, bulkDur: 3 * time.Second, bulkStreams: []int{1, 8, 16}, rateDur: 2500 * time.Millisecond,
			rateConc: []int{4, 16, 64}, latConns: 64, latRate: 5000, latDur: 4 * time.Second, idleGoal: 9800, idleReps: 3,
			idleLimit: 60 * time.Second, benchtime: "1s", benchCount: 3, profileSecs: 5, baseIdle: 2 * time.Second}
	}
}

func (o *Options) defaults() error {
	if o.Mode == "" {
		o.Mode = Full
	}
	if o.Repo == "" {
		o.Repo = ".."
	}
	abs, err := filepath.Abs(o.Repo)
	if err != nil {
		return err
	}
	o.Repo = abs
	if o.WorkDir == "" {
		o.WorkDir = filepath.Join(o.Repo, "bench", ".work")
	}
	if o.OutDir == "" {
		o.OutDir = filepath.Join(o.Repo, "bench", "results")
	}
	if o.Host == "" {
		h, _ := os.Hostname()
		h, _, _ = strings.Cut(h, ".")
		if h == "" {
			h = "host"
		}
		o.Host = h
	}
	if len(o.Targets) == 0 {
		o.Targets = AllTargets
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
	return nil
}

// Run measures everything the mode asks for and writes the report. It returns the report's
// base path (without extension).
func Run(ctx context.Context, o Options) (*Results, string, error) {
	if err := o.defaults(); err != nil {
		return nil, "", err
	}
	began := time.Now()
	pl := planFor(o.Mode)
	logf := func(format string, a ...any) {
		fmt.Fprintf(o.Log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	for _, d := range []string{o.WorkDir, o.OutDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, "", err
		}
	}
	needPeers := false
	for _, t := range o.Targets {
		needPeers = needPeers || t == HAProxy || t == Nginx
	}
	if needPeers && !o.NoInstall {
		if err := ensurePeers(o.Log); err != nil {
			return nil, "", err
		}
	}
	logf("building ewgate (release: -trimpath -ldflags \"-s -w\")")
	bin := filepath.Join(o.WorkDir, "bin", "ewgate")
	version, err := buildEwgate(ctx, o.Repo, bin)
	if err != nil {
		return nil, "", err
	}
	pk, err := newPKI(o.WorkDir)
	if err != nil {
		return nil, "", err
	}
	backendAddr, stopBackend, err := startBackend(ctx, o, pk)
	if err != nil {
		return nil, "", err
	}
	defer stopBackend()

	res := newResults(o, pl, version)
	env := peerEnv{dir: o.WorkDir, backend: backendAddr, workers: runtime.GOMAXPROCS(0), ewgate: bin}
	res.Meta.Workers = env.workers
	s := &session{o: o, pl: pl, env: env, c: &client{tls: pk.clientConfig()}, res: res, logf: logf, targets: map[string]*target{}}
	defer s.stopAll()
	if err := s.measure(ctx); err != nil {
		return res, "", err
	}
	if !o.NoProfile {
		if err := s.profile(ctx); err != nil {
			logf("profile: %v", err)
			res.Notes = append(res.Notes, "pprof capture failed: "+err.Error())
		}
	}
	s.stopAll()
	stopBackend()
	if !o.NoControl {
		logf("control side: go test -bench in ./authn and ./registrar")
		res.Control, err = runControl(ctx, o.Repo, pl.benchtime, pl.benchCount)
		if err != nil {
			logf("control benchmarks: %v", err)
			res.Notes = append(res.Notes, "control benchmarks failed: "+err.Error())
		}
	}
	res.Meta.Seconds = time.Since(began).Seconds()
	base, err := writeOutputs(o, res)
	if err != nil {
		return res, "", err
	}
	logf("done in %s: %s.md", time.Since(began).Round(time.Second), base)
	return res, base, nil
}

// startBackend runs the backend in its own process when BackendCmd is set.
func startBackend(ctx context.Context, o Options, pk *pki) (string, func(), error) {
	if len(o.BackendCmd) == 0 {
		b, err := StartBackend(pk.server)
		if err != nil {
			return "", nil, err
		}
		return b.Addr(), b.Close, nil
	}
	argv := append(append([]string{}, o.BackendCmd...), "-cert", pk.certFile, "-key", pk.keyFile)
	p, in, addr, err := startPiped(ctx, filepath.Join(o.WorkDir, "backend.log"), argv)
	if err != nil {
		return "", nil, err
	}
	stopped := false
	return addr, func() {
		if !stopped {
			stopped = true
			in.Close() // the backend exits when its stdin closes
			p.stop()
		}
	}, nil
}
