package authn

import (
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// Defaults applied by SetDefaults.
const (
	DefaultAudience           = "istio-ca"
	DefaultTrustDomain        = "cluster.local"
	DefaultLeeway             = 60 * time.Second
	DefaultMaxTokenBytes      = 16 << 10
	DefaultVerifyTimeout      = 5 * time.Second
	DefaultMinRefetchInterval = 30 * time.Second
	DefaultRefreshInterval    = 5 * time.Minute
	DefaultFetchTimeout       = 10 * time.Second
	DefaultCacheMaxEntries    = 10000
	DefaultCacheMaxTTL        = 5 * time.Minute
	DefaultReviewCacheTTL     = 10 * time.Second
	DefaultReviewTimeout      = 5 * time.Second
)

// Config says whom ewgate trusts to vouch for a VM. It is meant to be
// embedded in the gateway's configuration file under the key "authn:" and
// decoded with go.yaml.in/yaml/v3 (KnownFields); durations are strings such
// as "60s". The zero value is valid and trusts nobody. Call SetDefaults, then
// Validate, then New.
type Config struct {
	// Issuers whose service-account tokens are accepted.
	Issuers []IssuerConfig `yaml:"issuers"`
	// ClientCerts: trust bundles for SPIFFE client certificates.
	ClientCerts ClientCertConfig `yaml:"client_certs"`
	// Leeway for exp, nbf and iat. Zero means DefaultLeeway (60s); at most 5m.
	Leeway time.Duration `yaml:"leeway"`
	// MaxTokenBytes: longer tokens are refused before parsing. Zero means 16 KiB.
	MaxTokenBytes int `yaml:"max_token_bytes"`
	// VerifyTimeout bounds how long one verification may wait for a key
	// fetch or a TokenReview. Zero means 5s.
	VerifyTimeout time.Duration `yaml:"verify_timeout"`
	// MinRefetchInterval: a token with an unknown kid refetches its issuer's
	// keys at most this often per issuer. Zero means 30s.
	MinRefetchInterval time.Duration `yaml:"min_refetch_interval"`
	// Cache of verified tokens.
	Cache CacheConfig `yaml:"cache"`
}

// IssuerConfig is one trusted token issuer, typically a cluster's
// kube-apiserver (its --service-account-issuer).
type IssuerConfig struct {
	// Issuer must equal the token's iss claim exactly. Required.
	Issuer string `yaml:"issuer"`
	// Audiences: the token's aud must contain one of these. Empty means
	// [istio-ca].
	Audiences []string `yaml:"audiences"`
	// Cluster the issuer's workloads belong to; it becomes Identity.Cluster
	// and picks the upstream control plane. Required.
	Cluster string `yaml:"cluster"`
	// TrustDomain of the SPIFFE IDs of this issuer's workloads. Empty means
	// cluster.local.
	TrustDomain string `yaml:"trust_domain"`

	// Exactly one key source: JWKS (inline JSON), JWKSFile, JWKSURL, or
	// OIDC discovery (Discovery: true uses the issuer URL as the base,
	// DiscoveryURL another base, e.g. the apiserver's in-cluster address).
	JWKS         string `yaml:"jwks"`
	JWKSFile     string `yaml:"jwks_file"`
	JWKSURL      string `yaml:"jwks_url"`
	Discovery    bool   `yaml:"discovery"`
	DiscoveryURL string `yaml:"discovery_url"`

	// CAFile: PEM bundle for the JWKS / discovery server. Empty means the
	// system roots.
	CAFile string `yaml:"ca_file"`
	// BearerTokenFile: sent as "Authorization: Bearer" to the JWKS /
	// discovery server; read on every fetch, so a rotated projected token is
	// picked up. Empty means none.
	BearerTokenFile string `yaml:"bearer_token_file"`
	// RefreshInterval of the key set (remote and file sources). Zero means 5m.
	RefreshInterval time.Duration `yaml:"refresh_interval"`
	// FetchTimeout of one key-set fetch. Zero means 10s.
	FetchTimeout time.Duration `yaml:"fetch_timeout"`

	// TokenReview, if set, also asks the Kubernetes TokenReview API about
	// every token that passed local verification, so revoked tokens (deleted
	// pod or service account) are refused.
	TokenReview *TokenReviewConfig `yaml:"token_review"`
}

// TokenReviewConfig points at a kube-apiserver's authentication.k8s.io/v1
// TokenReview API.
type TokenReviewConfig struct {
	// URL of the kube-apiserver, e.g. https://10.0.0.1:6443. Required, https.
	URL string `yaml:"url"`
	// CAFile: PEM bundle for the apiserver. Empty means the system roots.
	CAFile string `yaml:"ca_file"`
	// BearerTokenFile: credential of ewgate's own service account (it needs
	// the system:auth-delegator ClusterRole). Required.
	BearerTokenFile string `yaml:"bearer_token_file"`
	// CacheTTL: how long a review's answer is reused. Zero means 10s.
	CacheTTL time.Duration `yaml:"cache_ttl"`
	// Timeout of one review request. Zero means 5s.
	Timeout time.Duration `yaml:"timeout"`
}

// ClientCertConfig lists the roots SPIFFE client certificates must chain to.
type ClientCertConfig struct {
	TrustBundles []TrustBundleConfig `yaml:"trust_bundles"`
}

// TrustBundleConfig is the root CA (e.g. the mesh root, root-cert.pem) of one
// trust domain. Several entries for one trust domain are merged (root
// rotation).
type TrustBundleConfig struct {
	// TrustDomain of the certificates' SPIFFE IDs. Required.
	TrustDomain string `yaml:"trust_domain"`
	// CAFile: PEM file with one or more root certificates. Required.
	CAFile string `yaml:"ca_file"`
	// Cluster to report in Identity.Cluster; may be empty when a trust domain
	// spans clusters (the caller then decides).
	Cluster string `yaml:"cluster"`
}

// CacheConfig bounds the cache of verified tokens.
type CacheConfig struct {
	// Disabled turns the cache off (every token is fully verified).
	Disabled bool `yaml:"disabled"`
	// MaxEntries bounds the cache. Zero means 10000.
	MaxEntries int `yaml:"max_entries"`
	// MaxTTL bounds how long a verified token is reused, even if its exp is
	// later, so a key removed from the issuer stops being honoured. Zero
	// means 5m. Entries never outlive the token's exp.
	MaxTTL time.Duration `yaml:"max_ttl"`
}

// SetDefaults fills every zero field that has a default. It is idempotent.
func (c *Config) SetDefaults() {
	field.Default(&c.Leeway, DefaultLeeway)
	field.Default(&c.VerifyTimeout, DefaultVerifyTimeout)
	field.Default(&c.MinRefetchInterval, DefaultMinRefetchInterval)
	field.Default(&c.Cache.MaxTTL, DefaultCacheMaxTTL)
	field.Default(&c.MaxTokenBytes, DefaultMaxTokenBytes)
	field.Default(&c.Cache.MaxEntries, DefaultCacheMaxEntries)
	for i := range c.Issuers {
		is := &c.Issuers[i]
		if len(is.Audiences) == 0 {
			is.Audiences = []string{DefaultAudience}
		}
		field.Default(&is.TrustDomain, DefaultTrustDomain)
		field.Default(&is.RefreshInterval, DefaultRefreshInterval)
		field.Default(&is.FetchTimeout, DefaultFetchTimeout)
		if tr := is.TokenReview; tr != nil {
			field.Default(&tr.CacheTTL, DefaultReviewCacheTTL)
			field.Default(&tr.Timeout, DefaultReviewTimeout)
		}
	}
}

// Validate checks the config (after SetDefaults) and returns every problem
// at once, as field.Errors whose paths are relative to the authn section
// (issuers[1].jwks_url). Files named by the config are checked for existence
// and syntax, remote endpoints are not contacted.
func (c *Config) Validate() error {
	var errs field.Errors
	add := errs.Add
	if c.Leeway < 0 || c.Leeway > 5*time.Minute {
		add("leeway", "must be between 0s and 5m, got %s", c.Leeway)
	}
	if c.MaxTokenBytes <= 0 || c.MaxTokenBytes > 1<<20 {
		add("max_token_bytes", "must be between 1 and 1048576, got %d", c.MaxTokenBytes)
	}
	if c.VerifyTimeout <= 0 {
		add("verify_timeout", "must be a positive duration such as 5s")
	}
	if c.MinRefetchInterval < 0 {
		add("min_refetch_interval", "must not be negative")
	}
	if c.Cache.MaxEntries < 0 {
		add("cache.max_entries", "must not be negative")
	}
	if c.Cache.MaxTTL < 0 {
		add("cache.max_ttl", "must not be negative")
	}
	seen := map[string]int{}
	for i := range c.Issuers {
		p := fmt.Sprintf("issuers[%d]", i)
		is := &c.Issuers[i]
		if j, dup := seen[is.Issuer]; dup && is.Issuer != "" {
			add(p+".issuer", "duplicates issuers[%d].issuer", j)
		}
		seen[is.Issuer] = i
		is.validate(p, add)
	}
	tdCluster := map[string]int{}
	for i, tb := range c.ClientCerts.TrustBundles {
		p := fmt.Sprintf("client_certs.trust_bundles[%d]", i)
		if !validTrustDomain(tb.TrustDomain) {
			add(p+".trust_domain", "must be a trust domain such as cluster.local (lower-case letters, digits, '.', '-', '_'), got %s", quote(tb.TrustDomain))
		}
		if tb.CAFile == "" {
			add(p+".ca_file", "required: a PEM file with the root certificate(s) of the trust domain")
		} else if _, err := loadPool(tb.CAFile); err != nil {
			add(p+".ca_file", "%v", err)
		}
		if j, ok := tdCluster[tb.TrustDomain]; ok && c.ClientCerts.TrustBundles[j].Cluster != tb.Cluster {
			add(p+".cluster", "must equal client_certs.trust_bundles[%d].cluster for the same trust domain", j)
		} else if !ok {
			tdCluster[tb.TrustDomain] = i
		}
	}
	return errs.Err()
}

func (is *IssuerConfig) validate(p string, add func(path, format string, args ...any)) {
	if is.Issuer == "" {
		add(p+".issuer", "required: the exact iss claim of the tokens, e.g. https://kubernetes.default.svc.cluster.local")
	}
	if is.Cluster == "" {
		add(p+".cluster", "required: the name of the cluster this issuer's workloads belong to")
	}
	for j, a := range is.Audiences {
		if a == "" {
			add(fmt.Sprintf("%s.audiences[%d]", p, j), "must not be empty")
		}
	}
	if !validTrustDomain(is.TrustDomain) {
		add(p+".trust_domain", "must be a trust domain such as cluster.local (lower-case letters, digits, '.', '-', '_'), got %s", quote(is.TrustDomain))
	}
	n := 0
	for _, set := range []bool{is.JWKS != "", is.JWKSFile != "", is.JWKSURL != "", is.Discovery || is.DiscoveryURL != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		add(p, "exactly one key source is required: jwks, jwks_file, jwks_url, or discovery/discovery_url (got %d)", n)
	}
	remote := is.JWKSURL != "" || is.Discovery || is.DiscoveryURL != ""
	switch {
	case is.JWKS != "":
		if _, _, err := parseJWKS([]byte(is.JWKS)); err != nil {
			add(p+".jwks", "%v", err)
		}
	case is.JWKSFile != "":
		if data, err := os.ReadFile(is.JWKSFile); err != nil {
			add(p+".jwks_file", field.CannotRead+"%v", err)
		} else if _, _, err := parseJWKS(data); err != nil {
			add(p+".jwks_file", "%v", err)
		}
	case is.JWKSURL != "":
		checkHTTPS(p+".jwks_url", is.JWKSURL, add)
	case is.DiscoveryURL != "":
		checkHTTPS(p+".discovery_url", is.DiscoveryURL, add)
	case is.Discovery:
		checkHTTPS(p+".issuer", is.Issuer, add)
	}
	if !remote && is.CAFile != "" {
		add(p+".ca_file", "only used with jwks_url or discovery")
	}
	if !remote && is.BearerTokenFile != "" {
		add(p+".bearer_token_file", "only used with jwks_url or discovery")
	}
	if is.CAFile != "" {
		if _, err := loadPool(is.CAFile); err != nil {
			add(p+".ca_file", "%v", err)
		}
	}
	if is.RefreshInterval <= 0 {
		add(p+".refresh_interval", "must be a positive duration such as 5m")
	}
	if is.FetchTimeout <= 0 {
		add(p+".fetch_timeout", "must be a positive duration such as 10s")
	}
	if tr := is.TokenReview; tr != nil {
		checkHTTPS(p+".token_review.url", tr.URL, add)
		if tr.BearerTokenFile == "" {
			add(p+".token_review.bearer_token_file", "required: a token of a service account bound to system:auth-delegator")
		}
		if tr.CAFile != "" {
			if _, err := loadPool(tr.CAFile); err != nil {
				add(p+".token_review.ca_file", "%v", err)
			}
		}
		if tr.CacheTTL <= 0 {
			add(p+".token_review.cache_ttl", "must be a positive duration such as 10s")
		}
		if tr.Timeout <= 0 {
			add(p+".token_review.timeout", "must be a positive duration such as 5s")
		}
	}
}

func checkHTTPS(path, raw string, add func(path, format string, args ...any)) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		add(path, "must be an absolute https URL, got %s", quote(raw))
	}
}

// validTrustDomain follows the SPIFFE ID spec: lower-case letters, digits,
// '.', '-', '_'.
func validTrustDomain(td string) bool {
	if td == "" || len(td) > 255 {
		return false
	}
	for _, r := range td {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
