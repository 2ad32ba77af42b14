package authn

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// discoveryVerifier is a Verifier with one issuer found through OIDC
// discovery on srv.
func discoveryVerifier(t testing.TB, srv *jwksServer, clock *testkit.Clock, mut func(*Config)) *Verifier {
	t.Helper()
	cfg := Config{Issuers: []IssuerConfig{{Issuer: srv.URL, Cluster: "c1", Discovery: true,
		CAFile: caFile(t, srv.Server), RefreshInterval: time.Hour}}}
	if mut != nil {
		mut(&cfg)
	}
	v, err := New(context.Background(), cfg, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

func waitReady(t testing.TB, v *Verifier) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
}

// Keys are added and removed at the issuer while verifications run; each
// change costs exactly one fetch however many callers meet the new kid, and
// on-demand refetches are limited to one per MinRefetchInterval.
func TestRotation(t *testing.T) {
	k1, k2, k3, k4 := testkit.NewKey(t), testkit.NewKey(t), testkit.NewKey(t), testkit.NewKey(t)
	srv := newJWKSServer(t, testkit.JWK{KeyID: "k1", Key: k1})
	clock := newClock()
	v := discoveryVerifier(t, srv, clock, nil)
	waitReady(t, v)
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("after start-up: %d JWKS fetches, want 1", n)
	}
	iss := srv.URL
	tok := func(key *ecdsa.PrivateKey, kid string) string {
		return testkit.SignJWT(t, jose.ES256, key, kid, saClaims(iss, clock.Now()))
	}
	verify := func(token string) error {
		_, err := v.VerifyToken(context.Background(), token)
		return err
	}

	// Background load: fresh k1 tokens, verified continuously. Once k1 is
	// removed they may be refused, but only as unknown_kid.
	stop := make(chan struct{})
	var bg sync.WaitGroup
	var bgOK, bgErr atomic.Int64
	var bgUnexpected atomic.Value
	for range 3 {
		bg.Add(1)
		go func() {
			defer bg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := verify(tok(k1, "k1"))
				switch {
				case err == nil:
					bgOK.Add(1)
				case errors.Is(err, ErrUnknownKID):
					bgErr.Add(1)
				default:
					bgUnexpected.Store(err.Error())
				}
			}
		}()
	}
	defer func() {
		close(stop)
		bg.Wait()
		if u := bgUnexpected.Load(); u != nil {
			t.Fatalf("background verification: unexpected error %v", u)
		}
		if bgOK.Load() == 0 {
			t.Fatal("no background verification succeeded")
		}
	}()

	// 1. A key is added: 16 concurrent callers meet kid k2, one fetch.
	srv.setKeys(testkit.JWK{KeyID: "k1", Key: k1}, testkit.JWK{KeyID: "k2", Key: k2})
	concurrently(t, 16, func() error { return verify(tok(k2, "k2")) })
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("after k2 appeared: %d fetches, want 2", n)
	}

	// 2. Another new kid within MinRefetchInterval: no fetch, refused.
	srv.setKeys(testkit.JWK{KeyID: "k1", Key: k1}, testkit.JWK{KeyID: "k2", Key: k2}, testkit.JWK{KeyID: "k3", Key: k3})
	if err := verify(tok(k3, "k3")); !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("k3 within the refetch interval: %v, want unknown_kid", err)
	}
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("rate-limited refetch fetched: %d, want 2", n)
	}

	// 3. k1 removed, k3 there; 31 s later k3 verifies after one fetch, and
	// k1 is gone.
	srv.setKeys(testkit.JWK{KeyID: "k2", Key: k2}, testkit.JWK{KeyID: "k3", Key: k3})
	clock.Advance(31 * time.Second)
	concurrently(t, 16, func() error { return verify(tok(k3, "k3")) })
	if n := srv.hits.Load(); n != 3 {
		t.Fatalf("after k3: %d fetches, want 3", n)
	}
	if err := verify(tok(k1, "k1")); !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("removed k1: %v, want unknown_kid", err)
	}
	if err := verify(tok(k2, "k2")); err != nil {
		t.Fatalf("k2 after rotation: %v", err)
	}
	if n := srv.hits.Load(); n != 3 {
		t.Fatalf("k1 refusal fetched again: %d, want 3", n)
	}

	// 4. And a fourth key, once the interval has passed again.
	srv.setKeys(testkit.JWK{KeyID: "k3", Key: k3}, testkit.JWK{KeyID: "k4", Key: k4})
	clock.Advance(31 * time.Second)
	concurrently(t, 8, func() error { return verify(tok(k4, "k4")) })
	if n := srv.hits.Load(); n != 4 {
		t.Fatalf("after k4: %d fetches, want 4", n)
	}
	st := v.Status()[0]
	if !st.Ready || st.KeyIDs != "k3,k4" || st.Fetches != 4 || st.LastError != "" {
		t.Fatalf("status %+v", st)
	}
	if got := testutil.ToFloat64(v.m.jwksFetches.WithLabelValues(iss, "ok")); got != 4 {
		t.Fatalf("jwks_fetches_total{result=ok} = %v, want 4", got)
	}
}

