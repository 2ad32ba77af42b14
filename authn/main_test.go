package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewgate/ewgate/gateway/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Test keys, generated once per test binary: real crypto, no fixtures.
var (
	keysOnce sync.Once
	rsaA     *rsa.PrivateKey // issuer A
	rsaB     *rsa.PrivateKey // issuer B (single key)
	rsaOther *rsa.PrivateKey // nobody's
	ec256    *ecdsa.PrivateKey
	ec384    *ecdsa.PrivateKey
	ec521    *ecdsa.PrivateKey
	edKey    ed25519.PrivateKey
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		must := func(err error) {
			if err != nil {
				panic(err)
			}
		}
		var err error
		rsaA, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		rsaB, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		rsaOther, err = rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		ec256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		must(err)
		ec521, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
		must(err)
		_, edKey, err = ed25519.GenerateKey(rand.Reader)
		must(err)
	})
}

// newClock is the injected clock, at a fixed start.
func newClock() *testkit.Clock { return testkit.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) }

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func b64json(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b64(b)
}

// sign computes a JWS signature by hand, so tests can make tokens go-jose
// would refuse to make (wrong alg for the key, HMAC with a public key...).
func sign(t testing.TB, alg string, key any, input []byte) []byte {
	t.Helper()
	var h crypto.Hash
	switch alg[2:] {
	case "256":
		h = crypto.SHA256
	case "384":
		h = crypto.SHA384
	case "512":
		h = crypto.SHA512
	}
	digest := func() []byte {
		hh := h.New()
		hh.Write(input)
		return hh.Sum(nil)
	}
	switch alg[:2] {
	case "HS":
		newHash := map[crypto.Hash]func() hash.Hash{crypto.SHA256: sha256.New, crypto.SHA384: sha512.New384, crypto.SHA512: sha512.New}[h]
		m := hmac.New(newHash, key.([]byte))
		m.Write(input)
		return m.Sum(nil)
	case "RS":
		s, err := rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), h, digest())
		if err != nil {
			t.Fatal(err)
		}
		return s
	case "PS":
		s, err := rsa.SignPSS(rand.Reader, key.(*rsa.PrivateKey), h, digest(), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		if err != nil {
			t.Fatal(err)
		}
		return s
	case "ES":
		k := key.(*ecdsa.PrivateKey)
		r, s, err := ecdsa.Sign(rand.Reader, k, digest())
		if err != nil {
			t.Fatal(err)
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		out := make([]byte, 2*size)
		r.FillBytes(out[:size])
		s.FillBytes(out[size:])
		return out
	case "Ed":
		return ed25519.Sign(key.(ed25519.PrivateKey), input)
	}
	t.Fatalf("sign: unsupported alg %s", alg)
	return nil
}

// mint builds a compact JWS with the given header and claims, signed by
// hand with alg and key (key nil: empty signature).
func mint(t testing.TB, hdr map[string]any, claims any, alg string, key any) string {
	t.Helper()
	input := b64json(t, hdr) + "." + b64json(t, claims)
	if key == nil {
		return input + "."
	}
	return input + "." + b64(sign(t, alg, key, []byte(input)))
}

// saClaims are the claims of a bound service-account token as a
// kube-apiserver makes them (TokenRequest, audience istio-ca).
func saClaims(iss string, now time.Time) map[string]any {
	return testkit.ServiceAccountClaims(iss, "vm-ns", "vm-sa", now)
}

// with returns a copy of claims with keys set (or deleted when the value is
// the deleteClaim marker).
func with(c map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == deleteClaim {
			delete(out, kv[i].(string))
			continue
		}
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

type marker struct{}

var deleteClaim = marker{}

// writeFile writes data into the test's temp dir and returns the path.
func writeFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	return testkit.WriteFile(t, t.TempDir(), name, data)
}

// caFile writes the test server's certificate as a PEM CA bundle.
func caFile(t testing.TB, srv *httptest.Server) string {
	t.Helper()
	return writeFile(t, "ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
}

// jwksServer is an OIDC issuer on a loopback HTTPS server: discovery
// document and JWKS, with a mutable key set, a request counter, an
// optional failure mode, and a channel that ticks on every JWKS request.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []testkit.JWK
	status  int // non-zero: answer the JWKS with this status
	hang    chan struct{}
	hits    atomic.Int64
	hit     chan struct{}
	auth    atomic.Value // last Authorization header seen
	discHit atomic.Int64
}

func newJWKSServer(t testing.TB, keys ...testkit.JWK) *jwksServer {
	t.Helper()
	s := &jwksServer{keys: keys, hit: make(chan struct{}, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		s.discHit.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"issuer":%q,"jwks_uri":%q,"response_types_supported":["id_token"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256"]}`,
			s.URL, s.URL+"/openid/v1/jwks")
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.auth.Store(r.Header.Get("Authorization"))
		defer func() {
			select {
			case s.hit <- struct{}{}:
			default:
			}
		}()
		s.mu.Lock()
		status, hang, keys := s.status, s.hang, append([]testkit.JWK(nil), s.keys...)
		s.mu.Unlock()
		if hang != nil {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		if status != 0 {
			http.Error(w, "unavailable", status)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		fmt.Fprint(w, testkit.JWKS(t, keys...))
	})
	s.Server = httptest.NewUnstartedServer(mux)
	s.Server.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake failures are expected in some tests
	s.Server.StartTLS()
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) setKeys(keys ...testkit.JWK) {
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
}

func (s *jwksServer) setStatus(code int) {
	s.mu.Lock()
	s.status = code
	s.mu.Unlock()
}

// waitHits waits until the JWKS endpoint has been asked at least n times.
func (s *jwksServer) waitHits(t testing.TB, n int64) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for s.hits.Load() < n {
		select {
		case <-s.hit:
		case <-deadline.C:
			t.Fatalf("JWKS endpoint asked %d times, waited for %d", s.hits.Load(), n)
		}
	}
}
