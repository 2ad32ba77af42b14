package authn

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// fakeAPIServer answers authentication.k8s.io/v1 TokenReviews the way a
// kube-apiserver does (201 Created, the request echoed with a status).
type fakeAPIServer struct {
	*httptest.Server
	calls   atomic.Int64
	mu      sync.Mutex
	revoked map[string]bool // by jti
	status  int             // non-zero: fail with this HTTP status
	auds    []string        // non-nil: answer these status.audiences
	badReq  atomic.Value    // first malformed request seen
}

func newFakeAPIServer(t testing.TB) *fakeAPIServer {
	t.Helper()
	s := &fakeAPIServer{revoked: map[string]bool{}}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		fail := func(msg string) {
			s.badReq.CompareAndSwap(nil, msg)
			http.Error(w, msg, http.StatusBadRequest)
		}
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			fail("bad method or path " + r.Method + " " + r.URL.Path)
			return
		}
		if r.Header.Get("Authorization") != "Bearer gateway-sa-token" {
			http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401}`, http.StatusUnauthorized)
			return
		}
		if r.Header.Get("Content-Type") != "application/json" {
			fail("content type " + r.Header.Get("Content-Type"))
			return
		}
		var req map[string]any
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			fail("bad JSON")
			return
		}
		spec, _ := req["spec"].(map[string]any)
		if req["apiVersion"] != "authentication.k8s.io/v1" || req["kind"] != "TokenReview" || spec == nil {
			fail("not a v1 TokenReview")
			return
		}
		token, _ := spec["token"].(string)
		auds, _ := json.Marshal(spec["audiences"])
		if string(auds) != `["istio-ca"]` {
			fail("audiences " + string(auds))
			return
		}
		s.mu.Lock()
		status, overrideAuds := s.status, s.auds
		s.mu.Unlock()
		if status != 0 {
			http.Error(w, "unavailable", status)
			return
		}
		// A real apiserver verifies the token; this one trusts the test
		// and reads the claims.
		var c struct {
			Sub string         `json:"sub"`
			JTI string         `json:"jti"`
			K8s map[string]any `json:"kubernetes.io"`
		}
		parts := strings.Split(token, ".")
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(payload, &c)
		s.mu.Lock()
		revoked := s.revoked[c.JTI]
		s.mu.Unlock()
		st := map[string]any{"authenticated": false, "user": map[string]any{}, "error": "[invalid bearer token, service account token has been invalidated]"}
		if !revoked {
			respAuds := []string{"istio-ca"}
			if overrideAuds != nil {
				respAuds = overrideAuds
			}
			st = map[string]any{
				"authenticated": true,
				"user": map[string]any{
					"username": c.Sub,
					"uid":      "5b1c2f0e-7f43-4a55-9d8e-3f1a6c2b9e10",
					"groups":   []string{"system:serviceaccounts", "system:serviceaccounts:vm-ns", "system:authenticated"},
					"extra": map[string][]string{
						"authentication.kubernetes.io/pod-name":      {"vm-pod"},
						"authentication.kubernetes.io/pod-uid":       {"pod-uid"},
						"authentication.kubernetes.io/credential-id": {"JTI=" + c.JTI},
					},
				},
				"audiences": respAuds,
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
			"metadata": map[string]any{"creationTimestamp": nil},
			"spec":     spec, "status": st,
		})
	}))
	t.Cleanup(s.Close)
	return s
}

func TestTokenReview(t *testing.T) {
	testKeys(t)
	api := newFakeAPIServer(t)
	clock := newClock()
	v := inlineVerifier(t, clock, func(c *Config) {
		c.Issuers[0].TokenReview = &TokenReviewConfig{
			URL:             api.URL,
			CAFile:          caFile(t, api.Server),
			BearerTokenFile: writeFile(t, "sa-token", []byte("gateway-sa-token\n")),
			CacheTTL:        10 * time.Second,
		}
	})
	ctx := context.Background()
	mk := func(jti string) string {
		return testkit.SignJWT(t, jose.ES256, ec256, "k1", with(saClaims(issuerB, clock.Now()), "jti", jti))
	}
	calls := func(want int64) {
		t.Helper()
		if bad := api.badReq.Load(); bad != nil {
			t.Fatalf("apiserver got a bad request: %v", bad)
		}
		if n := api.calls.Load(); n != want {
			t.Fatalf("apiserver called %d times, want %d", n, want)
		}
	}

	good := mk("good")
	id, err := v.VerifyToken(ctx, good)
	if err != nil {
		t.Fatalf("good token: %v", err)
	}
	if id.Pod != "vm-pod" || id.Namespace != "vm-ns" {
		t.Fatalf("identity %+v", id)
	}
	calls(1)
	if _, err := v.VerifyToken(ctx, good); err != nil { // cached
		t.Fatal(err)
	}
	calls(1)
	clock.Advance(11 * time.Second) // past cache_ttl: asked again
	if _, err := v.VerifyToken(ctx, good); err != nil {
		t.Fatal(err)
	}
	calls(2)

	// Revoked (deleted pod): refused, and the refusal is cached briefly.
	api.mu.Lock()
	api.revoked["gone"] = true
	api.mu.Unlock()
	gone := mk("gone")
	for range 3 {
		if _, err := v.VerifyToken(ctx, gone); !errors.Is(err, ErrRevoked) {
			t.Fatalf("revoked token: %v", err)
		}
	}
	calls(3)
	clock.Advance(11 * time.Second)
	if _, err := v.VerifyToken(ctx, gone); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked token: %v", err)
	}
	calls(4)

	// Garbage and badly signed tokens never reach the apiserver.
	for _, tok := range []string{"garbage", mint(t, hdr("ES256", "k1"), saClaims(issuerB, clock.Now()), "ES256", ec384)} {
		if _, err := v.VerifyToken(ctx, tok); err == nil {
			t.Fatal("accepted")
		}
	}
	calls(4)

	// The apiserver's audiences must include an accepted one.
	api.mu.Lock()
	api.auds = []string{"https://kubernetes.default.svc"}
	api.mu.Unlock()
	if _, err := v.VerifyToken(ctx, mk("aud")); !errors.Is(err, ErrBadAudience) {
		t.Fatalf("audience mismatch: %v", err)
	}
	api.mu.Lock()
	api.auds = nil
	api.status = http.StatusInternalServerError
	api.mu.Unlock()
	if _, err := v.VerifyToken(ctx, mk("down")); !errors.Is(err, ErrReviewUnavailable) {
		t.Fatalf("apiserver failing: %v", err)
	}
	calls(6)
}

// Without the right credential the apiserver says 401: unavailable, not
// revoked (the VM is not at fault), and the error names the status, not
// the credential.
func TestTokenReviewUnauthorized(t *testing.T) {
	testKeys(t)
	api := newFakeAPIServer(t)
	clock := newClock()
	v := inlineVerifier(t, clock, func(c *Config) {
		c.Issuers[0].TokenReview = &TokenReviewConfig{URL: api.URL, CAFile: caFile(t, api.Server),
			BearerTokenFile: writeFile(t, "sa-token", []byte("wrong-token"))}
	})
	_, err := v.VerifyToken(context.Background(), testkit.SignJWT(t, jose.ES256, ec256, "k1", saClaims(issuerB, clock.Now())))
	if !errors.Is(err, ErrReviewUnavailable) || !strings.Contains(err.Error(), "HTTP 401") || strings.Contains(err.Error(), "wrong-token") {
		t.Fatalf("err %v", err)
	}
}
