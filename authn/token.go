package authn

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// allowedAlgs: asymmetric signatures only. HMAC is excluded so a public key
// can never be used as a shared secret (the classic RS256 -> HS256
// confusion), and "none" is not a jose.SignatureAlgorithm at all.
var allowedAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

// claims are the registered claims plus the Kubernetes ones
// (k8s.io/apiserver/pkg/authentication/serviceaccount privateClaims).
type claims struct {
	jwt.Claims
	K8s *k8sClaims `json:"kubernetes.io"`
}

type k8sClaims struct {
	Namespace      string  `json:"namespace"`
	ServiceAccount *objRef `json:"serviceaccount"`
	Pod            *objRef `json:"pod"`
	Node           *objRef `json:"node"`
}

type objRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// VerifyToken verifies a service-account JWT (without the "Bearer " prefix)
// and returns the identity it proves. Every refusal wraps one of the Err*
// sentinels. It blocks at most Config.VerifyTimeout (less if ctx says so)
// waiting for a key fetch or a TokenReview.
func (v *Verifier) VerifyToken(ctx context.Context, token string) (*Identity, error) {
	id, label, err := v.verifyToken(ctx, token)
	v.m.results.WithLabelValues(label, Reason(err)).Inc()
	return id, err
}

func (v *Verifier) verifyToken(ctx context.Context, token string) (*Identity, string, error) {
	const noIssuer = "none"
	if token == "" {
		return nil, noIssuer, refuse(ErrMalformed, "empty token")
	}
	if len(token) > v.cfg.MaxTokenBytes {
		return nil, noIssuer, ErrTooLarge
	}
	now := v.now()
	if v.cache != nil {
		if id, err, ok := v.cache.get(token, now); ok {
			v.m.cacheLookups.WithLabelValues("hit").Inc()
			label := id.issuerLabel()
			if err != nil {
				label = noIssuer
				var re *reviewError
				if errors.As(err, &re) {
					label = re.issuer
				}
			}
			return id, label, err
		}
		v.m.cacheLookups.WithLabelValues("miss").Inc()
	}
	tok, c, err := parseToken(token)
	if err != nil {
		return nil, noIssuer, err
	}
	// The issuer is read from the unverified payload and must be configured
	// before any key is looked up or fetched: an attacker must not be able
	// to make us fetch anything.
	is := v.issuers[c.Issuer]
	if is == nil {
		return nil, noIssuer, refuse(ErrUnknownIssuer, "iss "+quote(c.Issuer))
	}
	ctx, cancel := context.WithTimeout(ctx, v.cfg.VerifyTimeout)
	defer cancel()
	if err := v.checkSignature(ctx, is, tok); err != nil {
		return nil, is.cfg.Issuer, err
	}
	id, err := v.checkClaims(is, c, now)
	if err != nil {
		return nil, is.cfg.Issuer, err
	}
	expires := id.ExpiresAt
	if v.cfg.Cache.MaxTTL > 0 {
		expires = minTime(expires, now.Add(v.cfg.Cache.MaxTTL))
	}
	if is.review != nil {
		if err := is.review.check(ctx, token, c); err != nil {
			if errors.Is(err, ErrRevoked) && v.cache != nil {
				v.cache.put(token, nil, &reviewError{issuer: is.cfg.Issuer, err: err},
					minTime(expires, now.Add(is.review.ttl)), now)
			}
			return nil, is.cfg.Issuer, err
		}
		expires = minTime(expires, now.Add(is.review.ttl))
	}
	if v.cache != nil {
		cp := *id
		v.cache.put(token, &cp, nil, expires, now)
	}
	return id, is.cfg.Issuer, nil
}

func (id *Identity) issuerLabel() string {
	if id == nil {
		return "none"
	}
	return id.Issuer
}

// reviewError marks a cached TokenReview refusal with its issuer.
type reviewError struct {
	issuer string
	err    error
}

