package vmcontrol

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/ewgate/ewgate/authn"
)

// Flow-control windows of upstream connections. Static windows (no BDP growth) bound what one
// stream can have in flight: a VM that stops reading holds at most a stream window of its
// upstream's data in ewgate, plus one message.
const (
	upstreamStreamWindow = 1 << 20
	upstreamConnWindow   = 16 << 20
)

// upstream is one cluster's control plane: a few shared HTTP/2 connections.
type upstream struct {
	cfg   UpstreamConfig
	conns []*grpc.ClientConn
	next  atomic.Uint32
}

func (f *Front) newUpstream(u UpstreamConfig) (*upstream, error) {
	up := &upstream{cfg: u}
	var creds credentials.TransportCredentials
	target := u.Address
	var dial func(ctx context.Context, addr string) (net.Conn, error)
	switch {
	case u.Builtin:
		creds = insecure.NewCredentials() // an in-memory pipe inside this process
		target = "passthrough:///builtin"
		dial = f.builtin.dial
	case u.Plaintext:
		creds = insecure.NewCredentials()
	default:
		tc, err := upstreamTLS(u)
		if err != nil {
			return nil, err
		}
		creds = &countingCreds{TransportCredentials: credentials.NewTLS(tc), fail: f.dialFailed(u.Cluster)}
	}
	if dial == nil {
		d := &net.Dialer{Timeout: u.ConnectTimeout}
		fail := f.dialFailed(u.Cluster)
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				fail()
			}
			return c, err
		}
		target = "passthrough:///" + u.Address
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(dial),
		grpc.WithDisableRetry(), // no replay buffer: a failed stream ends, the VM reconnects
		grpc.WithStaticStreamWindowSize(upstreamStreamWindow),
		grpc.WithStaticConnWindowSize(upstreamConnWindow),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 10 * time.Second,
		}, MinConnectTimeout: u.ConnectTimeout}),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}),
			grpc.MaxCallRecvMsgSize(f.cfg.Limits.MaxUpstreamMsgSize),
			grpc.MaxCallSendMsgSize(f.cfg.Limits.MaxMessageBytes)),
		grpc.WithUserAgent("ewgate-control"),
	}
	for range u.Connections {
		cc, err := grpc.NewClient(target, opts...)
		if err != nil {
			up.close()
			return nil, fmt.Errorf("vmcontrol: upstream %s: %w", u.Cluster, err)
		}
		up.conns = append(up.conns, cc)
	}
	return up, nil
}

func (f *Front) dialFailed(cluster string) func() {
	c := f.m.dialFailures.WithLabelValues(cluster)
	return c.Inc
}

func upstreamTLS(u UpstreamConfig) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(u.Address)
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.ServerName}
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	if u.CAFile != "" {
		pem, err := os.ReadFile(u.CAFile)
		if err != nil {
			return nil, fmt.Errorf("vmcontrol: upstream %s: %w", u.Cluster, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("vmcontrol: upstream %s: %s holds no PEM certificate", u.Cluster, u.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// pick returns the next shared connection, round robin: streams spread over the connections
// and no VM gets a connection of its own.
func (up *upstream) pick() *grpc.ClientConn {
	return up.conns[int(up.next.Add(1))%len(up.conns)]
}

func (up *upstream) close() {
	for _, cc := range up.conns {
		cc.Close()
	}
}

// countingCreds counts failed TLS handshakes with the upstream as dial failures.
type countingCreds struct {
	credentials.TransportCredentials
	fail func()
}

func (c *countingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	nc, ai, err := c.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil {
		c.fail()
	}
	return nc, ai, err
}

func (c *countingCreds) Clone() credentials.TransportCredentials {
	return &countingCreds{TransportCredentials: c.TransportCredentials.Clone(), fail: c.fail}
}

// outgoing builds the upstream request metadata from the VM's: hop-by-hop and transport keys
// are dropped, and the identity is passed the upstream's way.
//
// With identity: forward, a call ewgate authenticated by the VM's token passes that token on;
// a call it authenticated by the VM's client certificate (no token, or one that expired)
// cannot be vouched for that way: ewgate presents no client certificate of its own, and istiod
// would refuse the expired token (and count an authentication failure). Such a call goes as in
// xfcc mode, without the VM's authorization header and with the verified SPIFFE ID in
// x-forwarded-client-cert, which istiod accepts from a TRUSTED_GATEWAY_CIDR address.
func outgoing(in metadata.MD, mode string, c *caller, builtinCall string) metadata.MD {
	xfcc := mode == IdentityXFCC || (mode == IdentityForward && c.id.Source == authn.SourceCert)
	out := metadata.MD{}
	for k, v := range in {
		switch {
		case strings.HasPrefix(k, ":"), strings.HasPrefix(k, "grpc-"),
			k == "content-type", k == "user-agent", k == "te", k == "connection",
			k == mdXFCC, k == mdBuiltinCall:
			continue // transport headers, or ones only ewgate may set
		case k == mdAuthorization && (mode != IdentityForward || xfcc):
			continue
		}
		out[k] = v
	}
	switch {
	case builtinCall != "":
		out.Set(mdBuiltinCall, builtinCall)
	case xfcc:
		// Istio's XFCC authenticator takes the URI elements as the caller's identities.
		out.Set(mdXFCC, "URI="+c.id.SPIFFEID)
	}
	return out
}

// filterHeader drops the keys the gRPC server sets itself from upstream response metadata.
func filterHeader(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, ":") || strings.HasPrefix(k, "grpc-") || k == "content-type" {
			continue
		}
		out[k] = v
	}
	return out
}
