package vmcontrol_test

import (
	"crypto/tls"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

func benchSetup(b *testing.B) (*pki, *testUpstream, *gateway) {
	p := newPKI(b)
	u := startUpstream(b, p, "")
	g := startFront(b, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		Limits: vmcontrol.LimitsConfig{MaxStreamsPerVM: 100000, MaxStreams: 100000, MaxConnectionsPerSource: 10000}}, vmcontrol.Options{})
	return p, u, g
}

// BenchmarkAuthenticatedStreamSetup: a VM opens a stream (token verified, or found in the
// verified-token cache), gets one message through and closes it.
func BenchmarkAuthenticatedStreamSetup(b *testing.B) {
	p, _, g := benchSetup(b)
	cc := g.dial(b, p)
	ctx := withToken(b.Context(), token(b, vmNS, vmSA))
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		cs, err := cc.NewStream(ctx, bidi, "/test.Echo/Echo")
		if err != nil {
			b.Fatal(err)
		}
		cs.SendMsg(wrapperspb.String("x"))
		cs.CloseSend()
		if err := cs.RecvMsg(&wrapperspb.StringValue{}); err != nil {
			b.Fatal(err)
		}
		cs.RecvMsg(&wrapperspb.StringValue{})
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "streams/s")
}

// BenchmarkForwardPerMessage: ping-pong of a 1 KiB message on one open stream, through the
// front and directly to the upstream; the difference is the front's cost per round trip.
func BenchmarkForwardPerMessage(b *testing.B) {
	p, u, g := benchSetup(b)
	ctx := withToken(b.Context(), token(b, vmNS, vmSA))
	direct, err := grpc.NewClient(u.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: p.serving.Pool(), ServerName: upstreamName})))
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	for _, tc := range []struct {
		name string
		cc   *grpc.ClientConn
	}{{"direct", direct}, {"front", g.dial(b, p)}} {
		b.Run(tc.name, func(b *testing.B) {
			cs, err := tc.cc.NewStream(ctx, bidi, "/test.Echo/Echo")
			if err != nil {
				b.Fatal(err)
			}
			msg := wrapperspb.Bytes(make([]byte, 1024))
			b.SetBytes(2 * 1024)
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if err := cs.SendMsg(msg); err != nil {
					b.Fatal(err)
				}
				if err := cs.RecvMsg(&wrapperspb.BytesValue{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/roundtrip")
			cs.CloseSend()
		})
	}
}
