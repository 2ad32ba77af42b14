package scenarios

// Issue 19, scenario 3: VMs outlive their bootstrap token. A real pilot-agent set up from a
// bundle of `ewgate vm-config` (harness.VMOptions.Bundle: the layout and environment of Istio's
// istio-start.sh, so PROV_CERT = OUTPUT_CERTS = ./etc/certs) whose istio-token expires a few
// seconds into the test, and whose certificates live SECRET_TTL (a short lifetime, so the agent
// renews several times). After the token has expired the agent renews its certificate through
// ewgate with the certificate it was issued (the expired token still attached), and its ADS
// stream, re-opened through a restarted ewgate on the same address, is authenticated the same
// way; the WorkloadEntry is connected again and istiod counts no authentication failure. Under
// istiod in both identity modes (forward: the certificate-authenticated call goes with
// x-forwarded-client-cert, the expired token dropped; xfcc) and standalone (ewgate's built-in CA
// and control plane).

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/ewgate/ewgate/e2e/harness"
)

const (
	// expiryTokenLife is the istio-token's lifetime: the agent's first certificate, and its
	// first renewal, are made with it; everything after is not.
	expiryTokenLife = 15 * time.Second
	// apiserverLeeway: the apiserver (TokenReview, which istiod asks) still accepts a
	// service-account token up to a minute past its exp (go-jose's default leeway). A token
	// forwarded to istiod is only refused after that, so the forward mode waits it out: a renewal
	// within it would pass at istiod even with the expired token forwarded.
	apiserverLeeway = time.Minute
	// expiryCertTTL is the agent's SECRET_TTL: it renews at about half of it.
	expiryCertTTL = 30 * time.Second
)

func TestVMOutlivesItsToken(t *testing.T) {
	cluster.LogOnFailure(t)
	authFail0 := istiodMetric(t, "citadel_server_authentication_failure_count")
	logFrom := cluster.Istiod.Proc.LogSize()
	// The three wait out a token and a renewal each: in parallel, inside a group that returns
	// when all have.
	t.Run("modes", func(t *testing.T) {
		t.Run("istiod-forward", func(t *testing.T) {
			t.Parallel()
			vmOutlivesTokenUnderIstiod(t, "forward", "exp-fw", "127.0.9.81", apiserverLeeway)
		})
		t.Run("istiod-xfcc", func(t *testing.T) {
			t.Parallel()
			vmOutlivesTokenUnderIstiod(t, "xfcc", "exp-xf", "127.0.9.82", 0)
		})
		t.Run("standalone", func(t *testing.T) {
			t.Parallel()
			vmOutlivesTokenStandalone(t, "exp-sa", "127.0.9.91")
		})
	})
	// After all three: istiod refused nothing, neither a CSR (its only authentication counter)
	// nor an ADS stream (which it only logs).
	if d := istiodMetric(t, "citadel_server_authentication_failure_count") - authFail0; d != 0 {
		t.Errorf("istiod counted %v CSR authentication failures", d)
	}
	if log := cluster.Istiod.Proc.LogSince(logFrom); strings.Contains(log, "Failed to authenticate client") {
		t.Errorf("istiod refused a call:\n%s", grepLines(log, "Failed to authenticate client"))
	}
}

// expiryFront is an ewgate in front of the shared istiod, restartable on the same addresses.
type expiryFront struct {
	gw        *harness.Ewgate
	admin     string
	config    string
	control   string
	servingCA []byte
	instance  string
}

