package meshca

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/ewgate/ewgate/authn"
	"github.com/ewgate/ewgate/gateway/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs the CA behind a real gRPC server on loopback whose interceptor plays the part of
// the authenticating front: a "who" header names the identity it verified.
func serve(t *testing.T, c *CA) securityv1alpha1.IstioCertificateServiceClient {
	t.Helper()
	auth := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if w := md.Get("who"); len(w) == 1 {
			ctx = authn.NewContext(ctx, &authn.Identity{Cluster: "c1", Namespace: "vm", ServiceAccount: w[0], SPIFFEID: "spiffe://cluster.local/ns/vm/sa/" + w[0]})
		}
		return h(ctx, req)
	}
	gs := grpc.NewServer(grpc.UnaryInterceptor(auth))
	securityv1alpha1.RegisterIstioCertificateServiceServer(gs, c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(); gs.Stop(); <-done })
	return securityv1alpha1.NewIstioCertificateServiceClient(cc)
}

func TestSignsForTheCallerOnly(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(Options{DataDir: dir, TTL: time.Hour, MaxTTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	client := serve(t, c)
	csr, key := testkit.CSR(t, "spiffe://cluster.local/ns/istio-system/sa/istiod")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err = client.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: csr})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no identity: %v; want Unauthenticated", err)
	}
	resp, err := client.CreateCertificate(metadata.AppendToOutgoingContext(ctx, "who", "web"),
		&securityv1alpha1.IstioCertificateRequest{Csr: csr, ValidityDuration: int64((100 * time.Hour).Seconds())})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.CertChain) != 2 || resp.CertChain[1] != c.RootPEM() {
		t.Fatalf("chain has %d entries; want leaf and root", len(resp.CertChain))
	}
	b, _ := pem.Decode([]byte(resp.CertChain[0]))
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/vm/sa/web" {
		t.Fatalf("leaf URIs = %v; want only the caller's SPIFFE ID", leaf.URIs)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatal("leaf is not for the CSR's key")
	}
	if d := leaf.NotAfter.Sub(time.Now()); d > 2*time.Hour+time.Minute || d < 2*time.Hour-time.Minute {
		t.Fatalf("validity %v; want the 2h maximum", d)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(c.RootPEM()))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf does not verify against the root: %v", err)
	}
	_, err = client.CreateCertificate(metadata.AppendToOutgoingContext(ctx, "who", "web"), &securityv1alpha1.IstioCertificateRequest{Csr: "junk"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad CSR: %v; want InvalidArgument", err)
	}
}

func TestKeyGeneratedOnceThenLoaded(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFileName))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v; want 0600", err, st.Mode())
	}
	b, err := Open(Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if a.RootPEM() != b.RootPEM() {
		t.Fatal("second start made a new root instead of loading the first")
	}
	// The same files given explicitly.
	c, err := Open(Options{CertFile: filepath.Join(dir, CertFileName), KeyFile: filepath.Join(dir, KeyFileName)})
	if err != nil || c.RootPEM() != a.RootPEM() {
		t.Fatalf("cert_file/key_file: %v", err)
	}
	other := t.TempDir()
	if _, err := Open(Options{DataDir: other}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{CertFile: filepath.Join(dir, CertFileName), KeyFile: filepath.Join(other, KeyFileName)}); err == nil {
		t.Fatal("a key that does not belong to the certificate was accepted")
	}
}
