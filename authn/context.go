package authn

import "context"

// The verified identity travels in a context the way grpc's peer does (peer.NewContext next to
// the Peer type): the code that authenticated the caller stores it, the code that acts for the
// caller (the CA signing for it) reads it back. A header alone never gets an identity into a
// context: only a value this package's key was set with counts.

type ctxKey struct{}

// NewContext returns a copy of ctx carrying id, the verified identity of the caller. Only the
// code that verified the caller may call it.
func NewContext(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the verified identity NewContext stored in ctx, or nil when there is none.
func FromContext(ctx context.Context) *Identity {
	id, _ := ctx.Value(ctxKey{}).(*Identity)
	return id
}
