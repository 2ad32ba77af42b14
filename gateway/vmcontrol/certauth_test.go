package vmcontrol_test

import (
	"crypto/rand"
	"crypto/rsa"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// A VM outlives its bootstrap token: pilot-agent keeps attaching the token (now expired) and
// presents the certificate it was issued (PROV_CERT). These tests run real TLS between a
// grpc-go client and the front, and between the front and a test upstream that records what it
// receives.

const vmSPIFFE = "spiffe://cluster.local/ns/" + vmNS + "/sa/" + vmSA

// expiredToken is a token of the test issuer for ns/sa, correctly signed, that expired a
// minute ago.
func expiredToken(t *testing.T, ns, sa string) string {
	t.Helper()
	now := time.Now()
	return token(t, ns, sa,
		testkit.Claim("exp", now.Add(-time.Minute).Unix()),
		testkit.Claim("iat", now.Add(-time.Hour).Unix()),
		testkit.Claim("nbf", now.Add(-time.Hour).Unix()))
}

// forgedToken has the test issuer's iss and kid and valid claims, but is signed with a key of
// its own: the signature does not verify.
func forgedToken(t *testing.T, exp time.Time) string {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	forger := testkit.NewIssuer(t, issuer)
	forger.Key = key
	return forger.Token(t, vmNS, vmSA, testkit.Claim("exp", exp.Unix()),
		testkit.Claim("iat", exp.Add(-time.Hour).Unix()), testkit.Claim("nbf", exp.Add(-time.Hour).Unix()))
}

// TestExpiredTokenNextToAValidCertificate: an expired token next to a client certificate that
// verifies is authenticated by the certificate (counted cert_after_expired_token, one log line
// per VM); an expired token alone, or next to a certificate that does not verify, is refused
// "expired"; a forged token, or one of the wrong audience, is refused whatever certificate
// comes with it.
func TestExpiredTokenNextToAValidCertificate(t *testing.T) {
	reg := prometheus.NewRegistry()
	core, logs := observer.New(zap.InfoLevel)
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		AuthFailures: vmcontrol.AuthFailureConfig{Rate: -1}}, vmcontrol.Options{Registerer: reg, Logger: zap.New(core)})
	vmCert := p.mesh.Client(t, []string{vmSPIFFE}).TLS()
	stranger := testkit.NewCA(t, "stranger").Client(t, []string{vmSPIFFE}).TLS()

	cases := []struct {
		name  string
		token string
		cert  bool // the VM's mesh certificate
		other bool // a certificate of another root
		code  codes.Code
		msg   string
	}{
		{name: "expired token, valid certificate", token: expiredToken(t, vmNS, vmSA), cert: true, code: codes.OK},
		{name: "expired token, no certificate", token: expiredToken(t, vmNS, vmSA), code: codes.Unauthenticated, msg: "(expired): no client certificate came with the expired token"},
		{name: "expired token, certificate of another root", token: expiredToken(t, vmNS, vmSA), other: true, code: codes.Unauthenticated, msg: "(expired): the client certificate next to the expired token failed too (untrusted_cert)"},
		{name: "forged token, valid certificate", token: forgedToken(t, time.Now().Add(time.Hour)), cert: true, code: codes.Unauthenticated, msg: "(bad_signature)"},
		{name: "forged expired token, valid certificate", token: forgedToken(t, time.Now().Add(-time.Minute)), cert: true, code: codes.Unauthenticated, msg: "(bad_signature)"},
		{name: "wrong audience, valid certificate", token: token(t, vmNS, vmSA, testkit.Claim("aud", []string{"api"})), cert: true, code: codes.Unauthenticated, msg: "(bad_audience)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := len(u.seen())
			cc := g.dial(t, p)
			switch {
			case tc.cert:
				cc = g.dial(t, p, vmCert)
			case tc.other:
				cc = g.dial(t, p, stranger)
			}
			_, _, _, err := echo(t, withToken(t.Context(), tc.token), cc, "renew")
			if status.Code(err) != tc.code || (tc.msg != "" && !strings.Contains(err.Error(), tc.msg)) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.code, tc.msg)
			}
			served := len(u.seen()) - before
			if want := map[bool]int{true: 1, false: 0}[tc.code == codes.OK]; served != want {
				t.Fatalf("the upstream got %d calls, want %d", served, want)
			}
		})
	}
	if n := testkit.Metric(t, reg, "ewgate_control_auth_total", map[string]string{"result": "cert_after_expired_token"}); n != 1 {
		t.Errorf("ewgate_control_auth_total{result=cert_after_expired_token} = %v, want 1", n)
	}
	if n := testkit.Metric(t, reg, "ewgate_control_auth_total", map[string]string{"result": "expired"}); n != 2 {
		t.Errorf("ewgate_control_auth_total{result=expired} = %v, want 2", n)
	}

	// The same VM again: served, counted, not logged a second time; the line never holds the token.
	tok := expiredToken(t, vmNS, vmSA)
	if _, _, _, err := echo(t, withToken(t.Context(), tok), g.dial(t, p, vmCert), "again"); err != nil {
		t.Fatal(err)
	}
	lines := logs.FilterMessageSnippet("token has expired").All()
	if len(lines) != 1 || lines[0].ContextMap()["identity"] != vmSPIFFE {
		t.Fatalf("expired-token lines: %v, want one naming %s", lines, vmSPIFFE)
	}
	for _, l := range logs.All() {
		for _, v := range l.ContextMap() {
			if s, ok := v.(string); ok && strings.Contains(s, tok[:20]) {
				t.Fatalf("a log line holds the token: %v", l.ContextMap())
			}
		}
	}
}

