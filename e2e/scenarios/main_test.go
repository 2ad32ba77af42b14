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

// istiod trusts x-forwarded-client-cert from ewgate on loopback (TRUSTED_GATEWAY_CIDR, which
// adds istiod's XfccAuthenticator after its others): the identity modes xfcc, and forward for a
// VM authenticated by its certificate (vmtokenexpiry_test.go), pass the VM's identity that way.
// It changes nothing for a call without that header (ewgate drops a VM's own).
func TestMain(m *testing.M) {
	os.Exit(harness.Main(m, harness.Options{Istiod: true,
		IstiodOptions: harness.IstiodOptions{Env: []string{"TRUSTED_GATEWAY_CIDR=127.0.0.1/32"}}}, &cluster))
}
