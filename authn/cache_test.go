package authn

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// inlineVerifier has one issuer with an inline ES256 key.
func inlineVerifier(t testing.TB, clock *testkit.Clock, mut func(*Config)) *Verifier {
	t.Helper()
	testKeys(t)
	cfg := Config{Issuers: []IssuerConfig{{Issuer: issuerB, Cluster: "c1", JWKS: testkit.JWKS(t, testkit.JWK{KeyID: "k1", Key: ec256})}}}
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

func cacheCounts(v *Verifier) (hits, misses float64) {
	return testutil.ToFloat64(v.m.cacheLookups.WithLabelValues("hit")),
		testutil.ToFloat64(v.m.cacheLookups.WithLabelValues("miss"))
}

func TestCacheHitAndExpiry(t *testing.T) {
	clock := newClock()
	v := inlineVerifier(t, clock, func(c *Config) { c.Cache.MaxTTL = time.Hour })
	now := clock.Now()
	token := testkit.SignJWT(t, jose.ES256, ec256, "k1", with(saClaims(issuerB, now), "exp", now.Add(2*time.Minute).Unix()))
	ctx := context.Background()

	id1, err := v.VerifyToken(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := v.VerifyToken(ctx, token)
	if err != nil {
		t.Fatal(err)
	}
	if h, m := cacheCounts(v); h != 1 || m != 1 {
		t.Fatalf("hits %v misses %v, want 1 1", h, m)
	}
	if *id1 != *id2 {
		t.Fatalf("cached identity differs: %+v vs %+v", id1, id2)
	}
	// The caller owns what it gets: editing it does not change the cache.
	id2.Namespace = "kube-system"
	if id3, _ := v.VerifyToken(ctx, token); id3.Namespace != "vm-ns" {
		t.Fatalf("cache entry was modified through a returned identity")
	}

	// Past exp the entry is gone; the token is verified again (and still
	// accepted within the leeway, but not cached: it has expired).
	clock.Advance(2*time.Minute + time.Second)
	if _, err := v.VerifyToken(ctx, token); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
	if _, err := v.VerifyToken(ctx, token); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
	if h, m := cacheCounts(v); h != 2 || m != 3 {
		t.Fatalf("after exp: hits %v misses %v, want 2 3", h, m)
	}
	clock.Advance(time.Minute)
	if _, err := v.VerifyToken(ctx, token); !errors.Is(err, ErrExpired) {
		t.Fatalf("after leeway: %v, want expired", err)
	}
}

func TestCacheMaxTTL(t *testing.T) {
	clock := newClock()
	v := inlineVerifier(t, clock, func(c *Config) { c.Cache.MaxTTL = time.Minute })
	token := testkit.SignJWT(t, jose.ES256, ec256, "k1", saClaims(issuerB, clock.Now()))
	for range 2 {
		if _, err := v.VerifyToken(context.Background(), token); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(61 * time.Second)
	if _, err := v.VerifyToken(context.Background(), token); err != nil {
		t.Fatal(err)
	}
	if h, m := cacheCounts(v); h != 1 || m != 2 {
		t.Fatalf("hits %v misses %v, want 1 2", h, m)
	}
}

func TestCacheBounded(t *testing.T) {
	clock := newClock()
	v := inlineVerifier(t, clock, func(c *Config) { c.Cache.MaxEntries = 4 })
	var tokens []string
	for i := range 20 {
		tok := testkit.SignJWT(t, jose.ES256, ec256, "k1", with(saClaims(issuerB, clock.Now()), "jti", fmt.Sprint(i)))
		tokens = append(tokens, tok)
		if _, err := v.VerifyToken(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
		if n := v.cache.len(); n > 4 {
			t.Fatalf("cache holds %d entries, max 4", n)
		}
	}
	if n := v.cache.len(); n != 4 {
		t.Fatalf("cache holds %d entries, want 4", n)
	}
	// The last one inserted is present.
	if _, _, ok := v.cache.get(tokens[19], clock.Now()); !ok {
		t.Fatal("newest entry evicted")
	}
}

func TestCacheEvictsExpiredFirst(t *testing.T) {
	c := newTokenCache(3)
	now := time.Unix(1000, 0)
	c.put("a", &Identity{Namespace: "a"}, nil, now.Add(time.Minute), now)
	c.put("b", &Identity{Namespace: "b"}, nil, now.Add(time.Hour), now)
	c.put("c", &Identity{Namespace: "c"}, nil, now.Add(time.Hour), now)
	later := now.Add(2 * time.Minute) // "a" has expired
	c.put("d", &Identity{Namespace: "d"}, nil, later.Add(time.Hour), later)
	for _, k := range []string{"b", "c", "d"} {
		if _, _, ok := c.get(k, later); !ok {
			t.Fatalf("%s evicted instead of the expired entry", k)
		}
	}
	// An already-expired entry is never stored.
	c.put("e", &Identity{}, nil, later, later)
	if _, _, ok := c.get("e", later); ok {
		t.Fatal("expired entry stored")
	}
}

// A hash collision is a miss: the whole token is compared.
func TestCacheCollisionIsMiss(t *testing.T) {
	c := newTokenCache(10)
	now := time.Unix(1000, 0)
	c.put("token-a", &Identity{Namespace: "a"}, nil, now.Add(time.Hour), now)
	// Forge an entry stored under token-b's hash but holding token-a.
	c.mu.Lock()
	for h, e := range c.m {
		delete(c.m, h)
		c.m[hashOf("token-b")] = e
	}
	c.mu.Unlock()
	if id, _, ok := c.get("token-b", now); ok {
		t.Fatalf("collision returned %+v", id)
	}
}

func TestCacheDisabled(t *testing.T) {
	clock := newClock()
	v := inlineVerifier(t, clock, func(c *Config) { c.Cache.Disabled = true })
	token := testkit.SignJWT(t, jose.ES256, ec256, "k1", saClaims(issuerB, clock.Now()))
	for range 3 {
		if _, err := v.VerifyToken(context.Background(), token); err != nil {
			t.Fatal(err)
		}
	}
	if h, m := cacheCounts(v); h != 0 || m != 0 {
		t.Fatalf("disabled cache used: hits %v misses %v", h, m)
	}
}
