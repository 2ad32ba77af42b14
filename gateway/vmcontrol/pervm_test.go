package vmcontrol_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/vmcontrol"

	"github.com/ewgate/ewgate/gateway/testkit"
)

// dialFrom is a VM's grpc-go client whose connections come from the loopback address ip
// (127.0.0.0/8 is all local on Linux), so the front sees a VM of its own.
func (g *gateway) dialFrom(t testing.TB, p *pki, ip string) *grpc.ClientConn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tc := &tls.Config{RootCAs: p.serving.Pool(), ServerName: serverName}
	cc, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// holdEcho opens an echo stream and waits for its first echo; the stream stays open.
func holdEcho(ctx context.Context, cc *grpc.ClientConn) (grpc.ClientStream, error) {
	cs, err := cc.NewStream(ctx, bidi, "/test.Echo/Echo")
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(wrapperspb.String("hold")); err != nil && err != io.EOF {
		return nil, err
	}
	// io.EOF from SendMsg: the server already ended the stream (a refusal can come before the
	// first message is sent); its status is what RecvMsg returns.
	return cs, cs.RecvMsg(&wrapperspb.StringValue{})
}

// TestStreamLimitIsPerVM: 40 VMs of one WorkloadGroup share its service account and each gets
// its streams (a limit per identity refused all but the first max_streams_per_vm); a VM past its
// own limit is refused, and so is a second stream of one ADS node, while another node behind
// the same (NAT) address still gets its own.
func TestStreamLimitIsPerVM(t *testing.T) {
	const vms, perVM = 40, 3
	reg := prometheus.NewRegistry()
	p := newPKI(t)
	u := startUpstream(t, p, "")
	g := startFront(t, p, vmcontrol.Config{Upstreams: []vmcontrol.UpstreamConfig{p.upstreamConfig(u, vmcontrol.IdentityForward)},
		Limits: vmcontrol.LimitsConfig{MaxStreamsPerVM: perVM}}, vmcontrol.Options{Registerer: reg})
	ctx := withToken(t.Context(), token(t, vmNS, vmSA))
	conns := make([]*grpc.ClientConn, vms)
	for i := range vms {
		conns[i] = g.dialFrom(t, p, fmt.Sprintf("127.0.0.%d", 10+i))
		if _, err := holdEcho(ctx, conns[i]); err != nil {
			t.Fatalf("VM %d of %d of one service account: %v", i+1, vms, err)
		}
	}
	for i := 1; i < perVM; i++ {
		if _, err := holdEcho(ctx, conns[0]); err != nil {
			t.Fatalf("VM 1, stream %d of its %d: %v", i+1, perVM, err)
		}
	}
	if _, err := holdEcho(ctx, conns[0]); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("VM 1 past its own limit: %v, want ResourceExhausted", err)
	}
	if v := testkit.Metric(t, reg, "ewgate_control_limits_total", map[string]string{"limit": "max_streams_per_vm"}); v != 1 {
		t.Fatalf("max_streams_per_vm hits = %v, want 1", v)
	}

	// ADS: the node ID tells apart VMs behind one address.
	nat := g.dialFrom(t, p, "127.0.0.100")
	ads := func(node string) error {
		cs, err := nat.NewStream(ctx, bidi, vmcontrol.MethodADS)
		if err != nil {
			return err
		}
		n := vmNode("web", "10.0.0.5", "c1")
		n.Id = node
		delete(n.Metadata.Fields, "AUTO_REGISTER_GROUP") // no registrar in this test
		if err := cs.SendMsg(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.ClusterType}); err != nil && err != io.EOF {
			return err
		}
		return cs.RecvMsg(&discoveryv3.DiscoveryRequest{})
	}
	for i := range perVM {
		if err := ads("sidecar~10.0.0.5~a.vm-ns~vm-ns.svc.cluster.local"); err != nil {
			t.Fatalf("node a, ADS stream %d: %v", i+1, err)
		}
	}
	if err := ads("sidecar~10.0.0.5~a.vm-ns~vm-ns.svc.cluster.local"); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("node a past its limit: %v, want ResourceExhausted", err)
	}
	if err := ads("sidecar~10.0.0.6~b.vm-ns~vm-ns.svc.cluster.local"); err != nil {
		t.Fatalf("node b behind the same address: %v", err)
	}
}
