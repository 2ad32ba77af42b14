package harness

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServiceAccountClaims are the claims of a Kubernetes service-account token (what a TokenRequest for the istio-ca audience returns; docs/vm-identity.md).
func (a *APIServer) ServiceAccountClaims(ns, sa, uid string, iat, exp time.Time, audiences ...string) map[string]any {
	return map[string]any{
		"iss": a.Issuer,
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"aud": audiences,
		"iat": iat.Unix(),
		"nbf": iat.Unix(),
		"exp": exp.Unix(),
		"jti": fmt.Sprintf("e2e-%d", time.Now().UnixNano()),
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"serviceaccount": map[string]any{"name": sa, "uid": uid},
		},
	}
}

// SignToken signs claims with the apiserver's own service-account key, as the apiserver does
// (RS256, kid = base64url(sha256(PKIX public key))). Scenarios use it for tokens TokenRequest
// will not mint, such as an expired one (TokenRequest refuses lifetimes under 10 minutes).
func (a *APIServer) SignToken(claims map[string]any) (string, error) {
	b, err := os.ReadFile(a.SAKeyFile)
	if err != nil {
		return "", fmt.Errorf("harness: sign token: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("harness: sign token: no PEM in the key file")
	}
	key, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("harness: sign token: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", fmt.Errorf("harness: sign token: %w", err)
	}
	kid := sha256.Sum256(der)
	hdr, err := json.Marshal(map[string]string{
		"alg": "RS256", "kid": base64.RawURLEncoding.EncodeToString(kid[:]),
	})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("harness: sign token: %w", err)
	}
	signing := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		return "", fmt.Errorf("harness: sign token: %w", err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// ReviewToken asks the apiserver's TokenReview API about a token for the given audiences (what
// istiod does with audience istio-ca) and returns its status.
func (a *APIServer) ReviewToken(ctx context.Context, token string, audiences ...string) (authnv1.TokenReviewStatus, error) {
	tr, err := a.Kube.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return authnv1.TokenReviewStatus{}, fmt.Errorf("harness: token review: %w", err)
	}
	return tr.Status, nil
}

// ExpiredIstioToken is a token of the service account ns/sa with audience istio-ca that expired
// an hour ago, signed with the apiserver's own key (TokenRequest will not mint one).
func (a *APIServer) ExpiredIstioToken(ctx context.Context, ns, sa string) (string, error) {
	acct, err := a.Kube.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("harness: expired token: %w", err)
	}
	now := time.Now()
	return a.SignToken(a.ServiceAccountClaims(ns, sa, string(acct.UID), now.Add(-2*time.Hour), now.Add(-time.Hour), "istio-ca"))
}
