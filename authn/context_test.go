package authn

import (
	"context"
	"testing"
)

func TestIdentityTravelsInTheContext(t *testing.T) {
	if id := FromContext(context.Background()); id != nil {
		t.Fatalf("FromContext of a bare context = %v, want nil", id)
	}
	id := &Identity{Cluster: "c1", Namespace: "vm", ServiceAccount: "web", SPIFFEID: "spiffe://cluster.local/ns/vm/sa/web"}
	ctx := NewContext(context.Background(), id)
	if got := FromContext(ctx); got != id {
		t.Fatalf("FromContext = %v, want the identity stored, %v", got, id)
	}
	// A value stored under another key of the same type is not an identity.
	type otherKey struct{}
	if got := FromContext(context.WithValue(context.Background(), otherKey{}, id)); got != nil {
		t.Fatalf("FromContext read an identity stored under another key: %v", got)
	}
}
