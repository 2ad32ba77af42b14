package vmcontrol_test

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ewgate/ewgate/gateway/vmcontrol"
)

// rawBytes is the test upstream's codec: it sees messages as bytes, like a server that does not
// care what the front forwards.
type rawBytes struct{}

type msg struct{ b []byte }

func (rawBytes) Name() string { return "proto" }
func (rawBytes) Marshal(v any) ([]byte, error) {
	return v.(*msg).b, nil
}
func (rawBytes) Unmarshal(b []byte, v any) error {
	v.(*msg).b = append([]byte(nil), b...)
	return nil
}

// call is what the upstream saw of one RPC.
type call struct {
	method string
	md     metadata.MD
	msgs   [][]byte
	err    error // the context error when the RPC ended by cancellation
}

// testUpstream is a gRPC server the test controls, standing in for a cluster's istiod.
type testUpstream struct {
	addr     string
	accepted atomic.Int64
	mu       sync.Mutex
	calls    []*call
	gs       *grpc.Server
	done     chan struct{}
	ended    chan *call
	flowSent atomic.Int64
	release  chan struct{} // closed to let a held ADS response go
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startUpstream serves TLS with a certificate for upstreamName from the pki's serving CA.
func startUpstream(t testing.TB, p *pki, addr string) *testUpstream {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for { // a restarted upstream takes back its port
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // pacing a bounded retry of a port in TIME_WAIT, not a wait for a condition
	}
	if err != nil {
		t.Fatal(err)
	}
	u := &testUpstream{addr: ln.Addr().String(), done: make(chan struct{}), ended: make(chan *call, 100), release: make(chan struct{})}
	cert := p.serving.Server(t, upstreamName).TLS()
	u.gs = grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)), grpc.ForceServerCodec(rawBytes{}), grpc.UnknownServiceHandler(u.handle),
		grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	go func() { defer close(u.done); u.gs.Serve(countingListener{ln, &u.accepted}) }()
	t.Cleanup(u.stop)
	return u
}

func (u *testUpstream) stop() {
	u.gs.Stop()
	<-u.done
}

func (u *testUpstream) seen() []*call {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*call(nil), u.calls...)
}

func (u *testUpstream) handle(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	md, _ := metadata.FromIncomingContext(ss.Context())
	c := &call{method: method, md: md}
	u.mu.Lock()
	u.calls = append(u.calls, c)
	u.mu.Unlock()
	defer func() {
		select {
		case u.ended <- c:
		default:
		}
	}()
	ctx := ss.Context()
	switch method {
	case "/test.Echo/Fail":
		ss.SetHeader(metadata.Pairs("x-up-header", "h"))
		ss.SetTrailer(metadata.Pairs("x-why", "because"))
		st, _ := status.New(codes.Aborted, "upstream says no").WithDetails(wrapperspb.String("detail"))
		return st.Err()
	case "/test.Echo/Wait":
		dl, _ := ctx.Deadline()
		ss.SendHeader(metadata.Pairs("x-deadline-ms", strconv.FormatInt(time.Until(dl).Milliseconds(), 10)))
		<-ctx.Done()
		c.err = ctx.Err()
		return status.FromContextError(ctx.Err()).Err()
	case "/test.Echo/Stall":
		select { // read nothing until released
		case <-u.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		for {
			m := &msg{}
			if err := ss.RecvMsg(m); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			u.mu.Lock()
			c.msgs = append(c.msgs, nil)
			u.mu.Unlock()
		}
	case "/test.Echo/Flood":
		m := &msg{}
		if err := ss.RecvMsg(m); err != nil {
			return err
		}
		n, _ := strconv.Atoi(string(wrapOf(m.b)))
		payload := wrapperspb.Bytes(make([]byte, 1<<20))
		b := mustMarshal(payload)
		for range n {
			if err := ss.SendMsg(&msg{b: b}); err != nil {
				return err
			}
			u.flowSent.Add(1)
		}
		return nil
	}
	// Echo, ADS and anything else: echo every message, with a header and a trailer.
	ss.SetTrailer(metadata.Pairs("x-up-trailer", "t"))
	first := true
	for {
		m := &msg{}
		err := ss.RecvMsg(m)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			c.err = ctx.Err()
			return err
		}
		u.mu.Lock()
		c.msgs = append(c.msgs, m.b)
		u.mu.Unlock()
		if first {
			ss.SendHeader(metadata.Pairs("x-up-header", "h"))
			first = false
		}
		if err := ss.SendMsg(m); err != nil {
			return err
		}
	}
}

func wrapOf(b []byte) []byte {
	s := &wrapperspb.StringValue{}
	if err := unmarshal(b, s); err != nil {
		return nil
	}
	return []byte(s.GetValue())
}

// waitCall waits until the upstream has seen an RPC of method end.
func (u *testUpstream) waitEnded(t testing.TB, method string) *call {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case c := <-u.ended:
			if c.method == method {
				return c
			}
		case <-deadline:
			t.Fatalf("upstream: no %s ended within 10s", method)
		}
	}
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func unmarshal(b []byte, m proto.Message) error { return proto.Unmarshal(b, m) }

const upstreamName = "istiod.upstream.test"

// upstreamConfig points the front at u for cluster c1.
func (p *pki) upstreamConfig(u *testUpstream, identity string) vmcontrol.UpstreamConfig {
	return vmcontrol.UpstreamConfig{Cluster: "c1", Address: u.addr, CAFile: p.servingFile, ServerName: upstreamName, Identity: identity}
}
