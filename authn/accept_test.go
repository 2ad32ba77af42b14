package authn

import (
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestFetchAcceptsJWKSMediaType: a server that, like kube-apiserver's /openid/v1/jwks, produces
// only application/jwk-set+json and answers 406 to anything else is read.
func TestFetchAcceptsJWKSMediaType(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := false
		for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			ok = ok || err == nil && mt == "application/jwk-set+json"
		}
		if !ok {
			http.Error(w, "not acceptable", http.StatusNotAcceptable)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write([]byte(`{"keys":[]}`))
	}))
	defer srv.Close()
	req, err := http.NewRequest(http.MethodGet, srv.URL+"/openid/v1/jwks", nil)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Keys []any `json:"keys"`
	}
	if err := doJSON(srv.Client(), req, "", &out, http.StatusOK); err != nil {
		t.Fatalf("key set served as application/jwk-set+json: %v", err)
	}
}
