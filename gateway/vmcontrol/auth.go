package vmcontrol

import (
	"context"
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/internal/logsample"
)

// Metadata keys the front reads or writes (gRPC lower-cases them).
const (
	mdAuthorization = "authorization"
	mdClusterID     = "clusterid" // pilot-agent's "ClusterID"
	mdXFCC          = "x-forwarded-client-cert"
	mdBuiltinCall   = "x-ewgate-builtin-call"
)

// Auth results besides authn's reasons.
const (
	resultOK = "ok"
	// resultCertAfterExpired: the token had expired (its signature and audience verified) and
	// the client certificate next to it verified; the call is the certificate's. An agent
	// renews with the certificate it was issued once its bootstrap token has expired.
	resultCertAfterExpired = "cert_after_expired_token"
	resultNone             = "none"
	resultRateLimited      = "rate_limited"
	resultBusy             = "busy" // max_authenticating_per_source
	resultClusterMismatch  = "cluster_mismatch"
	resultIdentityMismatch = "identity_mismatch"
	resultNoCluster        = "no_cluster"
	resultMultipleTokens   = "malformed"
)

// caller is an authenticated RPC: who, and which cluster's control plane it gets.
type caller struct {
	id      *authn.Identity
	cluster string
	source  netip.Addr
}

// authenticate checks the RPC's credential: the bearer token when there is one, else the
// verified client certificate. Every refusal is a gRPC status error and counts against the
// source address's failure budget.
// The result (a label of ewgate_control_auth_total) is returned with the error.
func (f *Front) authenticate(ctx context.Context) (*caller, string, error) {
	src := sourceAddr(ctx)
	if !f.failures.allowed(src) {
		f.m.auth.WithLabelValues(resultRateLimited).Inc()
		f.m.limits.WithLabelValues("auth_failures").Inc()
		return nil, resultRateLimited, status.Error(codes.ResourceExhausted, "ewgate: too many failed authentications from this address; retry later")
	}
	leave, ok := f.authenticating.enter(src)
	if !ok {
		f.m.auth.WithLabelValues(resultBusy).Inc()
		f.m.limits.WithLabelValues("max_authenticating_per_source").Inc()
		return nil, resultBusy, status.Error(codes.ResourceExhausted, "ewgate: too many calls from this address are being authenticated; retry later")
	}
	f.m.authenticating.Inc()
	c, result, err := f.verify(ctx, src)
	f.m.authenticating.Dec()
	leave()
	f.m.auth.WithLabelValues(result).Inc()
	if err != nil {
		f.failures.fail(src)
		return nil, result, err
	}
	return c, result, nil
}

func (f *Front) verify(ctx context.Context, src netip.Addr) (*caller, string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var tokenID, certID *authn.Identity
	var expired error // the token's ErrExpired, set aside for a certificate to stand in
	auths := md.Get(mdAuthorization)
	if len(auths) > 1 {
		return nil, resultMultipleTokens, status.Error(codes.Unauthenticated, "ewgate: authentication failed (more than one authorization header)")
	}
	if len(auths) == 1 {
		tok, ok := bearer(auths[0])
		if !ok {
			return nil, "malformed", status.Error(codes.Unauthenticated, "ewgate: authentication failed (authorization is not \"Bearer <token>\")")
		}
		id, err := f.opts.Verifier.VerifyToken(ctx, tok)
		switch {
		case err == nil:
			tokenID = id
		case errors.Is(err, authn.ErrExpired):
			// authn reports expiry only for a token whose signature verified with a
			// configured issuer's key (and whose audience it accepts): a token that was once
			// good. Any other failure (forged, unknown issuer, revoked, wrong audience) is a
			// sign of attack or misconfiguration and refuses the call, certificate or not.
			expired = err
		default:
			return nil, authn.Reason(err), authFailure(err)
		}
	}
	if chain := peerCerts(ctx); len(chain) > 0 {
		id, err := f.opts.Verifier.VerifyCert(chain)
		switch {
		case err == nil:
			certID = id
		case expired != nil:
			return nil, authn.Reason(expired), status.Errorf(codes.Unauthenticated,
				"ewgate: authentication failed (expired): the client certificate next to the expired token failed too (%s)", authn.Reason(err))
		case tokenID == nil:
			return nil, authn.Reason(err), authFailure(err)
		}
		// A certificate that fails next to a good token is ignored: an agent whose certificate
		// expired renews it with its token.
	}
	result := resultOK
	id := tokenID
	switch {
	case expired != nil && certID == nil:
		return nil, authn.Reason(expired), status.Error(codes.Unauthenticated,
			"ewgate: authentication failed (expired): no client certificate came with the expired token (an agent renews with the certificate it was issued, PROV_CERT, once its token expires)")
	case id == nil && certID == nil:
		return nil, resultNone, status.Error(codes.Unauthenticated, "ewgate: authentication required: send \"authorization: Bearer <istio-token>\" or a mesh client certificate")
	case id == nil:
		id = certID
		if expired != nil {
			result = resultCertAfterExpired
		}
	case certID != nil && (certID.Namespace != id.Namespace || certID.ServiceAccount != id.ServiceAccount):
		return nil, resultIdentityMismatch, status.Errorf(codes.PermissionDenied,
			"ewgate: the token (%s) and the client certificate (%s) name different service accounts", id.SPIFFEID, certID.SPIFFEID)
	}
	cluster := id.Cluster
	if want := md.Get(mdClusterID); len(want) > 0 && want[0] != "" {
		if cluster == "" {
			cluster = want[0] // a certificate of a mesh root shared by clusters: the VM says which
		} else if want[0] != cluster {
			return nil, resultClusterMismatch, status.Errorf(codes.PermissionDenied,
				"ewgate: ClusterID %q does not match the cluster %q that vouched for %s: fix ISTIO_META_CLUSTER_ID / the ClusterID header",
				short(want[0]), cluster, id.SPIFFEID)
		}
	}
	if cluster == "" {
		if len(f.upstreams) != 1 {
			return nil, resultNoCluster, status.Error(codes.PermissionDenied, "ewgate: the identity names no cluster: send ClusterID metadata")
		}
		for c := range f.upstreams {
			cluster = c
		}
	}
	if result == resultCertAfterExpired {
		f.expiredTokens.note(f, id.SPIFFEID, src)
	}
	return &caller{id: id, cluster: cluster, source: src}, result, nil
}

