package scenarios

import (
	"testing"
	"time"

	"github.com/ewgate/ewgate/e2e/harness"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var deleteNow = metav1.DeleteOptions{}

// The apiserver's TokenReview, as istiod uses it: a TokenRequest token for istio-ca is
// authenticated as its service account; the same token for another audience, a token signed by
// the harness with the apiserver's own key but expired, and a token of a deleted service account
// are not. A freshly signed, unexpired harness token is accepted, which shows SignToken makes
// tokens the apiserver cannot tell from its own.
func TestTokenReview(t *testing.T) {
	t.Parallel() // waits out a 10 s timer of a peer; independent of the other tests
	cluster.LogOnFailure(t)
	ctx := harness.Context(t, 60*time.Second)
	ns := cluster.Namespace(t, "review")
	sa, err := cluster.API.CreateServiceAccount(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cluster.API.IstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	wantUser := "system:serviceaccount:" + ns + ":vm"
	st, err := cluster.API.ReviewToken(ctx, tok, "istio-ca")
	if err != nil || !st.Authenticated || st.User.Username != wantUser {
		t.Fatalf("istio-ca token: authenticated %v user %q err %v (%s)", st.Authenticated, st.User.Username, err, st.Error)
	}
	if st, err := cluster.API.ReviewToken(ctx, tok, "other"); err != nil || st.Authenticated {
		t.Fatalf("istio-ca token reviewed for audience other: authenticated %v err %v", st.Authenticated, err)
	}

	now := time.Now()
	fresh, err := cluster.API.SignToken(cluster.API.ServiceAccountClaims(ns, "vm", string(sa.UID), now, now.Add(time.Hour), "istio-ca"))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := cluster.API.ReviewToken(ctx, fresh, "istio-ca"); err != nil || !st.Authenticated || st.User.Username != wantUser {
		t.Fatalf("harness-signed token: authenticated %v user %q err %v (%s)", st.Authenticated, st.User.Username, err, st.Error)
	}
	expired, err := cluster.API.ExpiredIstioToken(ctx, ns, "vm")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := cluster.API.ReviewToken(ctx, expired, "istio-ca"); err != nil || st.Authenticated {
		t.Fatalf("expired token: authenticated %v err %v", st.Authenticated, err)
	}

	if err := cluster.API.Kube.CoreV1().ServiceAccounts(ns).Delete(ctx, "vm", deleteNow); err != nil {
		t.Fatal(err)
	}
	// The apiserver caches successful token authentications for 10 s (TokenSuccessCacheTTL in
	// k8s.io/kubernetes/pkg/kubeapiserver/options): the token of a deleted service account keeps
	// passing TokenReview until that entry expires.
	deleted := time.Now()
	err = harness.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		st, err := cluster.API.ReviewToken(ctx, tok, "istio-ca")
		if err != nil {
			return false, err
		}
		return !st.Authenticated, nil
	})
	if err != nil {
		t.Fatalf("token of a deleted service account still authenticates: %v", err)
	}
	t.Logf("token of the deleted service account refused %s after the deletion", time.Since(deleted).Round(100*time.Millisecond))
}
