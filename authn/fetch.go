package authn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/ewgate/ewgate/gateway/config/field"
)

// maxBody caps what we read from a JWKS, discovery or TokenReview response.
const maxBody = 1 << 20

// loadPool reads a PEM bundle of CA certificates.
func loadPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf(field.CannotRead+"%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// httpClient builds a client that trusts caFile (or the system roots when
// empty). Each issuer and each TokenReview endpoint has its own, so one
// endpoint's CA never vouches for another's.
func httpClient(caFile string) (*http.Client, error) {
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadPool(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", caFile, err)
		}
		tlsConf.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &http.Client{Transport: tr}, nil
}

// bearer reads a token file on each use: projected service-account tokens
// are rotated by the kubelet.
func bearer(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("bearer token file: %v", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", errors.New("bearer token file is empty")
	}
	return tok, nil
}

// acceptJSON is the Accept header of every fetch: discovery documents and TokenReviews are
// application/json, key sets application/jwk-set+json.
const acceptJSON = "application/json, application/jwk-set+json"

// doJSON sends req and decodes a JSON answer with one of the wanted status
// codes into out. Errors never include the bearer token.
func doJSON(client *http.Client, req *http.Request, tokenFile string, out any, want ...int) error {
	tok, err := bearer(tokenFile)
	if err != nil {
		return err
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	// A kube-apiserver serves its key set only as application/jwk-set+json (RFC 7517 §8.5.1)
	// and answers 406 to a request that accepts application/json alone.
	req.Header.Set("Accept", acceptJSON)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("%s %s: reading body: %v", req.Method, req.URL.Redacted(), err)
	}
	ok := false
	for _, c := range want {
		ok = ok || resp.StatusCode == c
	}
	if !ok {
		return fmt.Errorf("%s %s: HTTP %d", req.Method, req.URL.Redacted(), resp.StatusCode)
	}
	if len(body) > maxBody {
		return fmt.Errorf("%s %s: body over %d bytes", req.Method, req.URL.Redacted(), maxBody)
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = body
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: bad JSON: %v", req.Method, req.URL.Redacted(), err)
	}
	return nil
}

func get(ctx context.Context, client *http.Client, url, tokenFile string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return doJSON(client, req, tokenFile, out, http.StatusOK)
}

// discoveryDocURL appends the OIDC discovery path to a base URL unless it is
// already there (OpenID Connect Discovery 1.0 §4).
func discoveryDocURL(base string) string {
	const wellKnown = "/.well-known/openid-configuration"
	if strings.HasSuffix(base, wellKnown) {
		return base
	}
	return strings.TrimSuffix(base, "/") + wellKnown
}

// discoverJWKSURI reads the discovery document and returns its jwks_uri. The
// document's issuer must be the configured one (OIDC Discovery §4.3), which
// catches a discovery URL pointing at the wrong cluster.
func discoverJWKSURI(ctx context.Context, client *http.Client, base, issuer, tokenFile string) (string, error) {
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := get(ctx, client, discoveryDocURL(base), tokenFile, &doc); err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	if doc.Issuer != issuer {
		return "", fmt.Errorf("discovery: document names issuer %s, configured %s", quote(doc.Issuer), quote(issuer))
	}
	if !strings.HasPrefix(doc.JWKSURI, "https://") {
		return "", fmt.Errorf("discovery: jwks_uri %s is not https", quote(doc.JWKSURI))
	}
	return doc.JWKSURI, nil
}
