package vmcontrol_test

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/testkit"
	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

var bidi = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// setup is a front forwarding cluster c1 to a test upstream.
func setup(t *testing.T, identity string, mutate ...func(*vmcontrol.Config)) (*pki, *testUpstream, *gateway) {
	t.Helper()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	cfg := vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, identity)}}
	for _, m := range mutate {
		m(&cfg)
	}
	return p, u, startFront(t, p, cfg, vmcontrol.Options{})
}

func echo(t *testing.T, ctx context.Context, cc *grpc.ClientConn, words ...string) ([]string, metadata.MD, metadata.MD, error) {
	t.Helper()
	cs, err := cc.NewStream(ctx, bidi, "/test.Echo/Echo")
	if err != nil {
		return nil, nil, nil, err
	}
	for _, w := range words {
		if err := cs.SendMsg(wrapperspb.String(w)); err != nil {
			break
		}
	}
	cs.CloseSend()
	var got []string
	for {
		m := &wrapperspb.StringValue{}
		if err = cs.RecvMsg(m); err != nil {
			break
		}
		got = append(got, m.GetValue())
	}
	hdr, _ := cs.Header()
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return got, hdr, cs.Trailer(), err
}

func TestForwardsStreamsWithMetadataInForwardMode(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityForward)
	cc := g.dial(t, p)
	tok := token(t, vmNS, vmSA)
	ctx := withToken(t.Context(), tok, "clusterid", "c1", "x-custom", "kept", "x-forwarded-client-cert", "URI=spiffe://forged")
	got, hdr, trl, err := echo(t, ctx, cc, "a", "b", "c")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "a,b,c" {
		t.Fatalf("echo: %q", got)
	}
	if hdr.Get("x-up-header")[0] != "h" || trl.Get("x-up-trailer")[0] != "t" {
		t.Fatalf("header %v trailer %v not forwarded", hdr, trl)
	}
	c := u.seen()[0]
	if c.method != "/test.Echo/Echo" || c.md.Get("authorization")[0] != "Bearer "+tok || c.md.Get("clusterid")[0] != "c1" || c.md.Get("x-custom")[0] != "kept" {
		t.Fatalf("upstream saw %s %v", c.method, c.md)
	}
	if v := c.md.Get("x-forwarded-client-cert"); len(v) != 0 {
		t.Fatalf("a VM's own XFCC header reached the upstream: %v", v)
	}
}

func TestXFCCModePassesTheVerifiedIdentityNotTheToken(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityXFCC)
	cc := g.dial(t, p)
	ctx := withToken(t.Context(), token(t, vmNS, vmSA), "x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/istio-system/sa/istiod")
	if _, _, _, err := echo(t, ctx, cc, "a"); err != nil {
		t.Fatal(err)
	}
	md := u.seen()[0].md
	if len(md.Get("authorization")) != 0 {
		t.Fatalf("the VM token reached an xfcc upstream")
	}
	if x := md.Get("x-forwarded-client-cert"); len(x) != 1 || x[0] != "URI=spiffe://cluster.local/ns/vm-ns/sa/web" {
		t.Fatalf("xfcc = %v", x)
	}
}

