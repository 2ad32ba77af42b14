// Package multicluster holds the scenarios of a multi-primary, multi-network mesh: two clusters
// (etcd, kube-apiserver, istiod each) under one root of trust, on two networks, each istiod
// reading the other cluster, started once by TestMain (harness.MainMulti). It is a package of
// its own so the one-cluster scenarios keep their single shared cluster and pay nothing for the
// second one.
package multicluster

import (
	"os"
	"testing"

	"github.com/ewgate/ewgate/e2e/harness"
)

// mc is shared by every test of this package. Tests create their own namespaces (mc.Namespace
// makes the same one in both clusters).
var mc *harness.MultiCluster

func TestMain(m *testing.M) {
	os.Exit(harness.MainMulti(m, harness.MultiOptions{}, &mc))
}
