package authn

import (
	"context"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// benchVerify measures VerifyToken on one valid token; uncached, every
// iteration is a full parse + signature verification + claim checks.
func benchVerify(b *testing.B, cached bool, alg jose.SignatureAlgorithm) {
	testKeys(b)
	clock := newClock()
	cfg := Config{Issuers: []IssuerConfig{{Issuer: issuerB, Cluster: "c1",
		JWKS: testkit.JWKS(b, testkit.JWK{KeyID: "rsa", Key: rsaA}, testkit.JWK{KeyID: "ec", Key: ec256})}}}
	cfg.Cache.Disabled = !cached
	v, err := New(context.Background(), cfg, Options{Now: clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	var key any = ec256
	kid := "ec"
	if alg == jose.RS256 {
		key, kid = rsaA, "rsa"
	}
	token := testkit.SignJWT(b, alg, key, kid, saClaims(issuerB, clock.Now()))
	ctx := context.Background()
	if _, err := v.VerifyToken(ctx, token); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(token)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := v.VerifyToken(ctx, token); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifications/s")
}

func BenchmarkVerifyUncachedRS256(b *testing.B) { benchVerify(b, false, jose.RS256) }
func BenchmarkVerifyUncachedES256(b *testing.B) { benchVerify(b, false, jose.ES256) }
func BenchmarkVerifyCached(b *testing.B)        { benchVerify(b, true, jose.RS256) }