func TestBadCredentialsNeverReachTheUpstream(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityForward, func(c *vmcontrol.Config) { c.AuthFailures.Rate = -1 })
	other := testkit.NewCA(t, "stranger")
	cases := []struct {
		name string
		ctx  func() context.Context
		cert bool
		code codes.Code
		msg  string
	}{
		{"no credential", func() context.Context { return t.Context() }, false, codes.Unauthenticated, "authentication required"},
		{"garbage token", func() context.Context { return withToken(t.Context(), "not.a.jwt") }, false, codes.Unauthenticated, "malformed"},
		{"not bearer", func() context.Context {
			return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Basic abc")
		}, false, codes.Unauthenticated, "Bearer"},
		{"expired", func() context.Context {
			return withToken(t.Context(), token(t, vmNS, vmSA,
				testkit.Claim("exp", time.Now().Add(-time.Hour).Unix()),
				testkit.Claim("iat", time.Now().Add(-2*time.Hour).Unix()),
				testkit.Claim("nbf", time.Now().Add(-2*time.Hour).Unix())))
		}, false, codes.Unauthenticated, "expired"},
		{"wrong audience", func() context.Context {
			return withToken(t.Context(), token(t, vmNS, vmSA, testkit.Claim("aud", []string{"api"})))
		}, false, codes.Unauthenticated, "bad_audience"},
		{"cluster mismatch", func() context.Context { return withToken(t.Context(), token(t, vmNS, vmSA), "clusterid", "c2") }, false, codes.PermissionDenied, "ClusterID"},
		{"certificate of another root", func() context.Context { return t.Context() }, true, codes.Unauthenticated, "untrusted_cert"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cc := g.dial(t, p)
			if tc.cert {
				cc = g.dial(t, p, other.Client(t, []string{"spiffe://cluster.local/ns/vm-ns/sa/web"}).TLS())
			}
			_, _, _, err := echo(t, tc.ctx(), cc, "secret")
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.code, tc.msg)
			}
		})
	}
	if n := u.accepted.Load(); n != 0 || len(u.seen()) != 0 {
		t.Fatalf("the upstream got %d connections and %d calls from refused VMs", n, len(u.seen()))
	}
}

func TestClientCertificateAuthenticates(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityXFCC)
	cc := g.dial(t, p, p.mesh.Client(t, []string{"spiffe://cluster.local/ns/vm-ns/sa/cert-sa"}).TLS())
	if _, _, _, err := echo(t, t.Context(), cc, "a"); err != nil {
		t.Fatal(err)
	}
	if x := u.seen()[0].md.Get("x-forwarded-client-cert"); x[0] != "URI=spiffe://cluster.local/ns/vm-ns/sa/cert-sa" {
		t.Fatalf("xfcc %v", x)
	}
	// A token and a certificate of different service accounts: refused.
	_, _, _, err := echo(t, withToken(t.Context(), token(t, vmNS, vmSA)), cc, "a")
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("token/cert mismatch: %v", err)
	}
}

func TestStatusTrailersAndDetailsUnchanged(t *testing.T) {
	p, _, g := setup(t, vmcontrol.IdentityForward)
	cc := g.dial(t, p)
	var hdr, trl metadata.MD
	err := cc.Invoke(withToken(t.Context(), token(t, vmNS, vmSA)), "/test.Echo/Fail", wrapperspb.String("x"), &wrapperspb.StringValue{},
		grpc.Header(&hdr), grpc.Trailer(&trl))
	st := status.Convert(err)
	if st.Code() != codes.Aborted || st.Message() != "upstream says no" {
		t.Fatalf("status %v", st)
	}
	if d := st.Details(); len(d) != 1 || d[0].(*wrapperspb.StringValue).GetValue() != "detail" {
		t.Fatalf("details %v", d)
	}
	if trl.Get("x-why")[0] != "because" || hdr.Get("x-up-header")[0] != "h" {
		t.Fatalf("header %v trailer %v", hdr, trl)
	}
}