// concurrently runs f n times at once (released together) and fails on
// any error.
func concurrently(t testing.TB, n int, f func() error) {
	t.Helper()
	start := make(chan struct{})
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- f()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent verification: %v", err)
		}
	}
}

// The periodic refresh keeps going, and a failing issuer keeps its last
// good key set (and readiness), with the failure visible in Status.
func TestRefreshKeepsLastGoodSet(t *testing.T) {
	k1 := testkit.NewKey(t)
	srv := newJWKSServer(t, testkit.JWK{KeyID: "k1", Key: k1})
	clock := newClock()
	v := discoveryVerifier(t, srv, clock, func(c *Config) { c.Issuers[0].RefreshInterval = 20 * time.Millisecond })
	waitReady(t, v)
	srv.waitHits(t, 3) // periodic refreshes happen
	srv.setStatus(http.StatusInternalServerError)
	n := srv.hits.Load()
	srv.waitHits(t, n+2) // and go on failing (retry is capped by the interval)
	if _, err := v.VerifyToken(context.Background(), testkit.SignJWT(t, jose.ES256, k1, "k1", saClaims(srv.URL, clock.Now()))); err != nil {
		t.Fatalf("token refused while the issuer is failing: %v", err)
	}
	if err := v.Ready(); err != nil {
		t.Fatalf("Ready with a last good set: %v", err)
	}
	st := v.Status()[0]
	if !st.Ready || st.Keys != 1 || !strings.Contains(st.LastError, "HTTP 500") {
		t.Fatalf("status %+v", st)
	}
	if got := testutil.ToFloat64(v.m.jwksFetches.WithLabelValues(srv.URL, "error")); got < 1 {
		t.Fatalf("jwks_fetches_total{result=error} = %v", got)
	}
}

// Start-up does not fail when the issuer is down; readiness says so; once
// it answers, verification works.
func TestStartWhileIssuerDown(t *testing.T) {
	k1 := testkit.NewKey(t)
	srv := newJWKSServer(t, testkit.JWK{KeyID: "k1", Key: k1})
	srv.setStatus(http.StatusServiceUnavailable)
	clock := newClock()
	v := discoveryVerifier(t, srv, clock, nil)
	token := testkit.SignJWT(t, jose.ES256, k1, "k1", saClaims(srv.URL, clock.Now()))
	// The verification waits for a fetch (joined or its own) to finish.
	if _, err := v.VerifyToken(context.Background(), token); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("while down: %v, want keys_unavailable", err)
	}
	err := v.Ready()
	if err == nil || !strings.Contains(err.Error(), srv.URL) || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("Ready = %v, want an error naming the issuer and the failure", err)
	}
	srv.setStatus(0)
	clock.Advance(31 * time.Second)
	if _, err := v.VerifyToken(context.Background(), token); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if err := v.Ready(); err != nil {
		t.Fatalf("Ready after recovery: %v", err)
	}
}

