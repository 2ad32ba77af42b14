package authn

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are always built (so the code has no nil checks) and registered
// only when Options.Registerer is set.
type metrics struct {
	results      *prometheus.CounterVec
	jwksFetches  *prometheus.CounterVec
	jwksKeys     *prometheus.GaugeVec
	issuerReady  *prometheus.GaugeVec
	cacheLookups *prometheus.CounterVec
	cacheEntries prometheus.GaugeFunc
	reviews      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, cacheLen func() float64) (*metrics, error) {
	m := &metrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_authn_results_total",
			Help: "Verifications by issuer (\"none\" when not known) and result (\"ok\" or the refusal reason).",
		}, []string{"issuer", "result"}),
		jwksFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_authn_jwks_fetches_total",
			Help: "Key set fetches by issuer and result (ok, error).",
		}, []string{"issuer", "result"}),
		jwksKeys: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ewgate_authn_jwks_keys",
			Help: "Keys in the issuer's current key set.",
		}, []string{"issuer"}),
		issuerReady: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ewgate_authn_issuer_ready",
			Help: "1 when a key set of the issuer is held.",
		}, []string{"issuer"}),
		cacheLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_authn_cache_lookups_total",
			Help: "Verified-token cache lookups by result (hit, miss).",
		}, []string{"result"}),
		cacheEntries: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ewgate_authn_cache_entries",
			Help: "Entries in the verified-token cache.",
		}, cacheLen),
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ewgate_authn_token_reviews_total",
			Help: "TokenReview requests by issuer and result (ok, revoked, error).",
		}, []string{"issuer", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.results, m.jwksFetches, m.jwksKeys,
		m.issuerReady, m.cacheLookups, m.cacheEntries, m.reviews} {
		errs = append(errs, reg.Register(c))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return m, nil
}
