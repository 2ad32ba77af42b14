package vmcontrol

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/ewgate/ewgate/authn"
)

// builtin is the way to ewgate's own control plane: an in-memory listener (no socket, so
// nothing outside this process can connect to it) and a table of the calls in flight, keyed by
// a random handle the front sends with each call. The built-in server's interceptors
// (BuiltinServerOptions) turn the handle back into the verified identity and put it in the
// call's context with authn.NewContext: the identity never crosses a wire, and a header alone
// proves nothing.
type builtin struct {
	mu    sync.Mutex
	ln    *memListener // the current one; replaced by each BuiltinListener call
	calls map[string]*authn.Identity
}

func newBuiltin() *builtin {
	return &builtin{ln: newMemListener(), calls: map[string]*authn.Identity{}}
}

func (b *builtin) dial(ctx context.Context, _ string) (net.Conn, error) {
	b.mu.Lock()
	ln := b.ln
	b.mu.Unlock()
	return ln.dial(ctx)
}

// listener returns a fresh listener and makes it the one dialled.
func (b *builtin) listener() *memListener {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.ln = newMemListener()
	return b.ln
}

// register records a call's identity and returns its handle and the function that forgets it.
func (b *builtin) register(id *authn.Identity) (string, func()) {
	var r [16]byte
	rand.Read(r[:])
	h := hex.EncodeToString(r[:])
	b.mu.Lock()
	b.calls[h] = id
	b.mu.Unlock()
	return h, func() {
		b.mu.Lock()
		delete(b.calls, h)
		b.mu.Unlock()
	}
}

// identity returns the identity of the call of ctx, if it came through the in-memory listener
// with a live handle.
func (b *builtin) identity(ctx context.Context) *authn.Identity {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	if _, ok := p.Addr.(memAddr); !ok {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	h := md.Get(mdBuiltinCall)
	if len(h) != 1 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[h[0]]
}

// BuiltinListener returns the listener the built-in control plane must serve on (its Run), with
// BuiltinServerOptions among its server options. Only this front can connect to it. Each call
// returns a new listener that replaces the previous one, so a restarted control plane gets a
// fresh one (its Stop closes the old).
func (f *Front) BuiltinListener() net.Listener { return f.builtin.listener() }

// BuiltinServerOptions are the interceptors the built-in control plane's gRPC server needs:
// they put the identity the front verified into each call's context (authn.NewContext), where
// the CA finds it. Calls that did not come through the front get no identity.
func (f *Front) BuiltinServerOptions() []grpc.ServerOption {
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if id := f.builtin.identity(ctx); id != nil {
			ctx = authn.NewContext(ctx, id)
		}
		return h(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if id := f.builtin.identity(ss.Context()); id != nil {
			ss = &ctxStream{ServerStream: ss, ctx: authn.NewContext(ss.Context(), id)}
		}
		return h(srv, ss)
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary), grpc.ChainStreamInterceptor(stream)}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// memListener is a net.Listener of in-process pipes.
type memListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

type memAddr struct{}

func (memAddr) Network() string { return "ewgate-builtin" }
func (memAddr) String() string  { return "builtin" }

var errMemClosed = errors.New("vmcontrol: builtin listener closed")

func newMemListener() *memListener {
	return &memListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *memListener) Addr() net.Addr { return memAddr{} }

func (l *memListener) dial(ctx context.Context) (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case l.conns <- &memConn{Conn: b}:
		return &memConn{Conn: a}, nil
	case <-l.done:
		a.Close()
		b.Close()
		return nil, errMemClosed
	case <-ctx.Done():
		a.Close()
		b.Close()
		return nil, ctx.Err()
	}
}

// memConn reports memAddr at both ends, which BuiltinServerOptions checks.
type memConn struct{ net.Conn }

func (memConn) LocalAddr() net.Addr  { return memAddr{} }
func (memConn) RemoteAddr() net.Addr { return memAddr{} }