func (e *reviewError) Error() string { return e.err.Error() }
func (e *reviewError) Unwrap() error { return e.err }

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// parseToken checks the shape and the algorithm, then parses the JWS and
// decodes its claims without verifying them.
func parseToken(token string) (*jwt.JSONWebToken, *claims, error) {
	// Only the compact serialization: three base64url segments. This
	// refuses a JWE (five segments) and the JSON serializations (which can
	// carry several signatures) before any decoding.
	if strings.Count(token, ".") != 2 {
		return nil, nil, refuse(ErrMalformed, "not a compact JWS")
	}
	for i := 0; i < len(token); i++ {
		if b := token[i]; !(b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-' || b == '_' || b == '.') {
			return nil, nil, refuse(ErrMalformed, "character outside base64url")
		}
	}
	hdr, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(hdr)
	if err != nil {
		return nil, nil, refuse(ErrMalformed, "header is not base64url")
	}
	var h struct {
		Alg  string          `json:"alg"`
		Crit json.RawMessage `json:"crit"`
		B64  json.RawMessage `json:"b64"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, nil, refuse(ErrMalformed, "header is not a JSON object")
	}
	if !algAllowed(h.Alg) {
		return nil, nil, refuse(ErrAlgNotAllowed, "alg "+quote(h.Alg))
	}
	// Presence, whatever the value (even null or an empty list), is refused: a Kubernetes
	// service-account token never carries either, and a header a library might read
	// differently (RFC 7797's unencoded payload) is not worth the ambiguity.
	if h.Crit != nil {
		return nil, nil, refuse(ErrUnsupportedHeader, "crit header parameter (service-account tokens have none)")
	}
	if h.B64 != nil {
		return nil, nil, refuse(ErrUnsupportedHeader, "b64 header parameter (service-account tokens have none)")
	}
	tok, err := jwt.ParseSigned(token, allowedAlgs)
	if err != nil {
		return nil, nil, refuse(ErrMalformed, "not a JWS")
	}
	var c claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return nil, nil, refuse(ErrMalformed, "claims are not a JSON object of the expected types")
	}
	return tok, &c, nil
}

func algAllowed(alg string) bool {
	for _, a := range allowedAlgs {
		if string(a) == alg {
			return true
		}
	}
	return false
}

// checkSignature finds the key named by kid (refetching the issuer's keys
// once if it is unknown) and verifies the signature.
func (v *Verifier) checkSignature(ctx context.Context, is *issuer, tok *jwt.JSONWebToken) error {
	hdr := tok.Headers[0]
	keys, err := v.lookupKey(ctx, is, hdr.KeyID)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != hdr.Algorithm {
			continue // the key is pinned to another algorithm
		}
		// No destination: the claims were decoded from the same payload
		// bytes that this verifies (go-jose keeps one decoded payload per
		// JWS), so a successful verification vouches for them.
		if tok.Claims(k.Key) == nil {
			return nil
		}
	}
	return ErrBadSignature
}

func (v *Verifier) lookupKey(ctx context.Context, is *issuer, kid string) ([]jose.JSONWebKey, error) {
	set := is.keys.set.Load()
	if set != nil {
		keys, err := set.lookup(kid)
		if !errors.Is(err, ErrUnknownKID) {
			return keys, err
		}
	}
	// Unknown kid, or no set yet: the issuer may have rotated its keys.
	// Even when the refetch is rate-limited, look again: a fetch may have
	// completed since the first look.
	fetched := is.keys.refetch(ctx)
	now := is.keys.set.Load()
	if now == nil {
		return nil, ErrKeysUnavailable
	}
	if !fetched && now == set {
		return nil, refuse(ErrUnknownKID, "kid "+quote(kid)+" not in the key set (no refetch: static set or rate-limited)")
	}
	keys, err := now.lookup(kid)
	if errors.Is(err, ErrUnknownKID) {
		return nil, refuse(ErrUnknownKID, "kid "+quote(kid))
	}
	return keys, err
}
