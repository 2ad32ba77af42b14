// The steps: what each peer is (a build from the e2e module, a go install of its own module, CRDs
// copied out of the module cache) and how it is made.

package peers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

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