func TestDeadlineAndCancellationReachTheUpstream(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityForward)
	cc := g.dial(t, p)
	ctx, cancel := context.WithTimeout(withToken(t.Context(), token(t, vmNS, vmSA)), 3*time.Second)
	defer cancel()
	cs, err := cc.NewStream(ctx, bidi, "/test.Echo/Wait")
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := cs.Header()
	if err != nil {
		t.Fatal(err)
	}
	ms, _ := strconv.Atoi(hdr.Get("x-deadline-ms")[0])
	if ms <= 0 || ms > 3000 {
		t.Fatalf("upstream deadline %dms, want within the VM's 3s", ms)
	}
	cancel() // the VM gives up: the upstream's call must end too
	if err := cs.RecvMsg(&wrapperspb.StringValue{}); status.Code(err) != codes.Canceled {
		t.Fatalf("VM side: %v", err)
	}
	if c := u.waitEnded(t, "/test.Echo/Wait"); c.err == nil {
		t.Fatal("upstream call not cancelled")
	}

	// A deadline that expires: DeadlineExceeded at the VM, the upstream call ended.
	ctx2, cancel2 := context.WithTimeout(withToken(t.Context(), token(t, vmNS, vmSA)), 200*time.Millisecond)
	defer cancel2()
	err = cc.Invoke(ctx2, "/test.Echo/Wait", wrapperspb.String("x"), &wrapperspb.StringValue{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("expired deadline: %v", err)
	}
	if c := u.waitEnded(t, "/test.Echo/Wait"); c.err == nil {
		t.Fatal("upstream call outlived the VM's deadline")
	}
}

func TestAuthFailuresAreRateLimitedPerSource(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, "")},
		AuthFailures: vmcontrol.AuthFailureConfig{Rate: 1, Burst: 3}}, vmcontrol.Options{Now: clock})
	cc := g.dial(t, p)
	bad := withToken(t.Context(), "bad.token.here")
	for i := range 3 {
		if _, _, _, err := echo(t, bad, cc, "x"); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("failure %d: %v", i, err)
		}
	}
	good := withToken(t.Context(), token(t, vmNS, vmSA))
	if _, _, _, err := echo(t, good, cc, "x"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("after the burst even a good token waits: %v", err)
	}
	now = now.Add(2 * time.Second) // two tokens back
	if _, _, _, err := echo(t, good, cc, "x"); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

func TestStreamLimitsPerIdentity(t *testing.T) {
	p, _, g := setup(t, vmcontrol.IdentityForward, func(c *vmcontrol.Config) { c.Limits.MaxStreamsPerVM = 2 })
	cc := g.dial(t, p)
	ctx := withToken(t.Context(), token(t, vmNS, vmSA))
	var open []grpc.ClientStream
	for range 2 {
		cs, err := cc.NewStream(ctx, bidi, "/test.Echo/Echo")
		if err != nil {
			t.Fatal(err)
		}
		cs.SendMsg(wrapperspb.String("hold"))
		if err := cs.RecvMsg(&wrapperspb.StringValue{}); err != nil {
			t.Fatal(err)
		}
		open = append(open, cs)
	}
	if _, _, _, err := echo(t, ctx, cc, "x"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream: %v", err)
	}
	if _, _, _, err := echo(t, withToken(t.Context(), token(t, vmNS, "other")), cc, "x"); err != nil {
		t.Fatalf("another identity: %v", err)
	}
	open[0].CloseSend()
	if err := open[0].RecvMsg(&wrapperspb.StringValue{}); !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	testkit.Eventually(t, "a slot frees when a stream ends", func() bool {
		_, _, _, err := echo(t, ctx, cc, "x")
		return err == nil
	})
}

func TestMessageSizeLimit(t *testing.T) {
	p, u, g := setup(t, vmcontrol.IdentityForward, func(c *vmcontrol.Config) { c.Limits.MaxMessageBytes = 4096 })
	cc := g.dial(t, p)
	_, _, _, err := echo(t, withToken(t.Context(), token(t, vmNS, vmSA)), cc, strings.Repeat("x", 8192))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized message: %v", err)
	}
	for _, c := range u.seen() {
		if len(c.msgs) > 0 {
			t.Fatal("an oversized message reached the upstream")
		}
	}
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	p, _, g := setup(t, vmcontrol.IdentityForward, func(c *vmcontrol.Config) { c.Limits.IdleTimeout = 100 * time.Millisecond })
	cc := g.dial(t, p)
	if _, _, _, err := echo(t, withToken(t.Context(), token(t, vmNS, vmSA)), cc, "x"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "the idle connection is closed", func() bool {
		s := cc.GetState().String()
		return s == "IDLE" || s == "TRANSIENT_FAILURE" || s == "CONNECTING"
	})
}