// maxExpiredTokenVMs bounds the VMs whose expired token has been logged; past it the set
// starts again (each VM is then logged once more).
const maxExpiredTokenVMs = 4096

// expiredTokenLog writes one line per VM identity the first time a call of it is
// authenticated by its certificate next to an expired token: expected after the agent's
// bootstrap token ran out, and worth one line, not one per renewal or stream.
type expiredTokenLog struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

func (l *expiredTokenLog) note(f *Front, spiffeID string, src netip.Addr) {
	l.mu.Lock()
	_, dup := l.seen[spiffeID]
	if !dup {
		if l.seen == nil || len(l.seen) >= maxExpiredTokenVMs {
			l.seen = map[string]struct{}{}
		}
		l.seen[spiffeID] = struct{}{}
	}
	l.mu.Unlock()
	if dup {
		return
	}
	// Sampled as well: a flood of distinct certificates must not flood the log.
	f.logEvent(resultCertAfterExpired, "VM authenticated by its client certificate; its token has expired (expected once the bootstrap token runs out; the agent renews with its certificate)",
		zap.String("identity", spiffeID), zap.String("source", src.String()))
}

// authFailure is what the VM is told: the reason (never the token), so its operator knows
// what to fix.
func authFailure(err error) error {
	return status.Errorf(codes.Unauthenticated, "ewgate: authentication failed (%s)", authn.Reason(err))
}

func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func peerCerts(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
		return ti.State.PeerCertificates
	}
	return nil
}

func sourceAddr(ctx context.Context) netip.Addr {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// short cuts a client-chosen name (a ClusterID, a group, a method) for a message or a log line.
func short(s string) string { return logsample.Cap(s, 64) }

// capMsg cuts a message that may quote client-chosen text.
func capMsg(s string) string { return logsample.Cap(s, 512) }

// failureLimiter is a token bucket per source address, drawn from by failures only.
type failureLimiter struct {
	rate    float64 // tokens per second; <= 0: unlimited
	burst   float64
	max     int
	now     func() time.Time
	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newFailureLimiter(c AuthFailureConfig, now func() time.Time) *failureLimiter {
	return &failureLimiter{rate: c.Rate, burst: float64(c.Burst), max: c.MaxSources, now: now, buckets: map[netip.Addr]*bucket{}}
}

func (l *failureLimiter) refill(b *bucket, now time.Time) {
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
}

// allowed reports whether src may try to authenticate now.
func (l *failureLimiter) allowed(src netip.Addr) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[src]
	if b == nil {
		return true
	}
	l.refill(b, l.now())
	return b.tokens >= 1
}

// fail draws one token of src's bucket.
func (l *failureLimiter) fail(src netip.Addr) {
	if l.rate <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.buckets[src]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[src] = b
	}
	l.refill(b, now)
	b.tokens = max(0, b.tokens-1)
}

// evict drops the buckets that have refilled (they carry no state); if none has, an arbitrary
// one, so the map stays bounded under a flood from many addresses.
func (l *failureLimiter) evict(now time.Time) {
	for a, b := range l.buckets {
		l.refill(b, now)
		if b.tokens >= l.burst {
			delete(l.buckets, a)
		}
	}
	for a := range l.buckets {
		if len(l.buckets) < l.max {
			break
		}
		delete(l.buckets, a)
	}
}
