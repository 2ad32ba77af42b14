package vmcontrol_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// TestCallsBeingAuthenticatedAreCappedPerSource: while the issuer's key set cannot be fetched
// (a JWKS server that does not answer yet), calls from one address wait in verification; past
// limits.max_authenticating_per_source more are refused at once, another address still gets
// its own, and all are served once the keys arrive.
func TestCallsBeingAuthenticatedAreCappedPerSource(t *testing.T) {
	const perSource = 4
	p := newPKI(t)
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	jwks := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, testkit.NewIssuer(t, issuer).JWKS(t))
	}))
	jwks.TLS = &tls.Config{Certificates: []tls.Certificate{p.serving.Server(t, "localhost", "127.0.0.1").TLS()}}
	jwks.StartTLS()
	t.Cleanup(jwks.Close)
	t.Cleanup(open) // registered after Close: runs first, so Close does not wait on the handler
	v, err := authn.New(context.Background(), authn.Config{VerifyTimeout: time.Minute,
		Issuers: []authn.IssuerConfig{{Issuer: issuer, Cluster: "c1", JWKSURL: jwks.URL, CAFile: p.servingFile}}}, authn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	p.verifier = v
	reg := prometheus.NewRegistry()
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		Limits: vmcontrol.LimitsConfig{MaxAuthenticatingPerSource: perSource}}, vmcontrol.Options{Registerer: reg})
	ctx := withToken(t.Context(), token(t, vmNS, vmSA))

	cc := g.dialFrom(t, p, "127.0.0.20")
	errs := make(chan error, perSource+1)
	var wg sync.WaitGroup
	start := func(cc *grpc.ClientConn) {
		wg.Go(func() {
			_, err := holdEcho(ctx, cc)
			errs <- err
		})
	}
	for range perSource {
		start(cc)
	}
	testkit.Eventually(t, "the calls wait in verification", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_authenticating", nil) == perSource
	})
	bounded, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := holdEcho(bounded, cc); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("call %d from one address while %d are verified: %v, want ResourceExhausted", perSource+1, perSource, err)
	}
	if v := testkit.Metric(t, reg, "ewgate_control_limits_total", map[string]string{"limit": "max_authenticating_per_source"}); v != 1 {
		t.Fatalf("max_authenticating_per_source hits = %v, want 1", v)
	}
	start(g.dialFrom(t, p, "127.0.0.21")) // another address is not held back by the first
	testkit.Eventually(t, "the other address's call is being verified", func() bool {
		return testkit.Metric(t, reg, "ewgate_control_authenticating", nil) == perSource+1
	})
	open() // the keys arrive
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a waiting call once the keys came: %v", err)
		}
	}
}
