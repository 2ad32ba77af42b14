// The cache layout: where each peer is found, and the e2e module it is built from.

package peers

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

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
