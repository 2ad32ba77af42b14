package authn

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// reviewer asks a kube-apiserver whether a token is still valid, using the
// authentication.k8s.io/v1 TokenReview API with plain HTTP + JSON (this
// package does not import client-go). Bound service-account tokens stay
// cryptographically valid after their pod or service account is deleted;
// only the apiserver knows, so this is how revocation is honoured.
type reviewer struct {
	issuer    string
	url       string
	client    *http.Client
	tokenFile string
	audiences []string
	ttl       time.Duration
	timeout   time.Duration
	v         *Verifier
}

func newReviewer(v *Verifier, ic *IssuerConfig) (*reviewer, error) {
	tr := ic.TokenReview
	c, err := httpClient(tr.CAFile)
	if err != nil {
		return nil, err
	}
	return &reviewer{
		issuer:    ic.Issuer,
		url:       strings.TrimSuffix(tr.URL, "/") + "/apis/authentication.k8s.io/v1/tokenreviews",
		client:    c,
		tokenFile: tr.BearerTokenFile,
		audiences: ic.Audiences,
		ttl:       tr.CacheTTL,
		timeout:   tr.Timeout,
		v:         v,
	}, nil
}

// TokenReview is the subset of authentication.k8s.io/v1 TokenReview this
// package sends and reads. It is exported so tests (and the e2e suite) can
// speak the same JSON.
type TokenReview struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Spec       TokenReviewSpec   `json:"spec"`
	Status     TokenReviewStatus `json:"status"`
}

// TokenReviewSpec is the request: the token and the audiences we accept.
type TokenReviewSpec struct {
	Token     string   `json:"token"`
	Audiences []string `json:"audiences,omitempty"`
}

// TokenReviewStatus is the apiserver's answer.
type TokenReviewStatus struct {
	Authenticated bool            `json:"authenticated"`
	User          TokenReviewUser `json:"user"`
	Audiences     []string        `json:"audiences,omitempty"`
	Error         string          `json:"error,omitempty"`
}

// TokenReviewUser is status.user.
type TokenReviewUser struct {
	Username string              `json:"username"`
	UID      string              `json:"uid"`
	Groups   []string            `json:"groups"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

// The extra key the apiserver sets for a pod-bound token.
const extraPodName = "authentication.kubernetes.io/pod-name"

// check asks the apiserver about a token that already passed local
// verification (so garbage never reaches the apiserver) and cross-checks
// the answer with the token's claims.
func (r *reviewer) check(ctx context.Context, token string, c *claims) error {
	st, err := r.review(ctx, token)
	m := r.v.m.reviews
	if err != nil {
		m.WithLabelValues(r.issuer, "error").Inc()
		return refuse(ErrReviewUnavailable, err.Error())
	}
	if !st.Authenticated {
		m.WithLabelValues(r.issuer, "revoked").Inc()
		return ErrRevoked
	}
	m.WithLabelValues(r.issuer, "ok").Inc()
	if !intersects(st.Audiences, r.audiences) {
		return refuse(ErrBadAudience, "TokenReview audiences")
	}
	if st.User.Username != c.Subject {
		return refuse(ErrBadSubject, "TokenReview username differs from sub")
	}
	if pods := st.User.Extra[extraPodName]; len(pods) > 0 && c.K8s.Pod != nil && pods[0] != c.K8s.Pod.Name {
		return refuse(ErrBadSubject, "TokenReview pod differs from the token's")
	}
	return nil
}

func (r *reviewer) review(ctx context.Context, token string) (*TokenReviewStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	body, err := json.Marshal(TokenReview{
		APIVersion: "authentication.k8s.io/v1",
		Kind:       "TokenReview",
		Spec:       TokenReviewSpec{Token: token, Audiences: r.audiences},
	})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	var out TokenReview
	if err := doJSON(r.client, req, r.tokenFile, &out, http.StatusCreated, http.StatusOK); err != nil {
		return nil, err
	}
	return &out.Status, nil
}

func intersects(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}
