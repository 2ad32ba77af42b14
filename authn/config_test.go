package authn

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/ewgate/ewgate/gateway/config/field"
	"github.com/ewgate/ewgate/gateway/testkit"
)

func decode(t *testing.T, doc string) (Config, error) {
	t.Helper()
	var wrapper struct {
		Authn Config `yaml:"authn"`
	}
	dec := yaml.NewDecoder(bytes.NewReader([]byte(doc)))
	dec.KnownFields(true)
	err := dec.Decode(&wrapper)
	return wrapper.Authn, err
}

func TestConfigYAML(t *testing.T) {
	testKeys(t)
	ca := writeFile(t, "root.pem", testkit.PEM(testkit.Issue(t, caTmpl("root", time.Now()), nil).X509))
	jwksFile := writeFile(t, "jwks.json", []byte(testkit.JWKS(t, testkit.JWK{KeyID: "f1", Key: ec256})))
	doc := `
authn:
  leeway: 30s
  max_token_bytes: 8192
  verify_timeout: 2s
  min_refetch_interval: 1m
  cache:
    max_entries: 500
    max_ttl: 2m
  issuers:
    - issuer: https://kubernetes.default.svc.cluster.local
      cluster: east
      discovery_url: https://10.0.0.1:6443
      ca_file: ` + ca + `
      bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
      refresh_interval: 10m
      fetch_timeout: 3s
      token_review:
        url: https://10.0.0.1:6443
        ca_file: ` + ca + `
        bearer_token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
        cache_ttl: 20s
    - issuer: https://west.example
      cluster: west
      trust_domain: west.example
      audiences: [istio-ca, ewgate]
      jwks_file: ` + jwksFile + `
  client_certs:
    trust_bundles:
      - trust_domain: cluster.local
        ca_file: ` + ca + `
        cluster: east
`
	cfg, err := decode(t, doc)
	if err != nil {
		t.Fatal(err)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	if cfg.Leeway != 30*time.Second || cfg.VerifyTimeout != 2*time.Second || cfg.Cache.MaxTTL != 2*time.Minute ||
		cfg.MinRefetchInterval != time.Minute || cfg.MaxTokenBytes != 8192 || cfg.Cache.MaxEntries != 500 {
		t.Fatalf("top level: %+v", cfg)
	}
	east, west := cfg.Issuers[0], cfg.Issuers[1]
	if east.RefreshInterval != 10*time.Minute || east.FetchTimeout != 3*time.Second || east.TokenReview.CacheTTL != 20*time.Second ||
		east.TokenReview.Timeout != DefaultReviewTimeout || east.Audiences[0] != "istio-ca" || east.TrustDomain != "cluster.local" {
		t.Fatalf("east: %+v %+v", east, east.TokenReview)
	}
	if west.TrustDomain != "west.example" || len(west.Audiences) != 2 || west.RefreshInterval != DefaultRefreshInterval {
		t.Fatalf("west: %+v", west)
	}
	// Unknown keys are errors.
	if _, err := decode(t, "authn:\n  issuers:\n    - issuer: x\n      jwks_uri: https://x\n"); err == nil || !strings.Contains(err.Error(), "jwks_uri") {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := decode(t, "authn:\n  leeway: soon\n"); err == nil {
		t.Fatal("bad duration accepted")
	}
}

func TestConfigDefaults(t *testing.T) {
	var c Config
	c.Issuers = []IssuerConfig{{Issuer: "https://i", Cluster: "c", Discovery: true, TokenReview: &TokenReviewConfig{}}}
	c.SetDefaults()
	c.SetDefaults() // idempotent
	is := c.Issuers[0]
	if c.Leeway != 60*time.Second || c.MaxTokenBytes != 16384 || c.VerifyTimeout != 5*time.Second ||
		c.MinRefetchInterval != 30*time.Second || c.Cache.MaxEntries != 10000 || c.Cache.MaxTTL != 5*time.Minute ||
		len(is.Audiences) != 1 || is.Audiences[0] != "istio-ca" || is.TrustDomain != "cluster.local" ||
		is.RefreshInterval != 5*time.Minute || is.FetchTimeout != 10*time.Second ||
		is.TokenReview.CacheTTL != 10*time.Second || is.TokenReview.Timeout != 5*time.Second {
		t.Fatalf("defaults: %+v %+v", c, is)
	}
	// The zero config is valid and trusts nobody.
	var zero Config
	zero.SetDefaults()
	if err := zero.Validate(); err != nil {
		t.Fatal(err)
	}
	v, err := New(context.Background(), Config{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, err := v.VerifyToken(context.Background(), "a.b.c"); err == nil {
		t.Fatal("empty verifier accepted a token")
	}
	if err := v.Ready(); err != nil {
		t.Fatalf("empty verifier not ready: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	testKeys(t)
	jwks := testkit.JWKS(t, testkit.JWK{KeyID: "k", Key: ec256})
	ok := func() IssuerConfig { return IssuerConfig{Issuer: "https://i.example", Cluster: "c", JWKS: jwks} }
	cases := []struct {
		name string
		mut  func(c *Config)
		want string // path and message fragment
	}{
		{"no issuer", func(c *Config) { c.Issuers[0].Issuer = "" }, "issuers[0].issuer: required"},
		{"no cluster", func(c *Config) { c.Issuers[0].Cluster = "" }, "issuers[0].cluster: required"},
		{"two key sources", func(c *Config) { c.Issuers[0].JWKSURL = "https://x/jwks" }, "issuers[0]: exactly one key source"},
		{"no key source", func(c *Config) { c.Issuers[0].JWKS = "" }, "issuers[0]: exactly one key source"},
		{"http jwks_url", func(c *Config) { c.Issuers[0].JWKS, c.Issuers[0].JWKSURL = "", "http://x/jwks" }, "issuers[0].jwks_url: must be an absolute https URL"},
		{"http discovery_url", func(c *Config) { c.Issuers[0].JWKS, c.Issuers[0].DiscoveryURL = "", "http://x" }, "issuers[0].discovery_url: must be an absolute https URL"},
		{"discovery of a non-URL issuer", func(c *Config) {
			c.Issuers[0].JWKS, c.Issuers[0].Discovery, c.Issuers[0].Issuer = "", true, "kubernetes/serviceaccount"
		}, "issuers[0].issuer: must be an absolute https URL"},
		{"bad inline jwks", func(c *Config) { c.Issuers[0].JWKS = `{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}` }, "issuers[0].jwks: JSON Web Key Set has no usable signing key"},
		{"missing jwks_file", func(c *Config) { c.Issuers[0].JWKS, c.Issuers[0].JWKSFile = "", "/nonexistent/jwks.json" }, "issuers[0].jwks_file: cannot read"},
		{"ca_file with inline jwks", func(c *Config) { c.Issuers[0].CAFile = "/x" }, "issuers[0].ca_file: only used with jwks_url or discovery"},
		{"duplicate issuer", func(c *Config) { c.Issuers = append(c.Issuers, ok()) }, "issuers[1].issuer: duplicates issuers[0].issuer"},
		{"bad trust domain", func(c *Config) { c.Issuers[0].TrustDomain = "Cluster.Local" }, "issuers[0].trust_domain: must be a trust domain"},
		{"empty audience", func(c *Config) { c.Issuers[0].Audiences = []string{"istio-ca", ""} }, "issuers[0].audiences[1]: must not be empty"},
		{"negative refresh", func(c *Config) { c.Issuers[0].RefreshInterval = -time.Second }, "issuers[0].refresh_interval: must be a positive duration"},
		{"token review over http", func(c *Config) {
			c.Issuers[0].TokenReview = &TokenReviewConfig{URL: "http://api", BearerTokenFile: "/t", CacheTTL: time.Second, Timeout: time.Second}
		}, "issuers[0].token_review.url: must be an absolute https URL"},
		{"token review without credential", func(c *Config) {
			c.Issuers[0].TokenReview = &TokenReviewConfig{URL: "https://api", CacheTTL: time.Second, Timeout: time.Second}
		}, "issuers[0].token_review.bearer_token_file: required"},
		{"leeway too large", func(c *Config) { c.Leeway = time.Hour }, "leeway: must be between 0s and 5m"},
		{"max_token_bytes too large", func(c *Config) { c.MaxTokenBytes = 1 << 30 }, "max_token_bytes: must be between 1 and 1048576"},
		{"trust bundle without ca_file", func(c *Config) {
			c.ClientCerts.TrustBundles = []TrustBundleConfig{{TrustDomain: "cluster.local"}}
		}, "client_certs.trust_bundles[0].ca_file: required"},
		{"trust bundle bad domain", func(c *Config) {
			c.ClientCerts.TrustBundles = []TrustBundleConfig{{TrustDomain: "spiffe://cluster.local", CAFile: "/x"}}
		}, "client_certs.trust_bundles[0].trust_domain: must be a trust domain"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Issuers: []IssuerConfig{ok()}}
			tc.mut(&c)
			c.SetDefaults()
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want %q", err, tc.want)
			}
			var fe *field.Error
			if !errors.As(err, &fe) || fe.Path == "" {
				t.Fatalf("not a *field.Error: %v", err)
			}
			// New refuses it too.
			if v, err := New(context.Background(), c, Options{}); err == nil {
				v.Close()
				t.Fatal("New accepted an invalid config")
			}
		})
	}
}