func startExpiryFront(t *testing.T, identity, ns, instance string) *expiryFront {
	t.Helper()
	ctx := harness.Context(t, 60*time.Second)
	meshRoot, err := cluster.Istiod.RootCert(ctx, cluster.API, ns)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serving, err := harness.NewControlServingCert(dir, controlSAN)
	if err != nil {
		t.Fatal(err)
	}
	rootFile := writeTemp(t, dir, "istiod-root.pem", meshRoot)
	f := &expiryFront{admin: freeAddr(t), control: loopbackWithPort(t, 15012), servingCA: serving.CA.CertPEM, instance: instance}
	// The trust bundle is the mesh root: what lets ewgate authenticate a VM by the certificate
	// istiod issued it once its token has expired. leeway 1s: the token counts as expired a
	// second after its exp, not a minute (the default). idle_timeout 5s, between the agent's
	// renewals as the default 15m is between a real agent's (12 h apart): a TLS connection keeps
	// the certificate of its handshake, so a renewal on a connection older than the agent's
	// current certificate is refused (its certificate expired, or there was none) and the agent
	// reconnects; with the idle connection closed, each renewal opens a fresh one.
	f.config = fmt.Sprintf(`
admin: {address: %[1]s}
drain_timeout: 1s
listeners:
  - {name: mesh, kind: mesh, address: %[2]s}
kubernetes: {kubeconfig: %[3]s}
authn:
  issuers:
    - issuer: %[4]s
      cluster: %[5]s
      discovery_url: %[6]s
      ca_file: %[7]s
  client_certs:
    trust_bundles:
      - {trust_domain: cluster.local, ca_file: %[12]s, cluster: %[5]s}
  leeway: 1s
control:
  address: %[8]s
  tls: {cert_file: %[9]s, key_file: %[10]s}
  limits: {idle_timeout: 5s}
  upstreams:
    - cluster: %[5]s
      address: %[11]s
      ca_file: %[12]s
      server_name: %[13]s
      identity: %[14]s
registrar:
  instance: %[15]s
  grace_period: 2m
`, f.admin, freeAddr(t), yamlQuote(cluster.API.Kubeconfig), yamlQuote(cluster.API.Issuer), cluster.Istiod.ClusterID,
		yamlQuote(cluster.API.URL), yamlQuote(cluster.API.CAFile), f.control, yamlQuote(serving.CertFile), yamlQuote(serving.KeyFile),
		cluster.Istiod.SecureAddr, yamlQuote(rootFile), cluster.Istiod.SAN, identity, instance)
	f.gw = harness.StartEwgate(t, f.admin, f.config)
	waitIssuer(t, ctx, f.gw, false)
	return f
}

// restart stops ewgate (its ADS streams end) and starts it again on the same addresses.
func (f *expiryFront) restart(t *testing.T, ready bool) {
	t.Helper()
	if err := f.gw.Proc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	f.gw = harness.StartEwgate(t, f.admin, f.config)
	waitIssuer(t, harness.Context(t, 60*time.Second), f.gw, ready)
}

func (f *expiryFront) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	m, err := f.gw.Metrics(harness.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return harness.MetricSum(m, name, labels...)
}

