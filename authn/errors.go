package authn

import (
	"errors"
	"strconv"
)

// refusal is the type of every sentinel error of this package. Its reason is
// the short, stable, lower-case string used as a metric label.
type refusal struct {
	reason string
	msg    string
}

func (r *refusal) Error() string { return "authn: " + r.msg }

func newRefusal(reason, msg string) *refusal { return &refusal{reason: reason, msg: msg} }

// Sentinel errors. Every error returned by VerifyToken and VerifyCert wraps
// exactly one of them, so callers decide with errors.Is and label metrics
// with Reason. None of them, nor the detail wrapped around them, ever
// contains the token or key material.
var (
	// ErrMalformed: not a JWS in compact serialization (garbage, a JWE, the
	// JSON serialization, bad base64 or JSON, claims of the wrong type).
	ErrMalformed = newRefusal("malformed", "malformed token")
	// ErrTooLarge: the token is longer than Config.MaxTokenBytes; refused
	// before any parsing.
	ErrTooLarge = newRefusal("too_large", "token too large")
	// ErrAlgNotAllowed: alg is not one of RS256/384/512, PS256/384/512,
	// ES256/384/512, EdDSA (so never "none", never HMAC).
	ErrAlgNotAllowed = newRefusal("alg_not_allowed", "signature algorithm not allowed")
	// ErrUnknownIssuer: iss is missing or not exactly a configured issuer.
	// Decided from the unverified payload, before any key lookup.
	ErrUnknownIssuer = newRefusal("unknown_issuer", "unknown issuer")
	// ErrMissingKID: the token has no kid and the issuer has several keys.
	ErrMissingKID = newRefusal("missing_kid", "token has no kid and the issuer has several keys")
	// ErrUnknownKID: no key of the issuer has the token's kid, even after a
	// refetch of the issuer's key set (or the refetch was rate-limited).
	ErrUnknownKID = newRefusal("unknown_kid", "unknown key id")
	// ErrKeysUnavailable: the issuer's keys have never been obtained and could
	// not be fetched within Config.VerifyTimeout.
	ErrKeysUnavailable = newRefusal("keys_unavailable", "issuer keys unavailable")
	// ErrUnsupportedHeader: the JWS header carries crit or b64 (RFC 7515
	// 4.1.11, RFC 7797). No Kubernetes issuer emits them and verifiers
	// disagree on what they mean, so they are refused before any key lookup.
	ErrUnsupportedHeader = newRefusal("unsupported_header", "unsupported JWS header parameter")
	// ErrBadSignature: the signature does not verify with the issuer's key.
	ErrBadSignature = newRefusal("bad_signature", "bad signature")
	// ErrNoExpiry: the token has no exp claim.
	ErrNoExpiry = newRefusal("no_expiry", "token has no expiry")
	// ErrExpired: exp (or a certificate's NotAfter) is in the past.
	ErrExpired = newRefusal("expired", "expired")
	// ErrNotYetValid: nbf or iat (or a certificate's NotBefore) is in the future.
	ErrNotYetValid = newRefusal("not_yet_valid", "not yet valid")
	// ErrBadAudience: aud holds none of the issuer's accepted audiences.
	ErrBadAudience = newRefusal("bad_audience", "audience not accepted")
	// ErrBadSubject: sub is not system:serviceaccount:<ns>:<sa>, the
	// kubernetes.io claim is missing or disagrees with it, or a certificate
	// does not carry exactly one well-formed SPIFFE URI SAN.
	ErrBadSubject = newRefusal("bad_subject", "subject is not a Kubernetes service account")
	// ErrRevoked: the Kubernetes TokenReview API says the token is not
	// (or no longer) authenticated: a deleted pod or service account.
	ErrRevoked = newRefusal("revoked", "token revoked")
	// ErrReviewUnavailable: the TokenReview API could not be asked in time.
	ErrReviewUnavailable = newRefusal("review_unavailable", "token review unavailable")
	// ErrUntrustedCert: the client certificate chain does not verify against
	// the trust bundle of its trust domain, or no certificate was presented.
	ErrUntrustedCert = newRefusal("untrusted_cert", "untrusted certificate")
	// ErrBadTrustDomain: the SPIFFE ID's trust domain has no configured
	// trust bundle.
	ErrBadTrustDomain = newRefusal("bad_trust_domain", "trust domain not accepted")
	// ErrClosed: the Verifier was closed.
	ErrClosed = newRefusal("closed", "verifier closed")
)

// Reasons lists every reason Reason can return besides "ok" and "error", for
// pre-populating dashboards.
func Reasons() []string {
	all := []*refusal{ErrMalformed, ErrTooLarge, ErrAlgNotAllowed, ErrUnsupportedHeader, ErrUnknownIssuer,
		ErrMissingKID, ErrUnknownKID, ErrKeysUnavailable, ErrBadSignature, ErrNoExpiry,
		ErrExpired, ErrNotYetValid, ErrBadAudience, ErrBadSubject, ErrRevoked,
		ErrReviewUnavailable, ErrUntrustedCert, ErrBadTrustDomain, ErrClosed}
	out := make([]string, len(all))
	for i, r := range all {
		out[i] = r.reason
	}
	return out
}

// Reason maps an error of this package to a short label for metrics and
// logs: "ok" for nil, the sentinel's reason (e.g. "expired") when err wraps
// one, "error" otherwise.
func Reason(err error) string {
	if err == nil {
		return "ok"
	}
	var r *refusal
	if errors.As(err, &r) {
		return r.reason
	}
	return "error"
}

// detail wraps a sentinel with a short explanation.
type detailError struct {
	sentinel *refusal
	detail   string
}

func (e *detailError) Error() string { return e.sentinel.Error() + ": " + e.detail }
func (e *detailError) Unwrap() error { return e.sentinel }

func refuse(sentinel *refusal, detail string) error {
	return &detailError{sentinel: sentinel, detail: detail}
}

// quote shortens an attacker-controlled string (a claim value) before it goes
// into an error message, so errors stay small and printable.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return strconv.Quote(s)
}
