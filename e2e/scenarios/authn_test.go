package scenarios

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/e2e/harness"
)

// newVerifier builds an authn.Verifier trusting the shared apiserver's issuer, its keys found
// as the issuer config says, and waits until the keys are fetched.
func newVerifier(t *testing.T, is authn.IssuerConfig, cache bool) *authn.Verifier {
	t.Helper()
	is.Issuer, is.Cluster = cluster.API.Issuer, "e2e"
	if is.CAFile == "" && (is.DiscoveryURL != "" || is.JWKSURL != "") {
		is.CAFile = cluster.API.CAFile
	}
	cfg := authn.Config{Issuers: []authn.IssuerConfig{is}}
	cfg.Cache.Disabled = !cache
	ctx := harness.Context(t, 30*time.Second)
	v, err := authn.New(ctx, cfg, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	if err := v.WaitReady(ctx); err != nil {
		t.Fatalf("key set not fetched: %v", err)
	}
	return v
}

// TestAuthnRealTokens: tokens minted by the real apiserver (TokenRequest, audience istio-ca)
// verify through authn with the apiserver's keys found by OIDC discovery and, separately, by
// its JWKS URL; the identity carries the service account's namespace, name and UID. A token
// for another audience is refused with ErrBadAudience, an expired one with ErrExpired
// (issue 3 scenario 2, issue 4's real-token test).
func TestAuthnRealTokens(t *testing.T) {
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 60*time.Second)
	ns := cluster.Namespace(t, "authn")
	sa, err := cluster.API.CreateServiceAccount(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	other, err := cluster.API.Token(ctx, ns, "vm", time.Hour, "other-audience")
	if err != nil {
		t.Fatal(err)
	}
	expired, err := cluster.API.ExpiredIstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		is   authn.IssuerConfig
	}{
		// The issuer is the apiserver's URL here, but discovery_url is what a gateway outside
		// the cluster sets (the issuer name is often not an address it can reach).
		{"discovery", authn.IssuerConfig{DiscoveryURL: cluster.API.URL}},
		{"jwks_url", authn.IssuerConfig{JWKSURL: cluster.API.URL + "/openid/v1/jwks"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := newVerifier(t, c.is, false)
			id, err := v.VerifyToken(ctx, tok)
			if err != nil {
				t.Fatalf("real istio-ca token refused: %v", err)
			}
			if id.Namespace != ns || id.ServiceAccount != "vm" || id.ServiceAccountUID != string(sa.UID) ||
				id.SPIFFEID != "spiffe://cluster.local/ns/"+ns+"/sa/vm" || id.Issuer != cluster.API.Issuer ||
				id.Cluster != "e2e" || id.Source != authn.SourceJWT || time.Until(id.ExpiresAt) < 50*time.Minute {
				t.Fatalf("identity %+v", id)
			}
			if _, err := v.VerifyToken(ctx, other); !errors.Is(err, authn.ErrBadAudience) {
				t.Fatalf("token for another audience: %v, want ErrBadAudience", err)
			}
			if _, err := v.VerifyToken(ctx, expired); !errors.Is(err, authn.ErrExpired) {
				t.Fatalf("expired token: %v, want ErrExpired", err)
			}
		})
	}
}

// TestAuthnTokenReviewRevoked: in TokenReview mode a token whose service account was deleted
// is refused with ErrRevoked once the apiserver's own 10 s cache of successful
// authentications has passed (authn's review cache is set far shorter so the apiserver's
// is the one measured).
func TestAuthnTokenReviewRevoked(t *testing.T) {
	t.Parallel() // waits out a 10 s timer of a peer
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 90*time.Second)
	ns := cluster.Namespace(t, "authn-review")
	if _, err := cluster.API.CreateServiceAccount(ctx, ns, "vm"); err != nil {
		t.Fatal(err)
	}
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	cred := filepath.Join(t.TempDir(), "reviewer-token")
	if err := os.WriteFile(cred, []byte(cluster.API.AdminToken), 0o600); err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, authn.IssuerConfig{
		DiscoveryURL: cluster.API.URL,
		TokenReview: &authn.TokenReviewConfig{
			URL: cluster.API.URL, CAFile: cluster.API.CAFile, BearerTokenFile: cred, CacheTTL: 200 * time.Millisecond,
		},
	}, false)
	id, err := v.VerifyToken(ctx, tok)
	if err != nil || id.Namespace != ns || id.ServiceAccount != "vm" {
		t.Fatalf("live service account's token: %+v, %v", id, err)
	}
	if err := cluster.API.Kube.CoreV1().ServiceAccounts(ns).Delete(ctx, "vm", deleteNow); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	var last error
	err = harness.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		_, last = v.VerifyToken(ctx, tok)
		if last != nil && !errors.Is(last, authn.ErrRevoked) {
			return false, last // refused for another reason: a failure
		}
		return last != nil, nil
	})
	if err != nil {
		t.Fatalf("token of the deleted service account: %v (last verification: %v)", err, last)
	}
	after := time.Since(deleted)
	if after < 5*time.Second {
		t.Fatalf("refused %s after the deletion: sooner than the apiserver's 10 s cache allows", after)
	}
	t.Logf("token of the deleted service account refused with ErrRevoked %s after the deletion", after.Round(100*time.Millisecond))
}
