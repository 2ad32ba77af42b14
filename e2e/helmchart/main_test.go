// Package helmchart checks the Helm chart deploy/helm/ewgate with the real helm CLI (built pinned
// into the peers' cache) against a real kube-apiserver: lint, the rendering of every values
// example the docs show, `ewgate check` of each rendered config, and install then uninstall.
//
// It has its own cluster (no istiod): an install writes cluster-wide objects (ClusterRoles) and an
// Istio Gateway that the shared cluster's istiod would otherwise act on.
package helmchart

import (
	"os"
	"testing"

	"github.com/ewgate/ewgate/e2e/harness"
)

var cluster *harness.Cluster

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Options{}, &cluster))
}
