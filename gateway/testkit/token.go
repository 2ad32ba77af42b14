package testkit

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// The kubernetes.io claims ServiceAccountClaims puts in every token, for tests to compare with.
const (
	ServiceAccountUID = "5b1c2f0e-7f43-4a55-9d8e-3f1a6c2b9e10"
	PodName           = "vm-pod"
	PodUID            = "pod-uid"
	NodeName          = "node-1"
	NodeUID           = "node-uid"
)

// JWK is one public key of a key set: the signer's public half under KeyID, optionally pinned to
// an algorithm.
type JWK struct {
	KeyID string
	Key   crypto.Signer
	Alg   string
}

// JWKS returns the JSON key set (RFC 7517) of keys' public halves, as an issuer serves it.
func JWKS(t testing.TB, keys ...JWK) string {
	t.Helper()
	set := jose.JSONWebKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Key.Public(), KeyID: k.KeyID, Use: "sig", Algorithm: k.Alg})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatalf("testkit: marshal JWKS: %v", err)
	}
	return string(b)
}

// SignJWT signs claims (anything JSON) as a compact JWS of type JWT with go-jose, the kid header
// set unless kid is empty.
func SignJWT(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatalf("testkit: signer %s: %v", alg, err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatalf("testkit: marshal claims: %v", err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		t.Fatalf("testkit: sign: %v", err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		t.Fatalf("testkit: serialize: %v", err)
	}
	return out
}

var jti atomic.Int64

// ServiceAccountClaims are the claims of a bound service-account token for ns/sa as a
// kube-apiserver's TokenRequest makes them: audience istio-ca, issued at now, valid for an hour,
// a unique jti, and the kubernetes.io claims (service account, pod and node; see the constants).
func ServiceAccountClaims(iss, ns, sa string, now time.Time) map[string]any {
	return map[string]any{
		"iss": iss,
		"aud": []string{"istio-ca"},
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"exp": now.Add(time.Hour).Unix(),
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"jti": fmt.Sprintf("jti-%d", jti.Add(1)),
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"serviceaccount": map[string]any{"name": sa, "uid": ServiceAccountUID},
			"pod":            map[string]any{"name": PodName, "uid": PodUID},
			"node":           map[string]any{"name": NodeName, "uid": NodeUID},
		},
	}
}

// Issuer is a token issuer: a URL (the iss claim) and an RSA key published under KeyID.
type Issuer struct {
	URL   string
	KeyID string
	Key   *rsa.PrivateKey
}

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
	rsaErr  error
)

// NewIssuer returns an issuer for url with key ID "k1". All issuers of a test binary share one
// RSA 2048 key (generating one takes a while); set Key for a key of its own.
func NewIssuer(t testing.TB, url string) *Issuer {
	t.Helper()
	rsaOnce.Do(func() { rsaKey, rsaErr = rsa.GenerateKey(rand.Reader, 2048) })
	if rsaErr != nil {
		t.Fatalf("testkit: generate an RSA key: %v", rsaErr)
	}
	return &Issuer{URL: url, KeyID: "k1", Key: rsaKey}
}

// JWKS returns the issuer's key set, its key pinned to RS256.
func (i *Issuer) JWKS(t testing.TB) string {
	t.Helper()
	return JWKS(t, JWK{KeyID: i.KeyID, Key: i.Key, Alg: "RS256"})
}

// TokenOption edits a token's claims before it is signed.
type TokenOption func(claims map[string]any)

// Claim sets a claim; a nil value deletes it.
func Claim(name string, value any) TokenOption {
	return func(c map[string]any) {
		if value == nil {
			delete(c, name)
			return
		}
		c[name] = value
	}
}

// Token mints an RS256 service-account token for ns/sa, issued now (real time): the claims of
// ServiceAccountClaims with the issuer's URL, edited by opts.
func (i *Issuer) Token(t testing.TB, ns, sa string, opts ...TokenOption) string {
	t.Helper()
	c := ServiceAccountClaims(i.URL, ns, sa, time.Now())
	for _, o := range opts {
		o(c)
	}
	return SignJWT(t, jose.RS256, i.Key, i.KeyID, c)
}
