// Package peers fetches the real programs the e2e suite runs against (kube-apiserver, etcd,
// istiod, pilot-agent, kubectl, the Istio CRDs) into a git-ignored cache inside the repository,
// pinned to the versions below, and tells the harness where they are.
//
// Fetching is idempotent: every step writes a stamp naming what it produced (its pinned version and
// build flags) after its outputs, and a later run skips any step whose stamp matches and whose
// outputs exist. It uses only the go tool (the module proxy), so it works on a fresh machine.
//
// This package depends on the standard library only, so `go run ./cmd/peers` compiles in seconds.
package peers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Pinned versions. e2e/go.mod pins the same Kubernetes and etcd releases: the apiserver, kubectl
// and etcd are built from that module, istiod and pilot-agent with `go install` at IstioVersion.
const (
	KubeVersion = "v1.32.4"
	// EtcdVersion is go.etcd.io/etcd/server/v3 as required by e2e/go.mod (what Kubernetes
	// v1.32.4 itself pins).
	EtcdVersion = "v3.5.16"
	// IstioVersion is Istio master of 2026-08-27: the module proxy serves no Istio release tags.
	IstioVersion    = "v0.0.0-20260827124520-eed52ebb66ad"
	IstioAPIVersion = "v1.31.4"
	// HelmVersion is the helm CLI that renders, lints and installs deploy/helm/ewgate. It is a
	// `go install module@version` of its own (like istiod), so its Kubernetes libraries (v0.37)
	// never enter this module's graph, which pins Kubernetes v1.32.
	HelmVersion = "v4.3.2"
	// CertManagerVersion and PrometheusOperatorVersion give the CRDs of the kinds the Helm chart
	// renders optionally (cert-manager's Certificate, the Prometheus Operator's PodMonitor and
	// ServiceMonitor), so the apiserver checks those objects against their real schemas.
	CertManagerVersion        = "v1.21.2"
	PrometheusOperatorVersion = "v0.85.0"
	// PromtoolVersion is github.com/prometheus/prometheus (Prometheus 3.x's module version) whose
	// promtool checks and unit-tests deploy/monitoring's alert rules.
	PromtoolVersion = "v0.316.0"
)

// e2eModule is the module path that marks the e2e module root when searching upwards.
const e2eModule = "github.com/ewgate/ewgate/e2e"

// step is one idempotent unit of fetching.
type step struct {
	name    string   // also the stamp file name
	what    string   // shown to the user
	stamp   string   // the content that marks it done: pinned versions and flags
	outputs []string // files that must exist for the stamp to count
	do      func(ctx context.Context) error
	skip    func() (bool, string) // optional: the step is not needed, and why
}

// Ensure fetches whatever is missing or stale, printing each step and how long it took with logf.
// A second call with a warm cache checks the stamps and does nothing else.
func Ensure(ctx context.Context, l Layout, logf func(format string, args ...any)) error {
	start := time.Now()
	if err := os.MkdirAll(filepath.Join(l.Dir, "stamps"), 0o755); err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(l.Dir, "bin"), 0o755); err != nil {
		return fmt.Errorf("peers: %w", err)
	}
	unlock, err := lock(filepath.Join(l.Dir, ".lock"))
	if err != nil {
		return err
	}
	defer unlock()

	did := 0
	for _, s := range steps(l) {
		if s.skip != nil {
			if skip, why := s.skip(); skip {
				logf("peers: %-16s %s", s.name, why)
				continue
			}
		}
		if l.upToDate(s) {
			logf("peers: %-16s up to date (%s)", s.name, s.what)
			continue
		}
		logf("peers: %-16s fetching %s ...", s.name, s.what)
		t0 := time.Now()
		if err := s.do(ctx); err != nil {
			return fmt.Errorf("peers: %s: %w", s.name, err)
		}
		if err := os.WriteFile(l.stampPath(s.name), []byte(s.stamp), 0o644); err != nil {
			return fmt.Errorf("peers: %s: stamp: %w", s.name, err)
		}
		logf("peers: %-16s done in %s", s.name, time.Since(t0).Round(100*time.Millisecond))
		did++
	}
	logf("peers: %d step(s) run, total %s, cache %s", did, time.Since(start).Round(100*time.Millisecond), l.Dir)
	return nil
}

func (l Layout) upToDate(s step) bool {
	got, err := os.ReadFile(l.stampPath(s.name))
	if err != nil || string(got) != s.stamp {
		return false
	}
	for _, o := range s.outputs {
		if !fileExists(o) {
			return false
		}
	}
	return true
}

// writeAtomic writes b to path through a temporary file and a rename.
func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func run(cmd *exec.Cmd) error {
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(cmd.Args, " "), err)
	}
	return nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// lock takes an exclusive flock on path so two fetchers (two `make e2e` at once) do not build
// into the same files; the second waits for the first and then finds everything up to date.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("peers: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("peers: lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// ErrNotFetched is returned by Check when the cache lacks a peer.
var ErrNotFetched = errors.New("peers: not fetched")

// Check reports whether every step is up to date without doing any work.
func Check(l Layout) error {
	for _, s := range steps(l) {
		if s.skip != nil {
			if skip, _ := s.skip(); skip {
				continue
			}
		}
		if !l.upToDate(s) {
			return fmt.Errorf("%w: %s (%s)", ErrNotFetched, s.name, s.what)
		}
	}
	return nil
}
