package scenarios

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
)

// Scenario 4, bad VMs never reach istiod: real pilot-agents with bad credentials or claims,
// pointed at ewgate's 15012 in front of the real istiod, are refused by ewgate, and istiod sees
// nothing of them; a good VM through the same ewgate gets its certificate from istiod and its
// ADS stream reaches istiod, so the refusals are ewgate's and the path would have worked.
//
//   - a token for another audience, an expired token (signed with the apiserver's own key), and
//     no token at all: no certificate; each VM also runs an xDS client, so its agent tries ADS as
//     well. ewgate counts the refusals (bad_audience, expired, none); istiod's CA counted no
//     request and no authentication failure, and istiod holds no ADS stream of them.
//   - another namespace's service account claiming group web: ewgate looks the group up in the
//     identity's own namespace, where there is none (FailedPrecondition); and a service account
//     of the group's namespace that the group's template does not name (PermissionDenied, may
//     not join). Their tokens are valid, so their certificate requests do reach istiod's CA (an
//     identity may have a certificate); their ADS streams, which would join the group, do not
//     reach istiod, and no WorkloadEntry is written.
//
// A token of a deleted service account is not in this list: only a TokenReview detects it, and
// this ewgate verifies tokens locally (authn's token_review mode is scenario 2's).
//
// istiod's counters are compared before and after: the test is not parallel, so no other test
// talks to the shared istiod meanwhile.
func TestBadVMsNeverReachIstiod(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 4*time.Minute)
	ns, root := vmSetup(t, "badvm")
	other := cluster.Namespace(t, "badvm-other")
	for _, sa := range []struct{ ns, name string }{{ns, "intruder"}, {other, "vm"}} {
		if _, err := cluster.API.CreateServiceAccount(ctx, sa.ns, sa.name); err != nil {
			t.Fatal(err)
		}
	}
	wrongAud, err := cluster.API.Token(ctx, ns, "vm", time.Hour, "not-istio-ca")
	if err != nil {
		t.Fatal(err)
	}
	expired, err := cluster.API.ExpiredIstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	outsiderTok, err := cluster.API.IstioToken(ctx, other, "vm")
	if err != nil {
		t.Fatal(err)
	}
	intruderTok, err := cluster.API.IstioToken(ctx, ns, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	goodTok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}

	front := startFrontOfIstiod(t, ns, "ewgate-e2e-badvms")
	csrs0 := istiodMetric(t, "citadel_server_csr_count")
	authFail0 := istiodMetric(t, "citadel_server_authentication_failure_count")
	issued0 := istiodMetric(t, "citadel_server_success_cert_issuance_count")

	// 1. Bad credentials. Each agent retries its CSR with backoff; it is refused every time.
	type badVM struct {
		vm     *harness.VM
		reason string // ewgate_control_auth_total{result}
	}
	var bad []badVM
	for i, c := range []struct {
		name, token, reason string
	}{
		{"aud1", wrongAud, "bad_audience"},
		{"exp1", expired, "expired"},
		{"none1", "", "none"},
	} {
		vm := front.vm(t, harness.VMOptions{Name: c.name, Namespace: ns, ServiceAccount: "vm", Group: "web",
			IP: fmt.Sprintf("127.0.9.%d", 80+i), Token: c.token})
		bad = append(bad, badVM{vm, c.reason})
	}
	for _, b := range bad {
		// The agent writes its gRPC bootstrap without a certificate; its xDS client makes it
		// try ADS too.
		b.vm.StartXDSClient(t, ctx, "web."+ns+".svc.cluster.local:8080", "")
	}
	for _, b := range bad {
		reason := b.reason
		if err := front.Gw.Proc.WaitFor(harness.Context(t, 60*time.Second), 100*time.Millisecond, func() error {
			if n := front.Metric(t, "ewgate_control_auth_total", `result="`+reason+`"`); n < 2 {
				return fmt.Errorf("ewgate refused %v calls as %s, want the CSR and ADS attempts", n, reason)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v\n---- %s ----\n%s", err, b.vm.Opts.Name, b.vm.Proc.Tail(30))
		}
	}
	for _, b := range bad {
		if b.reason != "none" {
			if err := b.vm.Proc.WaitLog(harness.Context(t, 30*time.Second), "failed to sign CSR"); err != nil {
				t.Fatal(err)
			}
			if log := b.vm.Proc.Log(); !strings.Contains(log, "Unauthenticated") || !strings.Contains(log, "authentication failed ("+b.reason+")") {
				t.Errorf("%s: the agent's log does not show ewgate's refusal (%s):\n%s", b.vm.Opts.Name, b.reason, b.vm.Proc.Tail(20))
			}
		}
		assertNoCert(t, b.vm)
		if n := istiodStreams(t, b.vm.Opts.Name+"."+ns+"-"); n != 0 {
			t.Errorf("istiod holds %d ADS streams of %s", n, b.vm.Opts.Name)
		}
	}
	if d := istiodMetric(t, "citadel_server_csr_count") - csrs0; d != 0 {
		t.Errorf("istiod's CA received %v requests from VMs with bad credentials", d)
	}
	if d := istiodMetric(t, "citadel_server_authentication_failure_count") - authFail0; d != 0 {
		t.Errorf("istiod counted %v authentication failures: bad credentials reached it", d)
	}
	if n := front.Metric(t, "ewgate_control_upstream_dial_failures_total"); n != 0 {
		t.Errorf("ewgate counted %v failed dials to istiod", n)
	}

	// 2. Valid identities claiming a group they may not join, and the good VM.
	outsider := front.vm(t, harness.VMOptions{Name: "out1", Namespace: other, ServiceAccount: "vm", Group: "web", IP: "127.0.9.90", Token: outsiderTok})
	intruder := front.vm(t, harness.VMOptions{Name: "int1", Namespace: ns, ServiceAccount: "intruder", Group: "web", IP: "127.0.9.91", Token: intruderTok})
	good := front.vm(t, harness.VMOptions{Name: "good1", Namespace: ns, ServiceAccount: "vm", Group: "web", IP: "127.0.9.92", Token: goodTok})
	for _, vm := range []*harness.VM{outsider, intruder, good} {
		leaf, err := vm.WaitCert(harness.Context(t, 60*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if want := vm.SPIFFEID("cluster.local"); len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
			t.Fatalf("%s: certificate URIs %v, want [%s]", vm.Opts.Name, leaf.URIs, want)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(t, root), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Fatalf("%s: certificate does not chain to istiod's root: %v", vm.Opts.Name, err)
		}
		vm.StartXDSClient(t, ctx, "web."+ns+".svc.cluster.local:8080", "")
	}
	if d := istiodMetric(t, "citadel_server_success_cert_issuance_count") - issued0; d != 3 {
		t.Errorf("istiod issued %v certificates, want 3 (out1, int1, good1: the CA path through ewgate works)", d)
	}
	for _, c := range []struct {
		vm          *harness.VM
		code, words string
	}{
		{outsider, "FailedPrecondition", "no WorkloadGroup"},
		{intruder, "PermissionDenied", "may not join WorkloadGroup"},
	} {
		if err := c.vm.Proc.WaitLog(harness.Context(t, 60*time.Second), c.words); err != nil {
			t.Fatalf("%v\n---- ewgate ----\n%s", err, front.Gw.Proc.Tail(30))
		}
		if !strings.Contains(c.vm.Proc.Log(), c.code) {
			t.Errorf("%s: the agent's log has no %s:\n%s", c.vm.Opts.Name, c.code, c.vm.Proc.Tail(20))
		}
	}
	// The positive control: the good VM's ADS stream reaches istiod through the same ewgate.
	if err := harness.Poll(harness.Context(t, 60*time.Second), 100*time.Millisecond, func() (bool, error) {
		n := istiodStreams(t, "good1."+ns+"-")
		return n == 1, fmt.Errorf("istiod holds %d ADS streams of the good VM, want 1", n)
	}); err != nil {
		t.Fatal(err)
	}
	for _, vm := range []*harness.VM{outsider, intruder} {
		if n := istiodStreams(t, vm.Opts.Name+"."+vm.Opts.Namespace+"-"); n != 0 {
			t.Errorf("istiod holds %d ADS streams of %s, which may not join the group", n, vm.Opts.Name)
		}
	}
	for _, n := range []string{ns, other} {
		l, err := cluster.API.ListWorkloadEntries(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, we := range l {
			if we.GetName() != good.AutoRegisteredName() {
				t.Errorf("unexpected WorkloadEntry %s/%s", n, we.GetName())
			}
		}
	}
	if d := istiodMetric(t, "citadel_server_authentication_failure_count") - authFail0; d != 0 {
		t.Errorf("istiod counted %v authentication failures", d)
	}
	// The bad VMs kept retrying all along: still nothing of theirs reached istiod's CA, whose
	// only requests were the three valid identities' (one each).
	if d := istiodMetric(t, "citadel_server_csr_count") - csrs0; d != 3 {
		t.Errorf("istiod's CA received %v requests, want 3 (out1, int1, good1)", d)
	}
	if n := front.Metric(t, "ewgate_control_streams_total", `method="ads"`, `result="Unauthenticated"`); n < 3 {
		t.Errorf("ewgate refused %v ADS streams as Unauthenticated, want one per bad VM at least", n)
	}
}
