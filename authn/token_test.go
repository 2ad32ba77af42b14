package authn

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ewgate/ewgate/gateway/testkit"
)

const (
	issuerB = "https://issuer-b.test"
	issuerC = "https://issuer-c.test"
)

// tableEnv is issuer A (OIDC discovery on a loopback HTTPS server, keys of
// every algorithm family), issuer B (inline JWKS, one key) and issuer C
// (inline JWKS, two keys).
type tableEnv struct {
	v     *Verifier
	clock *testkit.Clock
	srv   *jwksServer
	issA  string
	reg   *prometheus.Registry
	logs  *observer.ObservedLogs
}

func aKeys() []testkit.JWK {
	return []testkit.JWK{
		{KeyID: "rsa", Key: rsaA},
		{KeyID: "rsa-pinned", Key: rsaA, Alg: "RS256"},
		{KeyID: "ec256", Key: ec256},
		{KeyID: "ec384", Key: ec384},
		{KeyID: "ec521", Key: ec521},
		{KeyID: "ed", Key: edKey},
	}
}

func newTableEnv(t testing.TB, mut func(*Config)) *tableEnv {
	t.Helper()
	testKeys(t)
	e := &tableEnv{clock: newClock(), srv: newJWKSServer(t, aKeys()...), reg: prometheus.NewPedanticRegistry()}
	e.issA = e.srv.URL
	cfg := Config{
		Issuers: []IssuerConfig{
			{Issuer: e.issA, Cluster: "cluster-a", Discovery: true, CAFile: caFile(t, e.srv.Server),
				BearerTokenFile: writeFile(t, "reader-token", []byte("reader-secret\n"))},
			{Issuer: issuerB, Cluster: "cluster-b", TrustDomain: "b.example", JWKS: testkit.JWKS(t, testkit.JWK{KeyID: "b1", Key: rsaB})},
			{Issuer: issuerC, Cluster: "cluster-c", JWKS: testkit.JWKS(t, testkit.JWK{KeyID: "c1", Key: ec256}, testkit.JWK{KeyID: "c2", Key: ec384})},
		},
	}
	if mut != nil {
		mut(&cfg)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	e.logs = logs
	v, err := New(context.Background(), cfg, Options{Now: e.clock.Now, Registerer: e.reg, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	e.v = v
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

func hdr(alg, kid string) map[string]any {
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	return h
}

func TestGoodTokens(t *testing.T) {
	e := newTableEnv(t, func(c *Config) { c.Cache.Disabled = true })
	now := e.clock.Now()
	good := saClaims(e.issA, now)
	cases := []struct {
		name  string
		token string
		iss   string
	}{
		{"RS256", testkit.SignJWT(t, jose.RS256, rsaA, "rsa", good), e.issA},
		{"RS384", testkit.SignJWT(t, jose.RS384, rsaA, "rsa", good), e.issA},
		{"RS512", testkit.SignJWT(t, jose.RS512, rsaA, "rsa", good), e.issA},
		{"PS256", testkit.SignJWT(t, jose.PS256, rsaA, "rsa", good), e.issA},
		{"PS384", testkit.SignJWT(t, jose.PS384, rsaA, "rsa", good), e.issA},
		{"PS512", testkit.SignJWT(t, jose.PS512, rsaA, "rsa", good), e.issA},
		{"ES256", testkit.SignJWT(t, jose.ES256, ec256, "ec256", good), e.issA},
		{"ES384", testkit.SignJWT(t, jose.ES384, ec384, "ec384", good), e.issA},
		{"ES512", testkit.SignJWT(t, jose.ES512, ec521, "ec521", good), e.issA},
		{"EdDSA", testkit.SignJWT(t, jose.EdDSA, edKey, "ed", good), e.issA},
		{"RS256 pinned key", testkit.SignJWT(t, jose.RS256, rsaA, "rsa-pinned", good), e.issA},
		{"hand-signed RS256", mint(t, hdr("RS256", "rsa"), good, "RS256", rsaA), e.issA},
		{"hand-signed ES256", mint(t, hdr("ES256", "ec256"), good, "ES256", ec256), e.issA},
		{"no kid, single-key issuer", testkit.SignJWT(t, jose.RS256, rsaB, "", with(saClaims(issuerB, now))), issuerB},
		{"kid, single-key issuer", testkit.SignJWT(t, jose.RS256, rsaB, "b1", with(saClaims(issuerB, now))), issuerB},
		{"aud as a string", testkit.SignJWT(t, jose.ES256, ec256, "ec256", with(good, "aud", "istio-ca")), e.issA},
		{"exp just past, within leeway", testkit.SignJWT(t, jose.ES256, ec256, "ec256", with(good, "exp", now.Add(-30*time.Second).Unix())), e.issA},
		{"nbf just ahead, within leeway", testkit.SignJWT(t, jose.ES256, ec256, "ec256", with(good, "nbf", now.Add(30*time.Second).Unix())), e.issA},
		{"no nbf, no iat, no pod", testkit.SignJWT(t, jose.ES256, ec256, "ec256", with(good, "nbf", deleteClaim, "iat", deleteClaim,
			"kubernetes.io", map[string]any{"namespace": "vm-ns", "serviceaccount": map[string]any{"name": "vm-sa", "uid": "u"}})), e.issA},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := e.v.VerifyToken(context.Background(), tc.token)
			if err != nil {
				t.Fatalf("refused: %v (reason %s)", err, Reason(err))
			}
			if id.Namespace != "vm-ns" || id.ServiceAccount != "vm-sa" || id.Issuer != tc.iss || id.Source != SourceJWT {
				t.Fatalf("identity %+v", id)
			}
			wantTD := "cluster.local"
			wantCluster := "cluster-a"
			if tc.iss == issuerB {
				wantTD, wantCluster = "b.example", "cluster-b"
			}
			if id.TrustDomain != wantTD || id.Cluster != wantCluster || id.SPIFFEID != "spiffe://"+wantTD+"/ns/vm-ns/sa/vm-sa" {
				t.Fatalf("identity %+v", id)
			}
		})
	}
	// The full identity of a bound token.
	id, err := e.v.VerifyToken(context.Background(), testkit.SignJWT(t, jose.RS256, rsaA, "rsa", good))
	if err != nil {
		t.Fatal(err)
	}
	want := Identity{Cluster: "cluster-a", Namespace: "vm-ns", ServiceAccount: "vm-sa",
		ServiceAccountUID: "5b1c2f0e-7f43-4a55-9d8e-3f1a6c2b9e10", Pod: "vm-pod", Node: "node-1",
		TrustDomain: "cluster.local", SPIFFEID: "spiffe://cluster.local/ns/vm-ns/sa/vm-sa",
		Issuer: e.issA, ExpiresAt: time.Unix(now.Add(time.Hour).Unix(), 0), Source: SourceJWT}
	if !id.ExpiresAt.Equal(want.ExpiresAt) {
		t.Fatalf("ExpiresAt %v, want %v", id.ExpiresAt, want.ExpiresAt)
	}
	id.ExpiresAt = want.ExpiresAt
	if *id != want {
		t.Fatalf("identity\n got %+v\nwant %+v", *id, want)
	}
	if got := e.srv.auth.Load(); got != "Bearer reader-secret" {
		t.Fatalf("JWKS request Authorization = %q", got)
	}
	if n := testutil.ToFloat64(e.v.m.results.WithLabelValues(e.issA, "ok")); n < 1 {
		t.Fatalf("ewgate_authn_results_total{result=ok} = %v", n)
	}
}

func TestBadTokens(t *testing.T) {
	e := newTableEnv(t, nil)
	now := e.clock.Now()
	good := saClaims(e.issA, now)
	rs := func(c map[string]any) string { return mint(t, hdr("RS256", "rsa"), c, "RS256", rsaA) }
	es := func(c map[string]any) string { return mint(t, hdr("ES256", "ec256"), c, "ES256", ec256) }
	valid := rs(good)
	parts := strings.Split(valid, ".")

	pubDER, err := x509.MarshalPKIXPublicKey(&rsaA.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	enc, err := jose.NewEncrypter(jose.A128GCM, jose.Recipient{Algorithm: jose.RSA_OAEP_256, Key: &rsaA.PublicKey}, (&jose.EncrypterOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(good)
	jwe, err := enc.Encrypt(payload)
	if err != nil {
		t.Fatal(err)
	}
	jweCompact, err := jwe.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	multi, err := jose.NewMultiSigner([]jose.SigningKey{{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: rsaA, KeyID: "rsa"}},
		{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: ec256, KeyID: "ec256"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	multiJWS, err := multi.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	single, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: rsaA, KeyID: "rsa"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	singleJWS, err := single.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}

	tamperedPayload := parts[0] + "." + b64json(t, with(good, "sub", "system:serviceaccount:kube-system:admin",
		"kubernetes.io", map[string]any{"namespace": "kube-system", "serviceaccount": map[string]any{"name": "admin"}})) + "." + parts[2]
	tamperedHeader := b64json(t, map[string]any{"alg": "RS256", "kid": "rsa", "typ": "at+jwt"}) + "." + parts[1] + "." + parts[2]
	sig := []byte(parts[2])
	if sig[5] == 'A' {
		sig[5] = 'B'
	} else {
		sig[5] = 'A'
	}
	tamperedSig := parts[0] + "." + parts[1] + "." + string(sig)

	notJSONInput := b64json(t, hdr("RS256", "rsa")) + "." + b64([]byte("not json"))
	notJSON := notJSONInput + "." + b64(sign(t, "RS256", rsaA, []byte(notJSONInput)))

	cases := []struct {
		name  string
		token string
		want  error
	}{
		{"empty", "", ErrMalformed},
		{"garbage", "hello world", ErrMalformed},
		{"oversized", rs(with(good, "pad", strings.Repeat("x", 17<<10))), ErrTooLarge},
		{"trailing newline", valid + "\n", ErrMalformed},
		{"Bearer prefix left on", "Bearer " + valid, ErrMalformed},
		{"four segments", valid + ".abc", ErrMalformed},
		{"one segment", parts[1], ErrMalformed},
		{"JWE instead of JWS", jweCompact, ErrMalformed},
		{"two signatures, JSON serialization", multiJWS.FullSerialize(), ErrMalformed},
		{"flattened JSON serialization", singleJWS.FullSerialize(), ErrMalformed},
		{"header not base64", "a." + parts[1] + "." + parts[2], ErrMalformed},
		{"header not JSON", b64([]byte("hello")) + "." + parts[1] + "." + parts[2], ErrMalformed},
		{"payload not JSON", notJSON, ErrMalformed},
		{"payload a JSON array", mint(t, hdr("RS256", "rsa"), []string{"a"}, "RS256", rsaA), ErrMalformed},
		{"exp a string", rs(with(good, "exp", "tomorrow")), ErrMalformed},
		{"alg none", mint(t, hdr("none", ""), good, "", nil), ErrAlgNotAllowed},
		{"alg NONE", mint(t, hdr("NONE", ""), good, "", nil), ErrAlgNotAllowed},
		{"alg none with a signature", mint(t, hdr("none", "rsa"), good, "RS256", rsaA), ErrAlgNotAllowed},
		{"HS256 with the RSA public key as secret", mint(t, hdr("HS256", "rsa"), good, "HS256", pubPEM), ErrAlgNotAllowed},
		{"HS256 with the DER public key as secret", mint(t, hdr("HS256", "rsa"), good, "HS256", pubDER), ErrAlgNotAllowed},
		{"HS512", mint(t, hdr("HS512", "rsa"), good, "HS512", pubPEM), ErrAlgNotAllowed},
		{"no alg", mint(t, map[string]any{"kid": "rsa"}, good, "RS256", rsaA), ErrAlgNotAllowed},
		{"JWE key alg as JWS alg", mint(t, hdr("RSA-OAEP", "rsa"), good, "RS256", rsaA), ErrAlgNotAllowed},
		{"wrong issuer", rs(with(good, "iss", "https://evil.example")), ErrUnknownIssuer},
		{"no issuer", rs(with(good, "iss", deleteClaim)), ErrUnknownIssuer},
		{"issuer with trailing slash", rs(with(good, "iss", e.issA+"/")), ErrUnknownIssuer},
		{"issuer differing in case", rs(with(good, "iss", strings.ToUpper(e.issA))), ErrUnknownIssuer},
		{"unknown kid", mint(t, hdr("RS256", "nope"), good, "RS256", rsaA), ErrUnknownKID},
		{"key of nobody, own kid", mint(t, hdr("RS256", "other"), good, "RS256", rsaOther), ErrUnknownKID},
		{"key of issuer B, B's kid, iss A", mint(t, hdr("RS256", "b1"), good, "RS256", rsaB), ErrUnknownKID},
		{"key of issuer A, iss B", mint(t, hdr("RS256", "rsa"), saClaims(issuerB, now), "RS256", rsaA), ErrUnknownKID},
		{"key of another issuer posing as A's kid", mint(t, hdr("RS256", "rsa"), good, "RS256", rsaB), ErrBadSignature},
		{"no kid, several keys", mint(t, hdr("ES256", ""), saClaims(issuerC, now), "ES256", ec256), ErrMissingKID},
		{"no kid, several keys at A", mint(t, hdr("RS256", ""), good, "RS256", rsaA), ErrMissingKID},
		{"tampered payload", tamperedPayload, ErrBadSignature},
		{"tampered header", tamperedHeader, ErrBadSignature},
		{"tampered signature", tamperedSig, ErrBadSignature},
		{"signature stripped", parts[0] + "." + parts[1] + ".", ErrBadSignature},
		{"ES256 signature labelled ES384", mint(t, hdr("ES384", "ec256"), good, "ES256", ec256), ErrBadSignature},
		{"RS256 header, kid of an EC key", mint(t, hdr("RS256", "ec256"), good, "RS256", rsaA), ErrBadSignature},
		{"PS256 with a key pinned to RS256", mint(t, hdr("PS256", "rsa-pinned"), good, "PS256", rsaA), ErrBadSignature},
		{"expired", es(with(good, "exp", now.Add(-2*time.Minute).Unix(), "iat", now.Add(-time.Hour).Unix(), "nbf", now.Add(-time.Hour).Unix())), ErrExpired},
		{"expired long ago", es(with(good, "exp", int64(1), "iat", int64(0), "nbf", int64(0))), ErrExpired},
		{"nbf in the future", es(with(good, "nbf", now.Add(5*time.Minute).Unix())), ErrNotYetValid},
		{"iat in the future", es(with(good, "iat", now.Add(5*time.Minute).Unix(), "nbf", deleteClaim)), ErrNotYetValid},
		{"no exp", es(with(good, "exp", deleteClaim)), ErrNoExpiry},
		{"wrong audience", es(with(good, "aud", []string{"kubernetes.default.svc"})), ErrBadAudience},
		{"no audience", es(with(good, "aud", deleteClaim)), ErrBadAudience},
		{"empty audience list", es(with(good, "aud", []string{})), ErrBadAudience},
		{"sub of another form", es(with(good, "sub", "vm-sa@vm-ns")), ErrBadSubject},
		{"sub of a user", es(with(good, "sub", "system:admin")), ErrBadSubject},
		{"sub without a name", es(with(good, "sub", "system:serviceaccount:vm-ns")), ErrBadSubject},
		{"sub with a slash", es(with(good, "sub", "system:serviceaccount:vm-ns:a/b",
			"kubernetes.io", map[string]any{"namespace": "vm-ns", "serviceaccount": map[string]any{"name": "a/b"}})), ErrBadSubject},
		{"sub and kubernetes.io namespace disagree", es(with(good,
			"kubernetes.io", map[string]any{"namespace": "other-ns", "serviceaccount": map[string]any{"name": "vm-sa"}})), ErrBadSubject},
		{"sub and kubernetes.io name disagree", es(with(good,
			"kubernetes.io", map[string]any{"namespace": "vm-ns", "serviceaccount": map[string]any{"name": "admin"}})), ErrBadSubject},
		{"no kubernetes.io claim", es(with(good, "kubernetes.io", deleteClaim)), ErrBadSubject},
		// RFC 7515 4.1.11 and RFC 7797: no Kubernetes issuer emits crit or b64, and what a
		// verifier does with them differs between libraries; refused with their own reason.
		{"crit naming an extension", mint(t, with(hdr("RS256", "rsa"), "crit", []string{"exp"}, "exp", now.Unix()), good, "RS256", rsaA), ErrUnsupportedHeader},
		{"b64 true without crit", mint(t, with(hdr("RS256", "rsa"), "b64", true), good, "RS256", rsaA), ErrUnsupportedHeader},
		{"b64 false in crit", mint(t, with(hdr("RS256", "rsa"), "b64", false, "crit", []string{"b64"}), good, "RS256", rsaA), ErrUnsupportedHeader},
		{"empty crit", mint(t, with(hdr("RS256", "rsa"), "crit", []string{}), good, "RS256", rsaA), ErrUnsupportedHeader},
	}
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := e.v.VerifyToken(context.Background(), tc.token)
			if err == nil {
				t.Fatalf("accepted: %+v", id)
			}
			if id != nil {
				t.Fatalf("identity returned with error %v", err)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v (reason %s), want %v", err, Reason(err), tc.want)
			}
			if Reason(err) != Reason(tc.want) {
				t.Fatalf("Reason = %s, want %s", Reason(err), Reason(tc.want))
			}
			// The refusal must not carry the credential.
			if len(tc.token) > 40 && strings.Contains(err.Error(), tc.token[len(tc.token)-40:]) {
				t.Fatalf("error message contains the token")
			}
		})
	}
	// Nothing logged carries a token, and refusals are counted.
	for _, entry := range e.logs.All() {
		line := entry.Message
		for _, f := range entry.Context {
			line += " " + f.String
		}
		for _, tc := range cases {
			if i := strings.LastIndex(tc.token, "."); i > 0 && len(tc.token)-i > 20 && strings.Contains(line, tc.token[i+1:]) {
				t.Fatalf("log line carries a token signature: %s", entry.Message)
			}
		}
	}
	if n := testutil.ToFloat64(e.v.m.results.WithLabelValues("none", "alg_not_allowed")); n != 8 {
		t.Fatalf(`results_total{issuer="none",result="alg_not_allowed"} = %v, want 6`, n)
	}
	if n := testutil.ToFloat64(e.v.m.results.WithLabelValues(e.issA, "bad_subject")); n != 7 {
		t.Fatalf(`results_total{result="bad_subject"} = %v, want 7`, n)
	}
}

// A refusal has one reason; an error not from this package is "error".
func TestReason(t *testing.T) {
	if Reason(nil) != "ok" || Reason(errors.New("x")) != "error" {
		t.Fatal("Reason of nil / foreign error")
	}
	seen := map[string]bool{}
	for _, r := range Reasons() {
		if seen[r] || r == "" || strings.ToLower(r) != r {
			t.Fatalf("reason %q duplicated or not lower-case", r)
		}
		seen[r] = true
	}
	wrapped := refuse(ErrExpired, "detail")
	if !errors.Is(wrapped, ErrExpired) || errors.Is(wrapped, ErrBadSignature) || Reason(wrapped) != "expired" {
		t.Fatalf("wrapped sentinel: %v", wrapped)
	}
	if !strings.HasPrefix(wrapped.Error(), "authn: ") {
		t.Fatalf("error %q lacks the package prefix", wrapped)
	}
}

// The HS256 case above must fail at the allow-list, not by luck: check a
// verifier would otherwise accept the HMAC (the key bytes really are the
// public key the attacker can see).
func TestHMACConfusionIsRealAttack(t *testing.T) {
	testKeys(t)
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaA.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	tok := mint(t, hdr("HS256", "rsa"), map[string]any{"iss": "x"}, "HS256", pubPEM)
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.HS256})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jws.Verify(pubPEM); err != nil {
		t.Fatalf("the forged HMAC does not verify with the public key bytes: %v", err)
	}
}
