// Package authn turns a VM's credential into a verified Identity: a
// Kubernetes service-account JWT (checked against the issuer's JSON Web Key
// Set, optionally also through the TokenReview API) or a SPIFFE client
// certificate (checked against the trust bundle of its trust domain).
//
// It knows nothing of routing, listeners or gRPC: the caller maps the
// Identity's cluster to a control plane, and turns the sentinel errors into a
// TLS alert or a gRPC code at its edge. It never logs a token or key
// material; refusals are returned (with Reason for metric labels), not
// logged.
//
// Usage:
//
//	var cfg authn.Config // decoded from the "authn:" section
//	v, err := authn.New(ctx, cfg, authn.Options{Logger: log, Registerer: reg})
//	if err != nil { ... }
//	defer v.Close()
//	id, err := v.VerifyToken(ctx, bearer)
//	if err != nil {
//		metrics.Refused(authn.Reason(err)) // "expired", "bad_signature", ...
//		return status.Error(codes.Unauthenticated, "unauthenticated")
//	}
//	upstream := controlPlanes[id.Cluster]
//
// Tokens: only the JWS compact serialization, at most MaxTokenBytes, signed
// with RS/PS/ES 256/384/512 or EdDSA; iss must name a configured issuer
// exactly (decided before any key lookup); exp is required; nbf and iat are
// honoured with a leeway; aud must hold an accepted audience; sub must be
// system:serviceaccount:<ns>:<sa> and agree with the kubernetes.io claim.
// Keys are refetched once on an unknown kid (at most every
// MinRefetchInterval per issuer, one fetch shared by all waiting callers),
// refreshed periodically, and the last good set is kept when a fetch fails.
// Verified tokens are cached, keyed by xxhash of the token, until their exp
// at the latest.
package authn