// A hanging issuer never holds a verification longer than VerifyTimeout.
func TestVerifyTimeoutBoundsFetch(t *testing.T) {
	k1 := testkit.NewKey(t)
	srv := newJWKSServer(t, testkit.JWK{KeyID: "k1", Key: k1})
	release := make(chan struct{})
	srv.mu.Lock()
	srv.hang = release
	srv.mu.Unlock()
	defer close(release)
	clock := newClock()
	v := discoveryVerifier(t, srv, clock, func(c *Config) {
		c.VerifyTimeout = 150 * time.Millisecond
		c.Issuers[0].FetchTimeout = time.Minute
	})
	token := testkit.SignJWT(t, jose.ES256, k1, "k1", saClaims(srv.URL, clock.Now()))
	start := time.Now()
	_, err := v.VerifyToken(context.Background(), token)
	if !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("err %v, want keys_unavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("verification blocked %v", d)
	}
	// The caller's own context is honoured too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := v.VerifyToken(ctx, token); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

// Close waits for background goroutines and stops fetching; goleak in
// TestMain checks nothing is left. A Verifier closed by its context too.
func TestCloseAndContext(t *testing.T) {
	k1 := testkit.NewKey(t)
	srv := newJWKSServer(t, testkit.JWK{KeyID: "k1", Key: k1})
	clock := newClock()
	ctx, cancel := context.WithCancel(context.Background())
	v, err := New(ctx, Config{Issuers: []IssuerConfig{{Issuer: srv.URL, Cluster: "c1", Discovery: true,
		CAFile: caFile(t, srv.Server), RefreshInterval: 10 * time.Millisecond}}}, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, v)
	cancel()
	v.Close()
	v.Close() // idempotent
	n := srv.hits.Load()
	if v.goTracked(func(context.Context) {}) {
		t.Fatal("goroutine started after Close")
	}
	// After Close, known keys still verify, unknown kids do not fetch.
	if _, err := v.VerifyToken(context.Background(), testkit.SignJWT(t, jose.ES256, k1, "k1", saClaims(srv.URL, clock.Now()))); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if _, err := v.VerifyToken(context.Background(), testkit.SignJWT(t, jose.ES256, k1, "kx", saClaims(srv.URL, clock.Now()))); !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("unknown kid after close: %v", err)
	}
	if srv.hits.Load() != n {
		t.Fatal("fetched after Close")
	}
}

// A JWKS file is re-read on an unknown kid (a rotated, mounted ConfigMap),
// and a plain jwks_url works with a bearer token.
func TestFileAndURLSources(t *testing.T) {
	k1, k2 := testkit.NewKey(t), testkit.NewKey(t)
	clock := newClock()
	file := writeFile(t, "jwks.json", []byte(testkit.JWKS(t, testkit.JWK{KeyID: "k1", Key: k1})))
	srv := newJWKSServer(t, testkit.JWK{KeyID: "u1", Key: k2})
	cfg := Config{Issuers: []IssuerConfig{
		{Issuer: "https://file.example", Cluster: "f", JWKSFile: file, RefreshInterval: time.Hour},
		{Issuer: "https://url.example", Cluster: "u", JWKSURL: srv.URL + "/openid/v1/jwks", CAFile: caFile(t, srv.Server),
			BearerTokenFile: writeFile(t, "tok", []byte("url-reader")), RefreshInterval: time.Hour},
	}}
	v, err := New(context.Background(), cfg, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	waitReady(t, v)
	ctx := context.Background()
	if _, err := v.VerifyToken(ctx, testkit.SignJWT(t, jose.ES256, k1, "k1", saClaims("https://file.example", clock.Now()))); err != nil {
		t.Fatalf("file source: %v", err)
	}
	if _, err := v.VerifyToken(ctx, testkit.SignJWT(t, jose.ES256, k2, "u1", saClaims("https://url.example", clock.Now()))); err != nil {
		t.Fatalf("url source: %v", err)
	}
	if got := srv.auth.Load(); got != "Bearer url-reader" {
		t.Fatalf("Authorization %q", got)
	}
	if err := os.WriteFile(file, []byte(testkit.JWKS(t, testkit.JWK{KeyID: "k1", Key: k1}, testkit.JWK{KeyID: "k2", Key: k2})), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyToken(ctx, testkit.SignJWT(t, jose.ES256, k2, "k2", saClaims("https://file.example", clock.Now()))); err != nil {
		t.Fatalf("rotated file: %v", err)
	}
	// A discovery document naming another issuer is refused.
	v2, err := New(context.Background(), Config{Issuers: []IssuerConfig{{Issuer: "https://not-this-server.example", Cluster: "x",
		DiscoveryURL: srv.URL, CAFile: caFile(t, srv.Server), RefreshInterval: time.Hour}}}, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	if _, err := v2.VerifyToken(ctx, testkit.SignJWT(t, jose.ES256, k2, "u1", saClaims("https://not-this-server.example", clock.Now()))); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("mismatched discovery issuer: %v", err)
	}
	if st := v2.Status()[0]; !strings.Contains(st.LastError, "document names issuer") {
		t.Fatalf("status %+v", st)
	}
	// Without the CA bundle the server's certificate is not trusted.
	v3, err := New(context.Background(), Config{Issuers: []IssuerConfig{{Issuer: srv.URL, Cluster: "x",
		Discovery: true, RefreshInterval: time.Hour}}}, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer v3.Close()
	if _, err := v3.VerifyToken(ctx, testkit.SignJWT(t, jose.ES256, k2, "u1", saClaims(srv.URL, clock.Now()))); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("untrusted JWKS server: %v", err)
	}
	if st := v3.Status()[0]; !strings.Contains(st.LastError, "certificate") {
		t.Fatalf("status %+v", st)
	}
}