// vmOutlivesTokenUnderIstiod: stale is how long after the token's expiry the renewal and the
// re-opened ADS stream checked must come.
func vmOutlivesTokenUnderIstiod(t *testing.T, identity, name, vmIP string, stale time.Duration) {
	ctx := harness.Context(t, 3*time.Minute)
	ns, _ := vmSetup(t, "vmexp-"+identity)
	backend, host := echoService(t, ctx, ns, "")
	front := startExpiryFront(t, identity, ns, "ewgate-e2e-exp-"+identity)
	ewgateIP, _, _ := net.SplitHostPort(front.control)
	bundleDir := vmConfig(t, ctx, "--kubeconfig", cluster.API.Kubeconfig, "--group", ns+"/web",
		"--ewgate-address", ewgateIP, "--serving-ca", writeTemp(t, t.TempDir(), "serving-ca.pem", front.servingCA),
		"--internal-ip", vmIP, "--cluster-id", cluster.Istiod.ClusterID)
	// vm-config's token is a TokenRequest's (10 minutes at least): the test replaces it with one
	// of the same claims, signed with the apiserver's key, that expires in expiryTokenLife.
	acct, err := cluster.API.Kube.CoreV1().ServiceAccounts(ns).Get(ctx, "vm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	iat := time.Now()
	exp := iat.Add(expiryTokenLife)
	tok, err := cluster.API.SignToken(cluster.API.ServiceAccountClaims(ns, "vm", string(acct.UID), iat, exp, "istio-ca"))
	if err != nil {
		t.Fatal(err)
	}
	replaceBundleToken(t, bundleDir, tok)

	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{Name: name, Bundle: bundleDir,
		Env: []string{"SECRET_TTL=" + expiryCertTTL.String()}})
	client := vm.StartXDSClient(t, ctx, host+":"+strconv.Itoa(backend.Port), "health")
	if err := client.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, client.Tail(30), front.gw.Proc.Tail(40))
	}
	entry := vm.AutoRegisteredName()
	if _, err := waitConnectedEntry(t, ns, entry, front.instance, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	leaf := waitCertIssuedAfter(t, vm, exp.Add(stale), front.gw)
	t.Logf("certificate %s issued after the token expired (NotAfter %s)", leaf.SerialNumber, leaf.NotAfter.Format(time.RFC3339))
	if n := front.metric(t, "ewgate_control_auth_total", `result="cert_after_expired_token"`); n < 1 {
		t.Errorf("ewgate_control_auth_total{result=cert_after_expired_token} = %v before the restart, want >= 1", n)
	}

	logAuthResults(t, "before the restart", front.gw)
	// The ADS stream re-opened through a new ewgate: the token has expired, the certificate
	// authenticates it.
	restarted := time.Now()
	front.restart(t, false)
	if _, err := cluster.API.WaitWorkloadEntry(harness.Context(t, 60*time.Second), ns, entry, reconnectedSince(front.instance, restarted)); err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s\n---- agent ----\n%s", err, front.gw.Proc.Tail(40), vm.Proc.Tail(40))
	}
	if n := front.metric(t, "ewgate_control_auth_total", `result="cert_after_expired_token"`); n < 1 {
		t.Errorf("the restarted ewgate counted %v cert_after_expired_token authentications, want >= 1 (the re-opened ADS stream)", n)
	}
	if err := harness.Poll(harness.Context(t, 30*time.Second), 100*time.Millisecond, func() (bool, error) {
		n := istiodStreams(t, name+"."+ns+"-")
		return n == 1, fmt.Errorf("istiod holds %d ADS streams of the VM, want 1", n)
	}); err != nil {
		t.Error(err)
	}
	logAuthResults(t, "after the restart", front.gw)
}

