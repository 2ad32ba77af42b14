package authn

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Identity is a verified workload identity.
type Identity struct {
	Cluster           string // the issuer's (or trust bundle's) cluster
	Namespace         string
	ServiceAccount    string
	ServiceAccountUID string // from the token; empty for certificates
	Pod               string // bound pod, when the token is bound to one
	Node              string // node of the bound pod, when present
	TrustDomain       string
	SPIFFEID          string    // spiffe://<trust domain>/ns/<ns>/sa/<sa>
	Issuer            string    // the token's iss; empty for certificates
	ExpiresAt         time.Time // token exp or certificate NotAfter
	Source            string    // SourceJWT or SourceCert
}

// Identity sources.
const (
	SourceJWT  = "jwt"
	SourceCert = "cert"
)

func (id *Identity) String() string { return id.SPIFFEID + " (cluster " + id.Cluster + ")" }

// Options are the collaborators of a Verifier. The zero value works.
type Options struct {
	// Logger for key-set fetches and other background events; refusals are
	// returned, not logged. If nil, nothing is logged.
	Logger *zap.Logger
	// Registerer for the ewgate_authn_* metrics. If nil, none are registered.
	Registerer prometheus.Registerer
	// Now is the clock for token and certificate validity, cache expiry and
	// the refetch rate limit. If nil, time.Now is used.
	Now func() time.Time
}

// Verifier turns credentials into Identities. It is safe for concurrent use.
type Verifier struct {
	cfg     Config
	now     func() time.Time
	log     *zap.Logger
	m       *metrics
	issuers map[string]*issuer
	order   []*issuer
	bundles map[string]*bundle
	cache   *tokenCache // nil when disabled

	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

type issuer struct {
	cfg    IssuerConfig
	keys   *keySource
	review *reviewer // nil unless TokenReview is configured
}

type bundle struct {
	pool    *x509.CertPool
	cluster string
}

// New builds a Verifier from a config (defaults are applied to a copy, then
// it is validated). Remote key sets are fetched in the background: New does
// not fail because an issuer is unreachable; Ready and Status report it.
// Background work stops when ctx ends or Close is called; Close waits for it.
func New(ctx context.Context, cfg Config, opts Options) (*Verifier, error) {
	cfg = cfg.clone()
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("authn: invalid config: %w", err)
	}
	v := &Verifier{cfg: cfg, now: opts.Now, log: opts.Logger,
		issuers: map[string]*issuer{}}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = zap.NewNop()
	}
	if !cfg.Cache.Disabled {
		v.cache = newTokenCache(cfg.Cache.MaxEntries)
	}
	m, err := newMetrics(opts.Registerer, func() float64 {
		if v.cache == nil {
			return 0
		}
		return float64(v.cache.len())
	})
	if err != nil {
		return nil, fmt.Errorf("authn: metrics: %w", err)
	}
	v.m = m
	for i := range v.cfg.Issuers {
		ic := &v.cfg.Issuers[i]
		ks, err := newKeySource(v, ic)
		if err != nil {
			return nil, fmt.Errorf("authn: issuers[%d] %s: %w", i, ic.Issuer, err)
		}
		is := &issuer{cfg: *ic, keys: ks}
		if ic.TokenReview != nil {
			if is.review, err = newReviewer(v, ic); err != nil {
				return nil, fmt.Errorf("authn: issuers[%d].token_review: %w", i, err)
			}
		}
		v.issuers[ic.Issuer] = is
		v.order = append(v.order, is)
		v.m.issuerReady.WithLabelValues(ic.Issuer).Set(0)
		if ks.set.Load() != nil {
			v.m.issuerReady.WithLabelValues(ic.Issuer).Set(1)
		}
	}
	if v.bundles, err = loadBundles(cfg.ClientCerts.TrustBundles); err != nil {
		return nil, err
	}
	v.ctx, v.cancel = context.WithCancel(ctx)
	for _, is := range v.order {
		if !is.keys.static {
			v.goTracked(is.keys.loop)
		}
	}
	return v, nil
}

// clone copies the slices a Verifier keeps, so the caller's later edits do
// not reach it.
func (c Config) clone() Config {
	c.Issuers = append([]IssuerConfig(nil), c.Issuers...)
	for i := range c.Issuers {
		c.Issuers[i].Audiences = append([]string(nil), c.Issuers[i].Audiences...)
		if tr := c.Issuers[i].TokenReview; tr != nil {
			cp := *tr
			c.Issuers[i].TokenReview = &cp
		}
	}
	c.ClientCerts.TrustBundles = append([]TrustBundleConfig(nil), c.ClientCerts.TrustBundles...)
	return c
}

// goTracked runs f on a goroutine the Verifier waits for in Close. It
// reports false (and does not run f) once the Verifier is closed.
func (v *Verifier) goTracked(f func(ctx context.Context)) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return false
	}
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		f(v.ctx)
	}()
	return true
}

// Close stops background fetches and waits for them. Verifications after
// Close still work with the keys held, but no longer fetch.
func (v *Verifier) Close() {
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	v.cancel()
	v.wg.Wait()
	for _, is := range v.order {
		if is.keys.client != nil {
			is.keys.client.CloseIdleConnections()
		}
		if is.review != nil {
			is.review.client.CloseIdleConnections()
		}
	}
}

// Ready returns nil when every issuer has a key set, or an error naming the
// issuers that do not yet (with their last fetch error).
func (v *Verifier) Ready() error {
	var errs []error
	for _, is := range v.order {
		st := is.keys.status()
		if st.Ready {
			continue
		}
		msg := errNotReady.Error()
		if st.LastError != "" {
			msg += ": " + st.LastError
		}
		errs = append(errs, fmt.Errorf("authn: issuer %s: %s", st.Issuer, msg))
	}
	return errors.Join(errs...)
}

// WaitReady waits until every issuer has a key set or ctx ends; then it
// returns Ready().
func (v *Verifier) WaitReady(ctx context.Context) error {
	for _, is := range v.order {
		select {
		case <-is.keys.ready:
		case <-ctx.Done():
			return v.Ready()
		}
	}
	return nil
}

// Status reports the key state of each issuer, in config order.
func (v *Verifier) Status() []IssuerStatus {
	out := make([]IssuerStatus, len(v.order))
	for i, is := range v.order {
		out[i] = is.keys.status()
	}
	return out
}