// TestForwardModeForwardsTheCertificateIdentity: with identity: forward, a call authenticated
// by its certificate (an expired token, or none) reaches the upstream with the verified SPIFFE
// ID in x-forwarded-client-cert and without the VM's authorization header (istiod would refuse
// the expired token); a call authenticated by a valid token still carries the token and no
// XFCC. With identity: xfcc, the expired-token call goes as any other.
func TestForwardModeForwardsTheCertificateIdentity(t *testing.T) {
	valid := token(t, vmNS, vmSA)
	cases := []struct {
		name      string
		mode      string
		token     string
		wantAuthz string // "" : none
		wantXFCC  string // "" : none
	}{
		{"forward, expired token and certificate", vmcontrol.IdentityForward, expiredToken(t, vmNS, vmSA), "", "URI=" + vmSPIFFE},
		{"forward, certificate only", vmcontrol.IdentityForward, "", "", "URI=" + vmSPIFFE},
		{"forward, valid token and certificate", vmcontrol.IdentityForward, valid, "Bearer " + valid, ""},
		{"xfcc, expired token and certificate", vmcontrol.IdentityXFCC, expiredToken(t, vmNS, vmSA), "", "URI=" + vmSPIFFE},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, u, g := setup(t, tc.mode)
			cc := g.dial(t, p, p.mesh.Client(t, []string{vmSPIFFE}).TLS())
			// The VM's own XFCC header is never trusted, whatever the mode.
			ctx := withToken(t.Context(), tc.token, "clusterid", "c1", "x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/istio-system/sa/istiod")
			if _, _, _, err := echo(t, ctx, cc, "a"); err != nil {
				t.Fatal(err)
			}
			md := u.seen()[0].md
			if got := strings.Join(md.Get("authorization"), ","); got != tc.wantAuthz {
				t.Errorf("the upstream got authorization %q, want %q", redact(got), redact(tc.wantAuthz))
			}
			if got := strings.Join(md.Get("x-forwarded-client-cert"), ","); got != tc.wantXFCC {
				t.Errorf("the upstream got x-forwarded-client-cert %q, want %q", got, tc.wantXFCC)
			}
			if got := md.Get("clusterid"); len(got) != 1 || got[0] != "c1" {
				t.Errorf("the upstream got ClusterID %v, want [c1]", got)
			}
		})
	}
}

// redact keeps a test failure from printing a token.
func redact(authz string) string {
	if authz == "" {
		return ""
	}
	return "Bearer <token>"
}
