package authn

import (
	"errors"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
)

const saPrefix = "system:serviceaccount:"

// checkClaims validates the time and audience claims of a token whose
// signature verified, and builds the identity from its Kubernetes claims.
func (v *Verifier) checkClaims(is *issuer, c *claims, now time.Time) (*Identity, error) {
	// go-jose skips a missing exp; a token without one would be valid for
	// ever, so it is refused here.
	if c.Expiry == nil {
		return nil, ErrNoExpiry
	}
	err := c.Claims.ValidateWithLeeway(jwt.Expected{AnyAudience: is.cfg.Audiences, Time: now}, v.cfg.Leeway)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrExpired):
		return nil, ErrExpired
	case errors.Is(err, jwt.ErrNotValidYet):
		return nil, refuse(ErrNotYetValid, "nbf in the future")
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return nil, refuse(ErrNotYetValid, "iat in the future")
	case errors.Is(err, jwt.ErrInvalidAudience):
		return nil, ErrBadAudience
	default:
		return nil, refuse(ErrMalformed, err.Error())
	}
	ns, sa, err := parseSubject(c.Subject)
	if err != nil {
		return nil, err
	}
	k := c.K8s
	if k == nil || k.ServiceAccount == nil {
		return nil, refuse(ErrBadSubject, "no kubernetes.io service account claim")
	}
	if k.Namespace != ns || k.ServiceAccount.Name != sa {
		return nil, refuse(ErrBadSubject, "sub and kubernetes.io claim disagree")
	}
	id := &Identity{
		Cluster:           is.cfg.Cluster,
		Namespace:         ns,
		ServiceAccount:    sa,
		ServiceAccountUID: k.ServiceAccount.UID,
		TrustDomain:       is.cfg.TrustDomain,
		SPIFFEID:          spiffeID(is.cfg.TrustDomain, ns, sa),
		Issuer:            is.cfg.Issuer,
		ExpiresAt:         c.Expiry.Time(),
		Source:            SourceJWT,
	}
	if k.Pod != nil {
		id.Pod = k.Pod.Name
	}
	if k.Node != nil {
		id.Node = k.Node.Name
	}
	return id, nil
}

// parseSubject splits system:serviceaccount:<ns>:<sa>.
func parseSubject(sub string) (ns, sa string, err error) {
	rest, ok := strings.CutPrefix(sub, saPrefix)
	if !ok {
		return "", "", refuse(ErrBadSubject, "sub "+quote(sub)+" is not system:serviceaccount:<namespace>:<name>")
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || !dnsLabel(ns) || !dnsSubdomain(sa) {
		return "", "", refuse(ErrBadSubject, "sub "+quote(sub)+" is not system:serviceaccount:<namespace>:<name>")
	}
	return ns, sa, nil
}

func spiffeID(td, ns, sa string) string {
	return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa
}

// parseSPIFFEID splits spiffe://<td>/ns/<ns>/sa/<sa>, the form Istio issues.
func parseSPIFFEID(s string) (td, ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return "", "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[1] != "ns" || parts[3] != "sa" ||
		!validTrustDomain(parts[0]) || !dnsLabel(parts[2]) || !dnsSubdomain(parts[4]) {
		return "", "", "", false
	}
	return parts[0], parts[2], parts[4], true
}

// dnsLabel: a Kubernetes namespace name (RFC 1123 label).
func dnsLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// dnsSubdomain: a Kubernetes service-account name (RFC 1123 subdomain).
func dnsSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !dnsLabel(l) {
			return false
		}
	}
	return true
}