// logAuthResults logs ewgate's authentication results and its lines about the VM's token, for
// the record of what the real agent does.
//
// It fails the test if ewgate refused any call of the agent as expired: with the idle
// connections closed between renewals (see startExpiryFront), every call after the token's
// expiry comes on a connection that presents the agent's current certificate.
func logAuthResults(t *testing.T, when string, gw *harness.Ewgate) {
	t.Helper()
	m, err := gw.Metrics(harness.Context(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var counts []string
	for _, r := range []string{"ok", "cert_after_expired_token", "expired", "none"} {
		counts = append(counts, fmt.Sprintf("%s=%v", r, harness.MetricSum(m, "ewgate_control_auth_total", `result="`+r+`"`)))
	}
	t.Logf("ewgate %s: ewgate_control_auth_total %s\n%s", when, strings.Join(counts, " "), grepLines(gw.Proc.Log(), "token has expired"))
	if n := harness.MetricSum(m, "ewgate_control_auth_total", `result="expired"`); n != 0 {
		t.Errorf("ewgate %s refused %v calls as expired:\n%s", when, n, grepLines(gw.Proc.Log(), "authentication failed"))
	}
}

// reconnectedSince: the entry is connected (no disconnectedAt), by instance, since t.
func reconnectedSince(instance string, since time.Time) func(u *unstructured.Unstructured) error {
	return func(u *unstructured.Unstructured) error {
		ann := u.GetAnnotations()
		at, err := time.Parse(time.RFC3339Nano, ann["istio.io/connectedAt"])
		switch {
		case ann["istio.io/disconnectedAt"] != "":
			return fmt.Errorf("disconnected at %s", ann["istio.io/disconnectedAt"])
		case err != nil:
			return fmt.Errorf("connectedAt %q: %v", ann["istio.io/connectedAt"], err)
		case at.Before(since.Add(-time.Second)): // RFC 3339 in the annotation may drop sub-seconds
			return fmt.Errorf("connectedAt %s, before the restart at %s", at.Format(time.RFC3339Nano), since.Format(time.RFC3339Nano))
		case ann["istio.io/workloadController"] != instance:
			return fmt.Errorf("controller %q", ann["istio.io/workloadController"])
		}
		return nil
	}
}

// waitCertIssuedAfter waits for a workload certificate the agent obtained after exp, the
// token's expiry: issued at NotAfter - SECRET_TTL (istiod and ewgate's CA alike give exactly the
// requested lifetime). The agent's CA connection was opened before it had a certificate, so its
// first renewal after exp goes with the expired token alone and is refused; the agent then
// reconnects (a new handshake, with its certificate) and the retry is authenticated by it.
func waitCertIssuedAfter(t *testing.T, vm *harness.VM, exp time.Time, gw *harness.Ewgate) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	err := vm.Proc.WaitFor(harness.Context(t, time.Until(exp)+90*time.Second), 200*time.Millisecond, func() error {
		c, err := vm.WaitCert(harness.Context(t, 5*time.Second))
		if err != nil {
			return err
		}
		if issued := c.NotAfter.Add(-expiryCertTTL); !issued.After(exp.Add(2 * time.Second)) {
			return fmt.Errorf("the newest certificate (serial %s) was issued at %s, not after the token's expiry %s",
				c.SerialNumber, issued.Format(time.RFC3339), exp.Format(time.RFC3339))
		}
		leaf = c
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s\n---- agent ----\n%s", err, gw.Proc.Tail(40), vm.Proc.Tail(40))
	}
	return leaf
}

// replaceBundleToken writes tok as the bundle's istio-token (0600, as vm-config writes it).
func replaceBundleToken(t *testing.T, bundleDir, tok string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(bundleDir, "istio-token"), []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
}

func vmOutlivesTokenStandalone(t *testing.T, name, vmIP string) {
	ctx := harness.Context(t, 3*time.Minute)
	const ns = bundleNS
	bs := prepareBundleStandalone(t, ctx, vmIP, bundleStandaloneOptions{instance: "ewgate-e2e-exp-standalone", gracePeriod: "2m",
		top: "drain_timeout: 1s\n", authn: "  leeway: 1s\n", controlKeys: "  limits: {idle_timeout: 5s}\n"})
	admin, config, store, keyDir, bundleDir, webHost, backend := bs.admin, bs.config, bs.store, bs.keyDir, bs.bundleDir, bs.webHost, bs.backend
	// vm-config signs for at least 10 minutes: the same claims, signed with the same key, for
	// expiryTokenLife. No authn.client_certs: ewgate trusts its own CA's certificates.
	iat := time.Now()
	exp := iat.Add(expiryTokenLife)
	replaceBundleToken(t, bundleDir, signStandaloneToken(t, keyDir, bundleTokenIssuer, ns, "vm", iat, exp))

	gw := harness.StartEwgate(t, admin, config)
	waitIssuer(t, ctx, gw, true)
	vm := harness.StartVM(t, cluster.Peers.PilotAgent(), harness.VMOptions{Name: name, Bundle: bundleDir,
		Env: []string{"SECRET_TTL=" + expiryCertTTL.String()}})
	client := vm.StartXDSClient(t, ctx, fmt.Sprintf("%s:%d", webHost, backend.Port), "health")
	if err := client.WaitLog(harness.Context(t, 60*time.Second), "xds-client: rpc ok SERVING"); err != nil {
		t.Fatalf("%v\n---- xds client ----\n%s\n---- ewgate ----\n%s", err, client.Tail(30), gw.Proc.Tail(40))
	}
	entry := entryFile(store, ns, vm.AutoRegisteredName())
	if _, err := waitFileEntry(t, entry, time.Time{}); err != nil {
		t.Fatal(err)
	}

	leaf := waitCertIssuedAfter(t, vm, exp, gw)
	t.Logf("certificate %s issued after the token expired (NotAfter %s)", leaf.SerialNumber, leaf.NotAfter.Format(time.RFC3339))
	m, err := gw.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := harness.MetricSum(m, "ewgate_control_auth_total", `result="cert_after_expired_token"`); n < 1 {
		t.Errorf("ewgate_control_auth_total{result=cert_after_expired_token} = %v, want >= 1", n)
	}

	logAuthResults(t, "before the restart", gw)
	restarted := time.Now()
	if err := gw.Proc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	gw = harness.StartEwgate(t, admin, config)
	waitIssuer(t, ctx, gw, true)
	if _, err := waitFileEntry(t, entry, restarted); err != nil {
		t.Fatalf("%v\n---- ewgate ----\n%s\n---- agent ----\n%s", err, gw.Proc.Tail(40), vm.Proc.Tail(40))
	}
	if m, err = gw.Metrics(ctx); err != nil {
		t.Fatal(err)
	}
	if n := harness.MetricSum(m, "ewgate_control_auth_total", `result="cert_after_expired_token"`); n < 1 {
		t.Errorf("the restarted ewgate counted %v cert_after_expired_token authentications, want >= 1 (the re-opened ADS stream)", n)
	}
	logAuthResults(t, "after the restart", gw)
}

var connectedAtRE = regexp.MustCompile(`istio\.io/connectedAt: "?([^"\s]+)"?`)

// waitFileEntry waits until the file store's entry is connected (no disconnectedAt) since since.
func waitFileEntry(t *testing.T, path string, since time.Time) (string, error) {
	t.Helper()
	var body string
	err := harness.Poll(harness.Context(t, 60*time.Second), 100*time.Millisecond, func() (bool, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err
		}
		body = string(b)
		m := connectedAtRE.FindStringSubmatch(body)
		if m == nil || strings.Contains(body, "istio.io/disconnectedAt") {
			return false, fmt.Errorf("entry not connected:\n%s", body)
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			return false, fmt.Errorf("connectedAt %q: %v", m[1], err)
		}
		if at.Before(since.Add(-time.Second)) {
			return false, fmt.Errorf("connectedAt %s, before %s", m[1], since.Format(time.RFC3339Nano))
		}
		return true, nil
	})
	return body, err
}

// signStandaloneToken signs a token as `ewgate vm-config --config` does (ES256 with its key in
// keyDir, kid from its JWKS), with the lifetime the test wants.
func signStandaloneToken(t *testing.T, keyDir, iss, ns, sa string, iat, exp time.Time) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(keyDir, "vm-token-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("vm-token-key.pem: no PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("vm-token-key.pem: %T, want ECDSA", k)
	}
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
		} `json:"keys"`
	}
	if b, err = os.ReadFile(filepath.Join(keyDir, "vm-token-jwks.json")); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("vm-token-jwks.json: %v, %d keys", err, len(set.Keys))
	}
	hdr, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": set.Keys[0].Kid, "typ": "JWT"})
	payload, _ := json.Marshal(map[string]any{
		"iss": iss, "sub": "system:serviceaccount:" + ns + ":" + sa, "aud": []string{"istio-ca"},
		"iat": iat.Unix(), "nbf": iat.Unix(), "exp": exp.Unix(), "jti": fmt.Sprintf("e2e-%d", time.Now().UnixNano()),
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]string{"name": sa, "uid": ""}},
	})
	signing := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(pad32(r), pad32(s)...) // JWS ES256: R || S, 32 bytes each (RFC 7518 3.4)
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func pad32(n *big.Int) []byte {
	out := make([]byte, 32)
	return n.FillBytes(out)
}

// grepLines returns the lines of text that contain s.
func grepLines(text, s string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
