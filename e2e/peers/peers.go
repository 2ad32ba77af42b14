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
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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

// EnvDir overrides the cache directory (default: <repo>/.cache/peers).
const EnvDir = "EWGATE_PEERS_DIR"

// EnvBuildKubectl set to anything builds kubectl into the cache even when one is on the PATH
// (the harness prefers the cached one).
const EnvBuildKubectl = "EWGATE_BUILD_KUBECTL"

// Layout is the cache directory and the e2e module it builds from.
//
//	<Dir>/bin/{kube-apiserver,etcd,pilot-discovery,pilot-agent,helm,promtool[,kubectl]}
//	<Dir>/istio-crds.yaml
//	<Dir>/chart-crds.yaml
//	<Dir>/stamps/<step>.stamp
//	<Dir>/.lock
type Layout struct {
	Dir     string // the cache
	E2ERoot string // the e2e module (holds go.mod with the Kubernetes replaces)
}

// Locate finds the e2e module by walking up from the working directory and returns the layout of
// the cache next to it (<repo>/.cache/peers, or $EWGATE_PEERS_DIR).
func Locate() (Layout, error) {
	wd, err := os.Getwd()
	if err != nil {
		return Layout{}, fmt.Errorf("peers: %w", err)
	}
	root, err := findE2ERoot(wd)
	if err != nil {
		return Layout{}, err
	}
	dir := os.Getenv(EnvDir)
	if dir == "" {
		dir = filepath.Join(filepath.Dir(root), ".cache", "peers")
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return Layout{}, fmt.Errorf("peers: %w", err)
	}
	return Layout{Dir: dir, E2ERoot: root}, nil
}

