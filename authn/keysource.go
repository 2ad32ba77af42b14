package authn

import (
	"context"
	"errors"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// keySource holds the current key set of one issuer and fetches new ones.
//
// Fetches are shared: at most one is in flight per issuer, and everyone who
// wants fresh keys (the refresh loop, verifications that met an unknown kid)
// waits for that one. It runs on a goroutine owned by the Verifier, under the
// Verifier's lifetime and the issuer's fetch timeout, so a caller that gives
// up does not cancel it for the others.
type keySource struct {
	v      *Verifier
	cfg    *IssuerConfig
	static bool // inline JWKS: never fetched
	client *http.Client
	log    *zap.Logger

	set   atomic.Pointer[keySet]
	ready chan struct{} // closed once a set is held
	once  sync.Once

	mu           sync.Mutex
	flight       *flight
	lastOnDemand time.Time // v.now() of the last kid-triggered refetch
	lastAttempt  time.Time
	lastErr      error
	fetches      int
}

type flight struct {
	done chan struct{}
	err  error
}

func newKeySource(v *Verifier, cfg *IssuerConfig) (*keySource, error) {
	ks := &keySource{v: v, cfg: cfg, ready: make(chan struct{}),
		log: v.log.With(zap.String("issuer", cfg.Issuer))}
	switch {
	case cfg.JWKS != "":
		set, _, err := parseJWKS([]byte(cfg.JWKS))
		if err != nil {
			return nil, err
		}
		ks.static = true
		ks.store(set)
	case cfg.JWKSFile != "":
		// Read at once: a missing file is a config error, not an outage.
		set, err := ks.load(context.Background())
		if err != nil {
			return nil, err
		}
		ks.store(set)
	default:
		c, err := httpClient(cfg.CAFile)
		if err != nil {
			return nil, err
		}
		ks.client = c
	}
	return ks, nil
}

func (ks *keySource) store(set *keySet) {
	ks.set.Store(set)
	ks.once.Do(func() { close(ks.ready) })
	ks.v.m.jwksKeys.WithLabelValues(ks.cfg.Issuer).Set(float64(len(set.keys)))
	ks.v.m.issuerReady.WithLabelValues(ks.cfg.Issuer).Set(1)
}

// load reads the key set from its source once.
func (ks *keySource) load(ctx context.Context) (*keySet, error) {
	var data []byte
	switch {
	case ks.cfg.JWKSFile != "":
		b, err := os.ReadFile(ks.cfg.JWKSFile)
		if err != nil {
			return nil, err
		}
		data = b
	case ks.cfg.JWKSURL != "":
		if err := get(ctx, ks.client, ks.cfg.JWKSURL, ks.cfg.BearerTokenFile, &data); err != nil {
			return nil, err
		}
	default:
		base := ks.cfg.DiscoveryURL
		if base == "" {
			base = ks.cfg.Issuer
		}
		uri, err := discoverJWKSURI(ctx, ks.client, base, ks.cfg.Issuer, ks.cfg.BearerTokenFile)
		if err != nil {
			return nil, err
		}
		if err := get(ctx, ks.client, uri, ks.cfg.BearerTokenFile, &data); err != nil {
			return nil, err
		}
	}
	set, skipped, err := parseJWKS(data)
	if err != nil {
		return nil, err
	}
	if skipped > 0 {
		ks.log.Warn("authn: skipped unusable keys in key set", zap.Int("skipped", skipped))
	}
	set.fetched = ks.v.now()
	return set, nil
}

// start returns the fetch in flight, starting one if none is. It returns nil
// when the Verifier is closed.
func (ks *keySource) start() *flight {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.flight != nil {
		return ks.flight
	}
	f := &flight{done: make(chan struct{})}
	if !ks.v.goTracked(func(ctx context.Context) { ks.run(ctx, f) }) {
		return nil
	}
	ks.flight = f
	ks.lastAttempt = ks.v.now()
	return f
}

func (ks *keySource) run(ctx context.Context, f *flight) {
	ctx, cancel := context.WithTimeout(ctx, ks.cfg.FetchTimeout)
	defer cancel()
	set, err := ks.load(ctx)
	ks.mu.Lock()
	ks.fetches++
	ks.lastErr = err
	ks.flight = nil
	ks.mu.Unlock()
	if err != nil {
		ks.v.m.jwksFetches.WithLabelValues(ks.cfg.Issuer, "error").Inc()
		// Keep the last good set: an outage of the issuer must not lock
		// out VMs whose keys have not changed.
		ks.log.Warn("authn: key set fetch failed; keeping the last good set", zap.Error(err))
	} else {
		ks.v.m.jwksFetches.WithLabelValues(ks.cfg.Issuer, "ok").Inc()
		if old := ks.set.Load(); old == nil || old.kids() != set.kids() {
			ks.log.Info("authn: key set loaded", zap.Int("keys", len(set.keys)), zap.String("kids", set.kids()))
		}
		ks.store(set)
	}
	f.err = err
	close(f.done)
}

// refetch is called when a token names a kid we do not hold (or no set is
// held yet). It joins a fetch in flight, or starts one unless one was
// started on demand less than MinRefetchInterval ago, and waits for it
// until ctx ends. It reports whether a fetch was waited for.
func (ks *keySource) refetch(ctx context.Context) bool {
	if ks.static {
		return false
	}
	ks.mu.Lock()
	f := ks.flight
	if f == nil {
		now := ks.v.now()
		if !ks.lastOnDemand.IsZero() && now.Sub(ks.lastOnDemand) < ks.v.cfg.MinRefetchInterval {
			ks.mu.Unlock()
			return false
		}
		ks.lastOnDemand = now
	}
	ks.mu.Unlock()
	if f == nil {
		if f = ks.start(); f == nil {
			return false
		}
	}
	select {
	case <-f.done:
	case <-ctx.Done():
	}
	return true
}

// loop refreshes the key set every RefreshInterval, and after a failure
// retries sooner (1s, doubling, up to RefreshInterval).
func (ks *keySource) loop(ctx context.Context) {
	const firstRetry = time.Second
	retry := min(firstRetry, ks.cfg.RefreshInterval)
	for {
		f := ks.start()
		if f == nil {
			return
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return
		}
		wait := ks.cfg.RefreshInterval
		if f.err != nil {
			wait = retry
			retry = min(2*retry, ks.cfg.RefreshInterval)
		} else {
			retry = min(firstRetry, ks.cfg.RefreshInterval)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// IssuerStatus is the state of one issuer's keys, for readiness and debug
// pages. It holds no key material.
type IssuerStatus struct {
	Issuer      string
	Cluster     string
	Ready       bool      // a key set is held
	Keys        int       // keys in the set
	KeyIDs      string    // comma-separated kids
	FetchedAt   time.Time // when the held set was loaded (zero for inline)
	LastAttempt time.Time // last fetch attempt (zero for inline)
	LastError   string    // error of the last fetch attempt, if it failed
	Fetches     int       // completed fetch attempts
}

func (ks *keySource) status() IssuerStatus {
	st := IssuerStatus{Issuer: ks.cfg.Issuer, Cluster: ks.cfg.Cluster}
	if set := ks.set.Load(); set != nil {
		st.Ready, st.Keys, st.KeyIDs, st.FetchedAt = true, len(set.keys), set.kids(), set.fetched
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	st.LastAttempt, st.Fetches = ks.lastAttempt, ks.fetches
	if ks.lastErr != nil {
		st.LastError = ks.lastErr.Error()
	}
	return st
}

var errNotReady = errors.New("no key set yet")
