// Package scenarios holds the e2e scenarios: every test runs against real peers (kube-apiserver,
// istiod, pilot-agent) that one TestMain starts and shares, see package harness.
package scenarios

import (
	"os"
	"testing"

	"github.com/ewgate/ewgate/e2e/harness"
)

// cluster is shared by every test of this package: etcd, kube-apiserver with the Istio CRDs,
// istiod. Tests that change cluster-wide state create their own namespaces.
var cluster *harness.Cluster

func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Options{Istiod: true}, &cluster))
}