func findE2ERoot(start string) (string, error) {
	dir := start
	for i := 0; i < 64; i++ {
		if modulePath(filepath.Join(dir, "go.mod")) == e2eModule {
			return dir, nil
		}
		if e := filepath.Join(dir, "e2e"); modulePath(filepath.Join(e, "go.mod")) == e2eModule {
			return e, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", fmt.Errorf("peers: no module %s above %s", e2eModule, start)
}

func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Bin is the path of a cached binary.
func (l Layout) Bin(name string) string { return filepath.Join(l.Dir, "bin", name) }

// APIServer, Etcd, PilotDiscovery and PilotAgent are the cached binaries.
func (l Layout) APIServer() string      { return l.Bin("kube-apiserver") }
func (l Layout) Etcd() string           { return l.Bin("etcd") }
func (l Layout) PilotDiscovery() string { return l.Bin("pilot-discovery") }
func (l Layout) PilotAgent() string     { return l.Bin("pilot-agent") }
func (l Layout) Promtool() string       { return l.Bin("promtool") }

// Helm is the cached helm CLI (HelmVersion).
func (l Layout) Helm() string { return l.Bin("helm") }

// IstioCRDs is the copy of istio.io/api's kubernetes/customresourcedefinitions.gen.yaml.
func (l Layout) IstioCRDs() string { return filepath.Join(l.Dir, "istio-crds.yaml") }

// ChartCRDs holds cert-manager's Certificate CRD and the Prometheus Operator's PodMonitor and
// ServiceMonitor CRDs (chartCRDSources), for the Helm chart's test.
func (l Layout) ChartCRDs() string { return filepath.Join(l.Dir, "chart-crds.yaml") }

// chartCRDSources are module@version -> the CRD files copied out of it into ChartCRDs.
var chartCRDSources = []struct {
	module string
	files  []string
}{
	{"github.com/cert-manager/cert-manager@" + CertManagerVersion, []string{"deploy/crds/cert-manager.io_certificates.yaml"}},
	{"github.com/prometheus-operator/prometheus-operator@" + PrometheusOperatorVersion, []string{
		"example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
		"example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
	}},
}

// Kubectl is the kubectl to run: the cached build if there is one, else the one on the PATH.
func (l Layout) Kubectl() (string, error) {
	if fileExists(l.Bin("kubectl")) {
		return l.Bin("kubectl"), nil
	}
	p, err := exec.LookPath("kubectl")
	if err != nil {
		return "", fmt.Errorf("peers: no kubectl in the cache nor on the PATH (run the fetcher)")
	}
	return p, nil
}

func (l Layout) stampPath(step string) string {
	return filepath.Join(l.Dir, "stamps", step+".stamp")
}

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

// kubeLDFlags stamps the version the apiserver reports; without it, it says v0.0.0-master,
// which clients parsing the version dislike.
func kubeLDFlags() string {
	const v = "k8s.io/component-base/version"
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubeVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	return strings.Join([]string{
		"-X " + v + ".gitVersion=" + KubeVersion,
		"-X " + v + ".gitMajor=" + major,
		"-X " + v + ".gitMinor=" + minor,
		"-X " + v + ".gitTreeState=clean",
	}, " ")
}

// moduleSum identifies the e2e module's dependency graph (go.mod and go.sum), so that the binaries
// built from it are rebuilt when a dependency moves (e.g. a scenario importing the main module
// raises grpc for the apiserver build too).
func (l Layout) moduleSum() string {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, _ := os.ReadFile(filepath.Join(l.E2ERoot, f))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func steps(l Layout) []step {
	goVer := runtime.Version() // the toolchain building the fetcher builds the peers too
	modSum := l.moduleSum()
	kube := func(name, pkg string, tags ...string) step {
		out := l.Bin(name)
		return step{
			name:    name,
			what:    fmt.Sprintf("%s from k8s.io/kubernetes@%s", name, KubeVersion),
			stamp:   fmt.Sprintf("%s k8s.io/kubernetes@%s %s e2e-module=%s ldflags=%q\n", name, KubeVersion, goVer, modSum, kubeLDFlags()),
			outputs: []string{out},
			do: func(ctx context.Context) error {
				return l.goBuild(ctx, out, pkg, kubeLDFlags(), tags...)
			},
		}
	}
	apiserver := kube("kube-apiserver", "./cmd/kube-apiserver")
	kubectl := kube("kubectl", "./cmd/kubectl", "e2e_kubectl")
	kubectl.skip = func() (bool, string) {
		if fileExists(l.Bin("kubectl")) {
			return false, ""
		}
		if os.Getenv(EnvBuildKubectl) != "" {
			return false, ""
		}
		if p, err := exec.LookPath("kubectl"); err == nil {
			return true, "using " + p + " from the PATH (" + EnvBuildKubectl + "=1 builds the pinned one)"
		}
		return false, ""
	}
	istioBins := []string{l.PilotDiscovery(), l.PilotAgent()}
	return []step{
		apiserver,
		{
			name:    "etcd",
			what:    "embedded etcd " + EtcdVersion,
			stamp:   fmt.Sprintf("etcd go.etcd.io/etcd/server/v3@%s %s e2e-module=%s\n", EtcdVersion, goVer, modSum),
			outputs: []string{l.Etcd()},
			do: func(ctx context.Context) error {
				return l.goBuild(ctx, l.Etcd(), "./cmd/etcd", "")
			},
		},
		{
			name:    "istio",
			what:    "pilot-discovery and pilot-agent istio.io/istio@" + IstioVersion,
			stamp:   fmt.Sprintf("istio istio.io/istio@%s %s\n", IstioVersion, goVer),
			outputs: istioBins,
			do: func(ctx context.Context) error {
				cmd := exec.CommandContext(ctx, "go", "install",
					"istio.io/istio/pilot/cmd/pilot-discovery@"+IstioVersion,
					"istio.io/istio/pilot/cmd/pilot-agent@"+IstioVersion)
				cmd.Dir = os.TempDir() // outside any module: `go install pkg@version`
				cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(l.Dir, "bin"), "GOWORK=off")
				return run(cmd)
			},
		},
		{
			name:    "istio-crds",
			what:    "kubernetes/customresourcedefinitions.gen.yaml of istio.io/api@" + IstioAPIVersion,
			stamp:   fmt.Sprintf("istio-crds istio.io/api@%s\n", IstioAPIVersion),
			outputs: []string{l.IstioCRDs()},
			do:      func(ctx context.Context) error { return l.copyCRDs(ctx) },
		},
		{
			name:    "chart-crds",
			what:    "Certificate, PodMonitor, ServiceMonitor CRDs of cert-manager@" + CertManagerVersion + " and prometheus-operator@" + PrometheusOperatorVersion,
			stamp:   fmt.Sprintf("chart-crds %v\n", chartCRDSources),
			outputs: []string{l.ChartCRDs()},
			do: func(ctx context.Context) error {
				var docs [][]byte
				for _, src := range chartCRDSources {
					dir, err := moduleDir(ctx, src.module)
					if err != nil {
						return err
					}
					for _, f := range src.files {
						b, err := os.ReadFile(filepath.Join(dir, f))
						if err != nil {
							return err
						}
						docs = append(docs, b)
					}
				}
				return writeAtomic(l.ChartCRDs(), bytes.Join(docs, []byte("\n---\n")))
			},
		},
		{
			name:    "helm",
			what:    "helm helm.sh/helm/v4@" + HelmVersion,
			stamp:   fmt.Sprintf("helm helm.sh/helm/v4@%s %s CGO_ENABLED=0 ldflags=%q\n", HelmVersion, goVer, helmLDFlags()),
			outputs: []string{l.Helm()},
			do:      func(ctx context.Context) error { return l.installHelm(ctx) },
		},
		kubectl,
		{
			name:    "promtool",
			what:    "promtool github.com/prometheus/prometheus@" + PromtoolVersion,
			stamp:   fmt.Sprintf("promtool github.com/prometheus/prometheus@%s %s\n", PromtoolVersion, goVer),
			outputs: []string{l.Promtool()},
			do: func(ctx context.Context) error {
				// Its own module graph (outside this module), as istiod's: Prometheus's
				// dependencies never meet Kubernetes's here.
				cmd := exec.CommandContext(ctx, "go", "install", "github.com/prometheus/prometheus/cmd/promtool@"+PromtoolVersion)
				cmd.Dir = os.TempDir()
				cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(l.Dir, "bin"), "GOWORK=off")
				return run(cmd)
			},
		},
	}
}

// helmLDFlags stamps the version `helm version` reports, as helm's Makefile does; without it
// helm says v4.3 (its source default), and charts' semver checks of .Capabilities.HelmVersion
// see no patch release.
func helmLDFlags() string {
	const v = "helm.sh/helm/v4/internal/version"
	return "-X " + v + ".version=" + HelmVersion + " -X " + v + ".gitTreeState=clean"
}

// installHelm runs `go install helm.sh/helm/v4/cmd/helm@HelmVersion` outside any module (its own
// module graph, like istiod) into a temporary GOBIN and renames the binary into bin/, so an
// interrupted build never leaves a half-written helm behind.
func (l Layout) installHelm(ctx context.Context) error {
	tmp, err := os.MkdirTemp(filepath.Join(l.Dir, "bin"), ".helm-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, "go", "install", "-trimpath", "-ldflags", helmLDFlags(),
		"helm.sh/helm/v4/cmd/helm@"+HelmVersion)
	cmd.Dir = os.TempDir() // outside any module: `go install pkg@version`
	// CGO_ENABLED=0 as helm's own release build (its Makefile's default).
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOWORK=off", "CGO_ENABLED=0")
	if err := run(cmd); err != nil {
		return err
	}
	return os.Rename(filepath.Join(tmp, "helm"), l.Helm())
}

// goBuild builds a main package of the e2e module into out (atomically: a failed build leaves
// no half-written binary behind).
func (l Layout) goBuild(ctx context.Context, out, pkg, ldflags string, tags ...string) error {
	tmp := out + ".tmp"
	args := []string{"build", "-trimpath", "-o", tmp}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	cmd.Dir = l.E2ERoot
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if err := run(cmd); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

func (l Layout) copyCRDs(ctx context.Context) error {
	dir, err := moduleDir(ctx, "istio.io/api@"+IstioAPIVersion)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dir, "kubernetes", "customresourcedefinitions.gen.yaml"))
	if err != nil {
		return err
	}
	return writeAtomic(l.IstioCRDs(), b)
}

// moduleDir downloads module@version into the module cache (`go mod download -json`, outside any
// module) and returns its directory there.
func moduleDir(ctx context.Context, moduleAtVersion string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", moduleAtVersion)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w", strings.Join(cmd.Args, " "), err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(stdout.Bytes(), &mod); err != nil {
		return "", fmt.Errorf("go mod download output: %w", err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %q", moduleAtVersion, mod.Error)
	}
	return mod.Dir, nil
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
